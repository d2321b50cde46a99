"""Parity of a fast inference path against the plain fp32 one: the accuracy gates (numpy only).

Used by `python -m model_export optimize` (figures recorded in manifest.variants[...].parity), by
`python -m service.verify` (GPU backends), the fast-backend tests and the benchmarks. Both sides are
"backend-shaped" objects with the four methods of service.runtime.base.Backend (encode / clip_head /
encode_text / decode) returning objects with the same attribute names.

Gates (CPU fast paths, GATES), all fast vs fp32 on the same inputs:
- decoder_mask_iou  >= 0.97  mean IoU of SAM masks (all 4 outputs, low-res logits > 0) on random prompts
                             (points, boxes, and mask prompts), each side decoding its OWN image embedding;
- clip_image_cosine >= 0.99  min cosine of CLIP image embeddings; clip_text_cosine >= 0.99 of text embeddings;
- text_segment_iou  >= 0.95  mean IoU of text-segment masks on the patch grid, one single-text request per
                             text: patch in mask when the text beats every background prompt (the service's
                             argmax rule over [text, background...]), each side with its own embeddings.
GPU_GATES (16-bit GPU backends) drop text_segment_iou: with random weights the text similarities are near-ties,
so 16-bit noise flips patches run to run, which says nothing about the backend (it is still reported).
encoder_embedding_cosine / patch_tokens_cosine are reported too (min over images).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

GATES = {
    "decoder_mask_iou": 0.97,
    "clip_image_cosine": 0.99,
    "clip_text_cosine": 0.99,
    "text_segment_iou": 0.95,
}
GPU_GATES = {k: v for k, v in GATES.items() if k != "text_segment_iou"}
SOT, EOT = 49406, 49407


def generated_images(
    n: int, image_size: int, mean: list[float], std: list[float], seed: int = 0
) -> np.ndarray:
    """n synthetic photos-like images -> (n, 3, S, S) float32, normalised with mean/std (0..255 units).

    Smooth colour fields (a coarse random grid upsampled) plus a few flat rectangles and noise, so activations
    look like natural images' rather than white noise.
    """
    rng = np.random.default_rng(seed)
    s = image_size
    out = np.empty((n, 3, s, s), np.float32)
    for i in range(n):
        coarse = rng.uniform(0, 255, (3, 8, 8))
        idx = np.arange(s) * 8 // s
        img = coarse[:, idx][:, :, idx]
        for _ in range(4):
            x0, y0 = rng.integers(0, s - 2, 2)
            x1, y1 = x0 + rng.integers(2, s // 2), y0 + rng.integers(2, s // 2)
            img[:, y0:y1, x0:x1] = rng.uniform(0, 255, (3, 1, 1))
        img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255)
        out[i] = (img - np.asarray(mean)[:, None, None]) / np.asarray(std)[:, None, None]
    return out


def random_prompts(k: int, image_size: int, grid: int, seed: int = 0) -> dict[str, np.ndarray]:
    """k SAM decoder prompts in one batch (BUNDLE.md layout), points padded to a common N with label -1.

    Mix: 1-3 points + SAM's padding point; a box (labels 2, 3); a point plus a box; every third prompt also
    carries a smooth random mask prompt (has_mask_input = 1). Returns point_coords (k, N, 2) [x, y] in the
    input frame, point_labels (k, N), mask_input (k, 1, 4*grid, 4*grid), has_mask_input (k,), all float32.
    """
    rng = np.random.default_rng(seed)
    prompts: list[tuple[list[list[float]], list[float]]] = []
    for i in range(k):
        pts = rng.uniform(0, image_size, (3, 2))
        box = np.sort(rng.uniform(0, image_size, (2, 2)), axis=0)
        kind = i % 3
        if kind == 0:
            n = int(rng.integers(1, 4))
            coords, labels = (
                pts[:n].tolist() + [[0.0, 0.0]],
                [1.0] + [float(rng.integers(0, 2))] * (n - 1) + [-1.0],
            )
        elif kind == 1:
            coords, labels = box.tolist(), [2.0, 3.0]
        else:
            coords, labels = pts[:1].tolist() + box.tolist(), [1.0, 2.0, 3.0]
        prompts.append((coords, labels))
    n_max = max(len(c) for c, _ in prompts)
    coords = np.zeros((k, n_max, 2), np.float32)
    labels = np.full((k, n_max), -1.0, np.float32)
    for i, (c, lab) in enumerate(prompts):
        coords[i, : len(c)] = c
        labels[i, : len(lab)] = lab
    low = 4 * grid
    coarse = rng.normal(0, 10, (k, 1, 4, 4)).astype(np.float32)
    idx = np.arange(low) * 4 // low
    mask_input = np.ascontiguousarray(coarse[:, :, idx][:, :, :, idx])
    has_mask = np.array([1.0 if i % 3 == 2 else 0.0 for i in range(k)], np.float32)
    return {
        "point_coords": coords,
        "point_labels": labels,
        "mask_input": mask_input,
        "has_mask_input": has_mask,
    }


def random_text_ids(n: int, context_length: int = 77, seed: int = 0) -> np.ndarray:
    """(n, context_length) int64 CLIP-like ids: SOT, 3-12 random BPE ids, EOT (the largest id), zero padding."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((n, context_length), np.int64)
    for i in range(n):
        length = int(rng.integers(3, 13))
        ids[i, 0], ids[i, length + 1] = SOT, EOT
        ids[i, 1 : length + 1] = rng.integers(1, 49000, length)
    return ids


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching rows after flattening all but the first axis -> (rows,) float64."""
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.sum(a * b, axis=1) / np.maximum(den, 1e-30)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks of one shape; 1.0 when both are empty."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def text_segment_masks(patch_emb: np.ndarray, text_emb: np.ndarray, n_background: int) -> np.ndarray:
    """patch_emb (h, w, D), text_emb (T, D) with the last n_background rows = background prompts
    -> (T - n_background, h, w) bool. Mask t is the single-text request `/segment?text=t`: patch belongs to t
    when t scores higher than every background prompt (the service's argmax rule over [t, background...])."""
    sims = np.einsum("hwd,td->thw", patch_emb, text_emb)
    background = sims[len(text_emb) - n_background :].max(axis=0)
    return sims[: len(text_emb) - n_background] > background[None]


def parity_report(
    ref: Any,
    fast: Any,
    images: np.ndarray,
    prompts: dict[str, np.ndarray],
    text_ids: np.ndarray,
    n_background: int = 1,
) -> dict[str, Any]:
    """Run both paths on the same inputs and return every figure above plus "passed" (all gates held).

    images (B, 3, S, S) f32 normalised; prompts from `random_prompts`; text_ids (T, 77) int64, whose last
    n_background rows act as background prompts for text-segment.
    """
    figs: dict[str, list[float]] = {k: [] for k in ("enc", "tok", "iou", "img", "seg")}
    txt_r, txt_f = ref.encode_text(text_ids), fast.encode_text(text_ids)
    for i in range(len(images)):
        x = images[i : i + 1]
        er, ef = ref.encode(x), fast.encode(x)
        figs["enc"].append(float(cosine_rows(er.image_embeddings, ef.image_embeddings)[0]))
        figs["tok"].append(float(cosine_rows(er.patch_tokens, ef.patch_tokens)[0]))
        cr, cf = ref.clip_head(er.patch_tokens), fast.clip_head(ef.patch_tokens)
        figs["img"].append(float(cosine_rows(cr.image_embedding, cf.image_embedding)[0]))
        seg_r = text_segment_masks(cr.patch_embeddings[0], txt_r, n_background)
        seg_f = text_segment_masks(cf.patch_embeddings[0], txt_f, n_background)
        figs["seg"] += [mask_iou(a, b) for a, b in zip(seg_r, seg_f, strict=False)]
        dr = ref.decode(er.image_embeddings, **prompts).low_res_masks > 0
        df = fast.decode(ef.image_embeddings, **prompts).low_res_masks > 0
        figs["iou"] += [
            mask_iou(a, b)
            for a, b in zip(dr.reshape(-1, *dr.shape[2:]), df.reshape(-1, *df.shape[2:]), strict=False)
        ]
    report: dict[str, Any] = {
        "encoder_embedding_cosine": min(figs["enc"]),
        "patch_tokens_cosine": min(figs["tok"]),
        "decoder_mask_iou": float(np.mean(figs["iou"])),
        "clip_image_cosine": min(figs["img"]),
        "clip_text_cosine": float(cosine_rows(txt_r, txt_f).min()),
        "text_segment_iou": float(np.mean(figs["seg"])),
        "samples": {
            "images": int(len(images)),
            "prompts": int(len(prompts["point_labels"])),
            "texts": int(len(text_ids)),
        },
    }
    report["passed"] = all(report[k] >= v for k, v in GATES.items())
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in report.items()}


class CachedRunner:
    """Wraps a backend-shaped object and memoises its results by input bytes, so one fp32 reference run
    serves several parity reports (e.g. per-graph variant selection)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._memo: dict[tuple, Any] = {}

    def _call(self, method: str, *arrays: np.ndarray, **named: np.ndarray) -> Any:
        digest = hashlib.sha1()
        for arr in (*arrays, *(named[k] for k in sorted(named))):
            digest.update(str(arr.shape).encode() + np.ascontiguousarray(arr).tobytes())
        key = (method, digest.hexdigest())
        if key not in self._memo:
            self._memo[key] = getattr(self._inner, method)(*arrays, **named)
        return self._memo[key]

    def encode(self, images: np.ndarray) -> Any:
        return self._call("encode", images)

    def clip_head(self, patch_tokens: np.ndarray) -> Any:
        return self._call("clip_head", patch_tokens)

    def encode_text(self, input_ids: np.ndarray) -> np.ndarray:
        return self._call("encode_text", input_ids)

    def decode(self, image_embeddings: np.ndarray, **prompts: np.ndarray) -> Any:
        return self._call("decode", image_embeddings, **prompts)
