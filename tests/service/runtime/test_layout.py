"""The embedding's two memory orders (service/runtime/layout.py) and the feed of a channels-last cache entry to
a runtime that takes it channels-first (GraphBackend.feed)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from service.bundle import Bundle
from service.runtime.layout import is_channels_last, to_channels_first, to_channels_last
from service.runtime.registry import create_backend


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64, np.uint8])
def test_both_memory_orders_hold_the_same_values(dtype: type) -> None:
    array = (np.random.default_rng(0).normal(size=(2, 5, 3, 4)) * 50).astype(
        dtype
    )  # B = 2, C = 5, h = 3, w = 4
    rows = to_channels_last(array)
    assert rows.shape == (2, 3, 4, 5) and rows.flags.c_contiguous
    np.testing.assert_array_equal(rows, array.transpose(0, 2, 3, 1))
    held = rows.transpose(0, 3, 1, 2)  # how a cache entry holds it
    assert is_channels_last(held) and not held.flags.c_contiguous and not is_channels_last(array)
    assert np.shares_memory(to_channels_last(held), rows)  # already channels-last: a view, no copy
    back = to_channels_first(held)
    assert back.flags.c_contiguous and back.dtype == dtype
    np.testing.assert_array_equal(back, array)
    assert to_channels_first(array) is array  # already channels-first in its dtype: as is


def test_conversions_cast_to_the_asked_dtype() -> None:
    array = np.random.default_rng(1).normal(size=(1, 8, 2, 2)).astype(np.float32)
    half = to_channels_last(array, "float16")
    assert half.dtype == np.float16 and half.flags.c_contiguous
    full = to_channels_first(half.transpose(0, 3, 1, 2), np.float32)
    assert full.dtype == np.float32 and full.flags.c_contiguous
    np.testing.assert_array_equal(full, array.astype(np.float16).astype(np.float32))


def test_onnxruntime_takes_a_channels_last_entry_as_its_channels_first_copy(tiny_bundle: Path) -> None:
    """A runtime with the contract's channels-first float32 port (ONNX Runtime) gets the entry's values, in
    that layout: the decoder's outputs equal those of the channels-first array."""
    settings = SimpleNamespace(intra_op_threads=1, decoder_variant="none")
    backend = create_backend("onnxruntime", Bundle.load(tiny_bundle), settings)
    try:
        grid = backend.bundle.embed_grid
        emb = np.random.default_rng(2).normal(size=(1, 64, grid, grid)).astype(np.float32)
        held = to_channels_last(emb, np.float16).transpose(0, 3, 1, 2)
        fed = backend.feed("image_embeddings", held)
        assert fed.flags.c_contiguous and fed.dtype == np.float32
        np.testing.assert_array_equal(fed, emb.astype(np.float16).astype(np.float32))
        coords = np.array([[[10.0, 20.0], [200.0, 180.0]]], np.float32)
        labels = np.array([[2.0, 3.0]], np.float32)
        masks, has = np.zeros((1, 1, 4 * grid, 4 * grid), np.float32), np.zeros((1,), np.float32)
        a = backend.decode(held, coords, labels, masks, has)
        b = backend.decode(emb.astype(np.float16).astype(np.float32), coords, labels, masks, has)
        np.testing.assert_array_equal(a.low_res_masks, b.low_res_masks)
    finally:
        backend.close()
