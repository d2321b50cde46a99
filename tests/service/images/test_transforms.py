"""transforms.py against segment_anything's ResizeLongestSide and Sam.preprocess/postprocess_masks (torch)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
sam_transforms = pytest.importorskip("segment_anything.utils.transforms")
from segment_anything.modeling import Sam  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from service.images import transforms  # noqa: E402

MEAN = [123.675, 116.28, 103.53]
STD = [58.395, 57.12, 57.375]


def _fake_sam(image_size: int) -> SimpleNamespace:
    """The attributes Sam.preprocess / Sam.postprocess_masks read, without building a network."""
    return SimpleNamespace(
        pixel_mean=torch.tensor(MEAN).view(-1, 1, 1),
        pixel_std=torch.tensor(STD).view(-1, 1, 1),
        image_encoder=SimpleNamespace(img_size=image_size),
    )


@pytest.mark.parametrize("shape", [(300, 451), (451, 300), (256, 256), (97, 1000), (1000, 13), (64, 80)])
@pytest.mark.parametrize("image_size", [256, 1024])
def test_resize_is_pixel_exact(shape: tuple[int, int], image_size: int) -> None:
    rgb = np.random.default_rng(sum(shape)).integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    ref = sam_transforms.ResizeLongestSide(image_size).apply_image(rgb)
    ours = transforms.resize_longest_side(rgb, image_size)
    assert ours.shape == ref.shape
    np.testing.assert_array_equal(ours, ref)
    assert transforms.preprocess_shape(*shape, image_size) == ref.shape[:2]


@pytest.mark.parametrize("shape", [(300, 451), (451, 300), (200, 256)])
def test_preprocess_is_bit_exact(shape: tuple[int, int]) -> None:
    rgb = np.random.default_rng(1).integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    ref_img = sam_transforms.ResizeLongestSide(256).apply_image(rgb)
    x = torch.as_tensor(ref_img).permute(2, 0, 1).contiguous()[None, :, :, :]
    ref = Sam.preprocess(_fake_sam(256), x.float()).numpy()
    ours, input_size = transforms.preprocess(rgb, 256, MEAN, STD)
    assert input_size == ref_img.shape[:2]
    np.testing.assert_array_equal(ours[None], ref)
    # padding really is zero and really bottom/right
    assert np.all(ours[:, input_size[0] :, :] == 0) and np.all(ours[:, :, input_size[1] :] == 0)


def test_coords_and_boxes_match_resize_longest_side() -> None:
    rt = sam_transforms.ResizeLongestSide(256)
    coords = np.array([[[10.0, 20.0], [450.0, 299.0]]])
    boxes = np.array([[1.5, 2.0, 400.0, 280.0], [0.0, 0.0, 451.0, 300.0]])
    ref_c = torch.as_tensor(rt.apply_coords(coords, (300, 451)), dtype=torch.float).numpy()
    ref_b = torch.as_tensor(rt.apply_boxes(boxes, (300, 451)), dtype=torch.float).numpy()
    np.testing.assert_array_equal(transforms.map_coords(coords, (300, 451), 256), ref_c)
    np.testing.assert_array_equal(transforms.map_boxes(boxes, (300, 451), 256), ref_b)
    back = transforms.unmap_coords(transforms.map_coords(coords, (300, 451), 256), (300, 451), 256)
    np.testing.assert_allclose(back, coords, atol=1e-3)


@pytest.mark.parametrize("size", [(37, 53), (64, 64), (300, 20), (8, 9)])
def test_resize_bilinear_matches_torch_align_corners_false(size: tuple[int, int]) -> None:
    maps = np.random.default_rng(2).normal(size=(6, 16, 24)).astype(np.float32)
    ref = F.interpolate(torch.from_numpy(maps)[None], size, mode="bilinear", align_corners=False)[0].numpy()
    np.testing.assert_allclose(transforms.resize_bilinear(maps, size), ref, atol=1e-5)


@pytest.mark.parametrize("original", [(300, 451), (451, 300), (1000, 97), (256, 256), (40, 30), (9, 700)])
def test_postprocess_masks_agree_with_sam(original: tuple[int, int]) -> None:
    rng = np.random.default_rng(3)
    low = rng.normal(size=(4, 64, 64)).astype(np.float32)
    input_size = transforms.preprocess_shape(*original, 256)
    ref = Sam.postprocess_masks(_fake_sam(256), torch.from_numpy(low)[None], input_size, original)[0].numpy()
    ours = transforms.postprocess_masks(low, input_size, original, 256)
    assert ours.shape == ref.shape == (4, *original)
    np.testing.assert_allclose(ours, ref, atol=1e-4)
    agree = np.mean((ours > 0) == (ref > 0))
    assert agree >= 0.99999


# --- the fast path: decisions at original size ---------------------------------------------------------------
def _smooth(rng: np.random.Generator, channels: int, grid: int, sigma: float) -> np.ndarray:
    """(channels, grid, grid) float32 logits with blob-like structure (what a trained decoder produces)."""
    import cv2

    noise = rng.normal(size=(grid, grid, channels)).astype(np.float32)
    blurred = cv2.GaussianBlur(noise, (0, 0), sigma).reshape(grid, grid, channels)
    return np.ascontiguousarray(blurred.transpose(2, 0, 1) * (4.0 / blurred.std()))


@pytest.mark.parametrize("original", [(300, 451), (451, 300), (1000, 97), (40, 30), (9, 700)])
@pytest.mark.parametrize("grid", [64, 16])
def test_upscale_to_input_is_resize_then_crop(original: tuple[int, int], grid: int) -> None:
    maps = np.random.default_rng(4).normal(size=(3, grid, grid)).astype(np.float32)
    input_size = transforms.preprocess_shape(*original, 256)
    ref = transforms.resize_bilinear(maps, (256, 256))[:, : input_size[0], : input_size[1]]
    np.testing.assert_array_equal(transforms.upscale_to_input(maps, input_size, 256), ref)
    for channels in (3, 1):  # the transposed layout: the same values (a map resized alone: same again)
        transposed = transforms.upscale_to_input(maps[:channels], input_size, 256, transposed=True)
        np.testing.assert_allclose(transposed, ref[:channels].transpose(0, 2, 1), rtol=0, atol=1e-5)


@pytest.mark.parametrize("original", [(300, 451), (451, 300), (1000, 97), (40, 30), (9, 700), (1500, 2250)])
@pytest.mark.parametrize("kind", ["noise", "smooth"])
def test_fast_masks_equal_sam_postprocess_masks(original: tuple[int, int], kind: str) -> None:
    """postprocess_decision == segment_anything's `Sam.postprocess_masks(...) > 0` (torch), except where a
    logit lies within float32 rounding of 0: documented as at most 1e-5 of the pixels (in practice none)."""
    size = 1024 if max(original) > 1024 else 256
    rng = np.random.default_rng(5)
    low = _smooth(rng, 1, size // 4, 6.0) if kind == "smooth" else rng.normal(size=(1, size // 4, size // 4))
    low = low.astype(np.float32)
    input_size = transforms.preprocess_shape(*original, size)
    ref = Sam.postprocess_masks(_fake_sam(size), torch.from_numpy(low)[None], input_size, original)
    ref = ref[0, 0].numpy() > 0
    fast = transforms.postprocess_decision(low, input_size, original, size)
    assert fast.shape == original and fast.dtype == bool and fast.flags.f_contiguous
    assert np.count_nonzero(fast != ref) <= 1e-5 * ref.size
    assert 0 < np.count_nonzero(ref) < ref.size  # the case is not trivially empty or full


@pytest.mark.parametrize("kind", ["noise", "smooth"])
def test_multi_class_argmax_equals_the_plain_path(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Several maps: the first argmax at original size, from the banded path (smooth maps: the decision changes
    between few samples) or the dense one (noise), == argmax of the plain path's original-size maps."""
    rng = np.random.default_rng(6)
    maps = _smooth(rng, 4, 16, 1.5) if kind == "smooth" else rng.normal(size=(4, 16, 16)).astype(np.float32)
    original = (451, 300)
    input_size = transforms.preprocess_shape(*original, 256)
    dense_calls = []
    dense = transforms._dense
    monkeypatch.setattr(transforms, "_dense", lambda *a: dense_calls.append(1) or dense(*a))
    fast = transforms.postprocess_decision(maps, input_size, original, 256)
    assert bool(dense_calls) == (kind == "noise")
    plain = np.argmax(transforms.postprocess_masks(maps, input_size, original, 256), axis=0)
    assert fast.dtype == np.uint8 and fast.flags.f_contiguous
    assert np.count_nonzero(fast != plain) <= 1e-5 * plain.size
    assert len(np.unique(plain)) == 4


def test_ties_go_to_the_first_class() -> None:
    maps = np.zeros((3, 8, 8), np.float32)
    maps[1:, :, 4:] = 1.0  # classes 1 and 2 tie on the right half
    out = transforms.upsample_decision_t(maps.transpose(0, 2, 1), (16, 16))
    assert set(np.unique(out[:, 10:])) == {1} and set(np.unique(out[:, :6])) == {0}


@pytest.mark.parametrize("shape", [(2250, 1500), (1, 37), (37, 1), (3, 5)])
def test_positive_equals_numpy_greater_than_zero(shape: tuple[int, int]) -> None:
    """The OpenCV decision the dense path uses == `values > 0` pixel for pixel, as 0/1 bools, including the
    values at the edge of the decision: +-0.0, the smallest subnormals, +-inf and NaN."""
    rng = np.random.default_rng(8)
    values = rng.normal(size=shape).astype(np.float32)
    edge = np.array([0.0, -0.0, 1e-45, -1e-45, np.inf, -np.inf, np.nan, 1e-38, -1e-38], np.float32)
    flat = values.reshape(-1)
    flat[: min(flat.size, edge.size)] = edge[: flat.size]
    got = transforms.positive(values)
    assert got.dtype == bool and got.shape == shape and got.view(np.uint8).max() <= 1
    np.testing.assert_array_equal(got, values > 0)
