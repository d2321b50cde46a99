"""Metrics on numpy arrays (checked against hand-computed values in tests/training/test_eval_metrics.py)."""

from __future__ import annotations

import numpy as np


def top1_accuracy(pred: np.ndarray, target: np.ndarray) -> float:
    """pred, target (N,) int -> fraction equal."""
    pred, target = np.asarray(pred), np.asarray(target)
    return float((pred == target).mean()) if target.size else 0.0


def confusion(pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore: int = 255) -> np.ndarray:
    """(H, W) int label maps -> (num_classes, num_classes) int64 confusion (rows gt, cols pred)."""
    keep = gt != ignore
    idx = gt[keep].astype(np.int64) * num_classes + pred[keep].astype(np.int64)
    return np.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes)


def miou_from_confusion(conf: np.ndarray) -> tuple[float, np.ndarray]:
    """mIoU over classes that occur (in gt or prediction) and per-class IoU (NaN where absent)."""
    inter = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - np.diag(conf)
    iou = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else 0.0, iou


def binary_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two (H, W) bool masks; 1.0 when both are empty."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0
