"""A cached image: the one encoder pass's outputs plus what the tasks derive from them.

`ImageEntry` fields (S = model input size, h = w = S / patch, C = SAM channels, W = encoder width, D = CLIP dim):
- image_id: sha256 hex of the uploaded bytes; width, height: ORIGINAL size after EXIF orientation;
- input_size: (new_h, new_w) after resize-longest-side to S (the rest of the S x S input is padding);
- image_embeddings: (1, C, h, w) in the cache dtype, SAM decoder input, always kept; held channels-last in memory
  (`channels_last`: a (1, h, w, C) C-contiguous array viewed as (1, C, h, w)), the layout OpenVINO's decoders
  take (service/runtime/openvino_decoder.py; at a port of the cache dtype), the fused one without any transpose;
  other runtimes copy it to channels-first in their dtype per call (GraphBackend.feed, runtime/layout.py);
- memo (shared by every copy of the entry): patch_tokens (1, h, w, W) in the cache dtype until the CLIP head has
  run, then the CLIP outputs (image_embedding (1, D) float32, patch_embeddings (1, h, w, D) in the cache
  dtype), and the patch tokens are dropped;
- cached: this request found the entry in a cache tier (per request: copies are made with `for_request`).

Cache dtype (setting `cache_dtype`, `new_entry`): "float16" stores the SAM embedding and the CLIP dense
features (or the patch tokens before them) as float16: a ViT-B image takes 8.4 MB instead of 16.8 MB, in the
memory tier and in a shared tier alike (an entry keeps its dtype through `to_bytes`); "float32" keeps the
encoder's precision. The parity of float16 storage against float32 (masks, text masks) is measured by
benchmarks/service_latency.py.

`to_bytes` / `from_bytes` serialise an entry for a shared tier without pickle: an uncompressed `.npz` whose
arrays carry their dtype and shape, read back with `allow_pickle=False`.
"""

from __future__ import annotations

import dataclasses
import io
import threading
import zipfile
from dataclasses import dataclass, field

import numpy as np

from service.runtime.base import ClipOutput
from service.runtime.layout import to_channels_last

ENTRY_OVERHEAD_BYTES = 512
CACHE_DTYPES = ("float32", "float16")


@dataclass
class Memo:
    """Mutable state shared by every copy of one entry; `lock` serialises the CLIP head's first run."""

    patch_tokens: np.ndarray | None = None
    clip: ClipOutput | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


@dataclass
class ImageEntry:
    """See the module docstring."""

    image_id: str
    width: int
    height: int
    input_size: tuple[int, int]
    image_embeddings: np.ndarray = field(repr=False)
    memo: Memo = field(repr=False)
    cached: bool = False

    @property
    def original_size(self) -> tuple[int, int]:
        """(H, W) of the original image."""
        return (self.height, self.width)

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays of the entry (what a cache tier is charged)."""
        total = self.image_embeddings.nbytes + ENTRY_OVERHEAD_BYTES
        if self.memo.patch_tokens is not None:
            total += self.memo.patch_tokens.nbytes
        if self.memo.clip is not None:
            total += self.memo.clip.image_embedding.nbytes + self.memo.clip.patch_embeddings.nbytes
        return int(total)

    def for_request(self, cached: bool) -> ImageEntry:
        """A copy for one request (shares arrays and memo) with its own `cached` flag."""
        return dataclasses.replace(self, cached=cached)


def channels_last(array: np.ndarray, dtype: str | np.dtype) -> np.ndarray:
    """(1, C, h, w) -> the same values in `dtype`, shape (1, C, h, w), held channels-last: a view of a
    C-contiguous (1, h, w, C) array (one copy, none when it is already so held; service/runtime/layout.py)."""
    return to_channels_last(array, dtype).transpose(0, 3, 1, 2)


def new_entry(
    image_id: str,
    size: tuple[int, int],
    input_size: tuple[int, int],
    image_embeddings: np.ndarray,
    patch_tokens: np.ndarray,
    dtype: str = "float32",
) -> ImageEntry:
    """A fresh entry from one encoder pass: size (width, height) ORIGINAL; image_embeddings (1, C, h, w) is
    stored channels-last and patch_tokens (1, h, w, W) C-contiguous, both in `dtype` (one of CACHE_DTYPES)."""
    if dtype not in CACHE_DTYPES:
        raise ValueError(f"cache dtype {dtype!r}: expected one of {CACHE_DTYPES}")
    return ImageEntry(
        image_id=image_id,
        width=size[0],
        height=size[1],
        input_size=input_size,
        image_embeddings=channels_last(image_embeddings, dtype),
        memo=Memo(patch_tokens=np.ascontiguousarray(patch_tokens, dtype)),
    )


def to_bytes(entry: ImageEntry) -> bytes:
    """The entry as `.npz` bytes (meta: width, height, new_h, new_w; then the arrays it holds now)."""
    arrays = {
        "meta": np.array([entry.width, entry.height, *entry.input_size], np.int64),
        "image_embeddings": entry.image_embeddings,
    }
    memo = entry.memo
    if memo.clip is not None:
        arrays["clip_image"] = memo.clip.image_embedding
        arrays["clip_patches"] = memo.clip.patch_embeddings
    elif memo.patch_tokens is not None:
        arrays["patch_tokens"] = memo.patch_tokens
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def from_bytes(image_id: str, data: bytes) -> ImageEntry:
    """Inverse of `to_bytes`; raises ValueError on anything malformed."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise ValueError(f"not a serialised entry: {exc}") from exc
    meta = arrays.get("meta")
    embeddings = arrays.get("image_embeddings")
    if meta is None or meta.shape != (4,) or embeddings is None or embeddings.ndim != 4:
        raise ValueError("serialised entry lacks meta or a (1, C, h, w) image_embeddings")
    clip = None
    if "clip_image" in arrays and "clip_patches" in arrays:
        clip = ClipOutput(arrays["clip_image"], arrays["clip_patches"])
    width, height, new_h, new_w = (int(v) for v in meta)
    return ImageEntry(
        image_id=image_id,
        width=width,
        height=height,
        input_size=(new_h, new_w),
        image_embeddings=channels_last(embeddings, embeddings.dtype),
        memo=Memo(patch_tokens=arrays.get("patch_tokens"), clip=clip),
    )
