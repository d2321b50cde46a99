"""runs.py: COCO RLE runs of a SAM mask from its low-res logits, against segment_anything's
`Sam.postprocess_masks(...) > 0` (torch) and pycocotools' encoding of that bitmap."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from segment_anything.modeling import Sam  # noqa: E402

from service.images import runs, transforms  # noqa: E402
from service.render import encode_rle, mask_area, mask_bbox  # noqa: E402


def _reference(
    low: np.ndarray, input_size: tuple[int, int], original: tuple[int, int], size: int
) -> np.ndarray:
    """Sam.postprocess_masks(low[None, None]) > 0 -> (H, W) bool."""
    sam = SimpleNamespace(image_encoder=SimpleNamespace(img_size=size))
    logits = Sam.postprocess_masks(sam, torch.from_numpy(low)[None, None], input_size, original)
    return logits[0, 0].numpy() > 0


def _blobs(seed: int, grid: int, count: int = 6) -> np.ndarray:
    """(grid, grid) float32 logits: a few Gaussian bumps above a negative floor (a trained SAM's mask shape)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:grid, 0:grid].astype(np.float32)
    out = np.full((grid, grid), -2.0, np.float32)
    centres = rng.uniform(0, grid, (count, 2))
    for (cy, cx), radius in zip(centres, rng.uniform(4, grid / 4, count), strict=True):
        out += 6.0 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2))
    return out


@pytest.mark.parametrize(
    "original", [(1500, 2250), (2250, 1500), (3000, 4000), (1024, 1024), (1501, 2251), (300, 451), (451, 300)]
)
@pytest.mark.parametrize("seed", [0, 1])
def test_runs_equal_sam_postprocess_masks(original: tuple[int, int], seed: int) -> None:
    """The runs decode to `Sam.postprocess_masks(...) > 0`, except where a logit lies within rounding of 0
    (documented as at most 1e-5 of the pixels; in practice none), and give pycocotools' RLE, area and bbox."""
    size = 1024 if max(original) >= 1024 else 256
    low = _blobs(seed, size // 4)
    input_size = transforms.preprocess_shape(*original, size)
    found = runs.mask_runs(low, input_size, original, size)
    assert found is not None and found.size == original
    ref = _reference(low, input_size, original, size)
    assert 0 < np.count_nonzero(ref) < ref.size  # the case is not trivially empty or full
    mask = found.decode()
    assert mask.shape == original and mask.dtype == bool
    assert np.count_nonzero(mask != ref) <= 1e-5 * ref.size
    assert int(found.counts.sum()) == ref.size
    assert found.rle() == encode_rle(mask)
    assert found.area() == mask_area(mask) and found.bbox() == mask_bbox(mask)


def test_the_plain_path_is_left_where_runs_do_not_pay() -> None:
    """A fragmented mask (noise logits: ~40 % of the pixels start a run) and an image smaller than the input
    frame (the last resize shrinks: input rows without an output row) return None: the caller's per-pixel path."""
    noise = np.random.default_rng(2).normal(size=(256, 256)).astype(np.float32)
    assert runs.mask_runs(noise, (683, 1024), (1500, 2250), 1024) is None
    small = transforms.preprocess_shape(500, 700, 1024)
    assert runs.mask_runs(_blobs(3, 256), small, (500, 700), 1024) is None


def _counts(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool -> COCO RLE counts, column-major, from the bitmap (the definition, in numpy)."""
    flat = mask.T.reshape(-1)
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], [0] if flat[0] else [], edges, [flat.size]))  # starts with a run of 0s
    return np.diff(bounds).astype(np.uint64)


@pytest.mark.parametrize("case", ["empty", "full", "corner", "across_columns", "random"])
def test_rle_area_bbox_and_bitmap_of_runs(case: str) -> None:
    mask = np.zeros((7, 5), bool)
    if case == "full":
        mask[:] = True
    elif case == "corner":
        mask[0, 0] = mask[6, 4] = True
    elif case == "across_columns":  # one run from the bottom of column 1 into the top of column 2
        mask[5:, 1] = mask[:2, 2] = True
    elif case == "random":
        mask = np.random.default_rng(4).random((7, 5)) > 0.6
    held = runs.MaskRuns(mask.shape, _counts(mask))
    np.testing.assert_array_equal(held.decode(), mask)
    assert held.rle() == encode_rle(mask)
    assert held.area() == mask_area(mask) and held.bbox() == mask_bbox(mask)


@pytest.mark.parametrize("height", [50, 51, 113, 400])
def test_switch_rows_equal_the_per_pixel_resize(height: int) -> None:
    """The run boundaries down each column (the analytic step) against resizing every pixel of that step with
    OpenCV and `> 0`, on noise (a sign change between most input rows: switches on a block's last and the next
    block's first row cancel) and on values near 0 (the rounding correction)."""
    import cv2

    rng = np.random.default_rng(height)
    for scale in (1.0, 1e-7):
        values = (rng.normal(size=(37, 50)) * scale).astype(np.float32)  # (W, n): 37 columns of 50 input rows
        counts = runs._counts(values, transforms.LinearAxis.of(50, height))
        per_pixel = cv2.resize(values, (height, 37), interpolation=cv2.INTER_LINEAR) > 0  # (W, H)
        assert np.array_equal(counts, _counts(per_pixel.T))
    pattern = np.array([[1.0, -1e-6, 1.0]], np.float32)  # + - +: both switches fall on one row, i.e. none
    counts = runs._counts(pattern, transforms.LinearAxis.of(3, 8))
    assert counts.tolist() == [0, 8]
