"""Datasets for SAM-CLIP distillation.

- :class:`ImageFolderImages`: every image under a folder (recursively), unlabeled, for CLIP distillation.
  Items are addressed as ``(index, resolution)`` (see :mod:`training.data.sampler`) and come back as
  ``(3, r, r) uint8`` RGB tensors after a random resized crop and flip.
- :class:`SA1BDataset`: SA-1B-style ``<id>.json`` + image records. Items are
  ``{"image": (3, S, S) uint8, "masks": (M, S, S) bool, "valid": (M,) bool}``: the image resized so its
  longest side is S and zero-padded bottom/right (SAM preprocessing), up to M randomly chosen instance masks
  transformed the same way (nearest), padded with empty masks marked invalid; ``"ann_index": (M,) int64``
  gives each mask's position in the record's annotation list (-1 for padding), ``"index": () int64`` the
  record's index (items of one record and mask set are identical: no augmentation, so features may be
  cached). With ``backgrounds=True`` items also carry ``"background": (3, S, S) uint8``, the resized image
  with ALL its annotated objects inpainted away (:func:`training.crops.remove_objects`), computed once per
  record and kept in memory.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from training.crops import remove_objects
from training.data.shapes import read_sa1b_record

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def list_images(root: str | Path) -> list[Path]:
    """Sorted image files under `root` (recursive)."""
    return sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in IMAGE_EXTS)


def to_chw_uint8(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) uint8 tensor."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous()


def resize_longest_pad(x: torch.Tensor, size: int, mode: str = "bilinear") -> torch.Tensor:
    """(C, H, W) tensor -> (C, size, size): longest side resized to `size`, zero pad bottom/right."""
    c, h, w = x.shape
    scale = size / max(h, w)
    nh, nw = int(h * scale + 0.5), int(w * scale + 0.5)
    kw = {"align_corners": False} if mode == "bilinear" else {}
    y = F.interpolate(x[None].float(), size=(nh, nw), mode=mode, **kw)[0]
    return F.pad(y, (0, size - nw, 0, size - nh))


class ImageFolderImages(Dataset):
    """Unlabeled images for CLIP distillation; ``ds[(i, r)]`` -> (3, r, r) uint8."""

    def __init__(self, root: str | Path, min_scale: float = 0.6, seed: int = 0) -> None:
        self.files = list_images(root)
        if not self.files:
            raise FileNotFoundError(f"no images under {root}")
        self.min_scale, self.seed = min_scale, seed
        self._epoch = 0

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: tuple[int, int]) -> torch.Tensor:
        idx, res = key
        rng = np.random.default_rng([self.seed, idx, self._epoch])
        self._epoch += 1
        img = to_chw_uint8(np.asarray(Image.open(self.files[idx]).convert("RGB")))
        _, h, w = img.shape
        s = rng.uniform(self.min_scale, 1.0)
        ch, cw = max(1, int(h * s)), max(1, int(w * s))
        y0, x0 = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = img[:, y0 : y0 + ch, x0 : x0 + cw]
        if rng.random() < 0.5:
            crop = crop.flip(-1)
        out = F.interpolate(crop[None].float(), size=(res, res), mode="bilinear", align_corners=False)[0]
        return out.round().clamp(0, 255).to(torch.uint8)


class SA1BDataset(Dataset):
    """SA-1B-style records for SAM distillation (see module docstring for the item layout)."""

    def __init__(
        self, root: str | Path, size: int, masks_per_image: int, seed: int = 0, backgrounds: bool = False
    ) -> None:
        self.records = sorted(p for p in Path(root).glob("*.json") if not p.name.startswith(("coco", "capt")))
        if not self.records:
            raise FileNotFoundError(f"no SA-1B-style records under {root}")
        self.size, self.m, self.seed = size, masks_per_image, seed
        self._epoch = 0
        self._backgrounds: dict[int, torch.Tensor] | None = {} if backgrounds else None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        idx = key[0] if isinstance(key, tuple) else key
        rng = np.random.default_rng([self.seed, idx, self._epoch])
        self._epoch += 1
        image, anns = read_sa1b_record(self.records[idx])
        img = resize_longest_pad(to_chw_uint8(image), self.size).round().to(torch.uint8)
        chosen = rng.permutation(len(anns))[: self.m]
        masks = torch.zeros(self.m, self.size, self.size, dtype=torch.bool)
        valid = torch.zeros(self.m, dtype=torch.bool)
        ann_index = torch.full((self.m,), -1, dtype=torch.long)
        for j, a in enumerate(chosen):
            ann_index[j] = int(a)
            masks[j] = self._mask(anns[a])
            valid[j] = bool(masks[j].any())
        item = {
            "image": img,
            "masks": masks,
            "valid": valid,
            "ann_index": ann_index,
            "index": torch.tensor(idx),
        }
        if self._backgrounds is not None:
            if idx not in self._backgrounds:
                every = torch.stack([self._mask(a) for a in anns]) if anns else masks[:0]
                self._backgrounds[idx] = remove_objects(img, every)
            item["background"] = self._backgrounds[idx]
        return item

    def _mask(self, ann: dict) -> torch.Tensor:
        """An annotation's mask in the model frame: (S, S) bool (resized longest side, padded, nearest)."""
        mask = torch.from_numpy(ann["mask"])[None].float()
        return resize_longest_pad(mask, self.size, mode="nearest")[0] > 0.5

    def annotations(self, idx: int) -> list[dict]:
        """Record `idx`'s annotation dicts (RLE, bbox, and any extra fields such as "shape"/"color")."""
        return json.loads(self.records[idx].read_text())["annotations"]
