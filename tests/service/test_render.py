"""Mask serialisation: RLE round trip via pycocotools, polygons, PNG, bbox/area."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from service.render import (
    decode_rle,
    encode_png,
    encode_polygon,
    encode_rle,
    mask_area,
    mask_bbox,
    mask_to_json,
)
from service.tasks.results import MaskResult


def _mask() -> np.ndarray:
    m = np.zeros((37, 53), bool)
    m[5:20, 10:30] = True
    m[25:30, 40:50] = True
    m[0, 52] = True
    return m


def test_rle_round_trip_with_pycocotools() -> None:
    mask = _mask()
    rle = encode_rle(mask)
    assert rle["size"] == [37, 53] and isinstance(rle["counts"], str)
    decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
    np.testing.assert_array_equal(decoded.astype(bool), mask)
    np.testing.assert_array_equal(decode_rle(rle), mask)
    assert int(mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode()})) == mask_area(mask)


def test_bbox_and_area() -> None:
    mask = _mask()
    assert mask_bbox(mask) == [10, 0, 43, 30]
    assert mask_area(mask) == 15 * 20 + 5 * 10 + 1
    assert mask_bbox(np.zeros((4, 4), bool)) == [0, 0, 0, 0]


def test_polygon_covers_the_blobs() -> None:
    polys = encode_polygon(_mask())
    assert len(polys) == 2  # the single pixel has < 3 vertices and is dropped
    rles = mask_utils.frPyObjects(polys, 37, 53)
    filled = mask_utils.decode(mask_utils.merge(rles)).astype(bool)
    agree = (filled == _mask()).mean()
    assert agree > 0.97


def test_png_round_trip() -> None:
    data = encode_png(_mask())
    im = Image.open(io.BytesIO(data))
    assert im.format == "PNG" and im.mode == "L"
    np.testing.assert_array_equal(np.asarray(im) > 127, _mask())


def test_mask_to_json() -> None:
    res = MaskResult(mask=_mask(), score=0.8, iou_prediction=0.75, label="dog")
    out = mask_to_json(res)
    assert set(out) == {"segmentation", "bbox", "area", "score", "iou_prediction", "label"}
    assert out["bbox"] == mask_bbox(_mask()) and out["label"] == "dog" and out["score"] == pytest.approx(0.8)
    assert isinstance(mask_to_json(res, "polygon")["segmentation"], list)
    with pytest.raises(ValueError):
        mask_to_json(res, "svg")


def test_fortran_ordered_and_strided_masks_render_alike() -> None:
    """The fast postprocessing yields column-major masks: every renderer gives what it gives for the same mask
    in row-major order (RLE / bbox / area read it in place); a strided view is copied once."""
    mask = _mask()
    for other in (
        np.asfortranarray(mask),
        np.ascontiguousarray(mask.T).T,
        np.repeat(mask, 2, axis=1)[:, ::2],
    ):
        np.testing.assert_array_equal(other, mask)
        assert encode_rle(other) == encode_rle(mask)
        assert mask_bbox(other) == mask_bbox(mask) and mask_area(other) == mask_area(mask)
        assert encode_polygon(other) == encode_polygon(mask)
        png = np.asarray(Image.open(io.BytesIO(encode_png(other))))
        np.testing.assert_array_equal(png, mask.astype(np.uint8) * 255)
    tall = np.zeros((30, 4), bool, order="F")
    tall[7:12, 1] = True
    assert mask_bbox(tall) == [1, 7, 1, 5] and mask_area(tall) == 5
