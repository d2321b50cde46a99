"""OpenVINO's static box/point-only SAM decoder specialisations (service/runtime/openvino_decoder.py) against
the dynamic decoder model they are layered on, on the random-init `tiny` bundle (f32, so both are comparable
to float rounding)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("openvino")

from service.bundle import Bundle  # noqa: E402
from service.images.entry import channels_last  # noqa: E402
from service.runtime.layout import to_channels_last  # noqa: E402
from service.runtime.openvino_decoder import WARM_SHAPES, DecoderModels, rows_input  # noqa: E402
from service.runtime.registry import create_backend  # noqa: E402


def _backend(bundle: Path, shapes: int = 8, cache_dtype: str | None = None, decoder_variant: str = "none"):
    settings = SimpleNamespace(
        intra_op_threads=1,
        openvino_precision="f32",
        openvino_decoder_shapes=shapes,
        decoder_variant=decoder_variant,
        cache_dtype=cache_dtype,
    )
    return create_backend("openvino", Bundle.load(bundle), settings)


def _prompts(bundle: Bundle, k: int, n: int, masks: bool = False, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    grid, size = 4 * bundle.embed_grid, bundle.image_size
    coords = rng.uniform(0, size, (k, n, 2)).astype(np.float32)
    labels = rng.integers(0, 4, (k, n)).astype(np.float32)
    mask = rng.normal(size=(k, 1, grid, grid)).astype(np.float32)
    return [coords, labels, mask, np.full((k,), float(masks), np.float32)]


def test_box_and_point_calls_run_static_specialisations_equal_to_the_dynamic_model(tiny_bundle: Path) -> None:
    backend = _backend(tiny_bundle)
    bundle = Bundle.load(tiny_bundle)
    models = backend.sessions["sam_decoder"]
    try:
        assert isinstance(models, DecoderModels) and set(models.models) == set(WARM_SHAPES)  # warm at load
        emb = np.random.default_rng(1).normal(size=(1, 64, bundle.embed_grid, bundle.embed_grid))
        emb = emb.astype(np.float32)
        names = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input")
        for k, n in [(1, 2), (1, 3), (3, 5)]:
            prompts = _prompts(bundle, k, n, seed=k + n)
            out = backend.decode(emb, *prompts)
            assert (k, n) in models.models  # a new shape is compiled before its first call
            rows = to_channels_last(emb, np.float16)  # the models' port: (1, h, w, C) at the cache dtype
            ref = models.dynamic.run(dict(zip(names, [rows, *prompts], strict=True)))
            np.testing.assert_allclose(out.low_res_masks, ref["low_res_masks"], atol=1e-4, rtol=1e-4)
            np.testing.assert_allclose(out.iou_predictions, ref["iou_predictions"], atol=1e-4, rtol=1e-4)
        again = backend.decode(emb, *_prompts(bundle, 3, 5, seed=8))
        first = backend.decode(emb, *_prompts(bundle, 3, 5, seed=8))
        np.testing.assert_array_equal(again.low_res_masks, first.low_res_masks)  # same request, same masks
        calls = []
        dynamic = models.dynamic.run
        models.dynamic.run = lambda feeds: calls.append(1) or dynamic(feeds)
        backend.decode(emb, *_prompts(bundle, 1, 2, masks=True))  # a mask prompt: the dynamic model
        assert calls == [1]
    finally:
        backend.close()


def test_specialisations_are_bounded_and_can_be_off(tiny_bundle: Path) -> None:
    bundle = Bundle.load(tiny_bundle)
    emb = np.zeros((1, 64, bundle.embed_grid, bundle.embed_grid), np.float32)
    off, two = _backend(tiny_bundle, shapes=0), _backend(tiny_bundle, shapes=2)
    try:
        off.decode(emb, *_prompts(bundle, 1, 2))
        assert not off.sessions["sam_decoder"].models
        for k in (1, 2, 3):
            two.decode(emb, *_prompts(bundle, k, 2))
        assert list(two.sessions["sam_decoder"].models) == [(2, 2), (3, 2)]  # least recently used dropped
    finally:
        off.close()
        two.close()


def test_float32_cache_entries_keep_float32_ports(tiny_bundle: Path) -> None:
    """cache_dtype float32: the cached inputs stay float32 at the port and are fed as they are."""
    backend = _backend(tiny_bundle, cache_dtype="float32")
    bundle = Bundle.load(tiny_bundle)
    try:
        emb = np.random.default_rng(3).normal(size=(1, 64, bundle.embed_grid, bundle.embed_grid))
        assert backend.feed("image_embeddings", emb.astype(np.float32)).dtype == np.float32
        port = next(
            p for p in backend.sessions["sam_decoder"].compiled.inputs if "image_embeddings" in p.get_names()
        )
        assert port.get_element_type().get_type_name() == "f32"
        prompts = _prompts(bundle, 1, 2, seed=4)
        out = backend.decode(emb.astype(np.float32), *prompts)
        assert out.low_res_masks.dtype == np.float32 and np.isfinite(out.low_res_masks).all()
    finally:
        backend.close()


def test_a_float16_embedding_is_taken_as_is(tiny_bundle: Path) -> None:
    """A float16 cache entry goes to OpenVINO without a numpy cast (the compiled graphs take float16 at the
    cached inputs' ports), with the outputs of its float32 copy."""
    backend = _backend(tiny_bundle)
    bundle = Bundle.load(tiny_bundle)
    try:
        emb16 = np.random.default_rng(3).normal(size=(1, 64, bundle.embed_grid, bundle.embed_grid))
        emb16 = emb16.astype(np.float16)
        assert backend.feed("image_embeddings", emb16).dtype == np.float16
        assert backend.feed("image_embeddings", emb16.astype(np.float32)).dtype == np.float16
        decoder = backend.sessions["sam_decoder"]
        for compiled in [decoder.compiled, *(m.compiled for m in decoder.models.values())]:
            port = next(p for p in compiled.inputs if "image_embeddings" in p.get_names())
            assert port.get_element_type().get_type_name() == "f16"
        clip_port = backend.sessions["clip_head"].compiled.inputs[0]
        assert clip_port.get_element_type().get_type_name() == "f16"
        prompts = _prompts(bundle, 2, 3, seed=4)
        a, b = backend.decode(emb16, *prompts), backend.decode(emb16.astype(np.float32), *prompts)
        np.testing.assert_array_equal(a.low_res_masks, b.low_res_masks)
        tokens = np.random.default_rng(5).normal(size=(1, bundle.embed_grid, bundle.embed_grid, 96))
        c16, c32 = (
            backend.clip_head(tokens.astype(np.float16)),
            backend.clip_head(tokens.astype(np.float16).astype(np.float32)),
        )
        np.testing.assert_array_equal(c16.patch_embeddings, c32.patch_embeddings)
    finally:
        backend.close()


def _layer_types(compiled) -> set[str]:
    """The CPU plugin's node types in a compiled model's execution graph ("Subgraph": a snippets kernel)."""
    return {op.get_rt_info()["layerType"].astype(str) for op in compiled.get_runtime_model().get_ops()}


def test_the_fused_decoder_compiles_without_snippets_and_the_plain_one_with_them(fused_tiny: Path) -> None:
    """VARIANT_CONFIG: every compiled model of the fused decoder (dynamic and specialisations) runs without the
    CPU plugin's snippets (they would fuse its token -> image attention into a slower MHA subgraph); the plain
    decoder keeps the plugin's default, which does use them."""
    for variant, snippets in (("fused", False), ("none", True)):
        backend = _backend(fused_tiny, decoder_variant=variant)
        try:
            graph = backend.info.details["graphs"]["sam_decoder"]
            assert graph["file"] == ("sam_decoder.fused.onnx" if variant == "fused" else "sam_decoder.onnx")
            decoder = backend.sessions["sam_decoder"]
            for compiled in [decoder.compiled, *(m.compiled for m in decoder.models.values())]:
                assert ("Subgraph" in _layer_types(compiled)) == snippets, variant
        finally:
            backend.close()


def test_openvino_decoders_take_the_embedding_channels_last_the_fused_one_as_its_rows(
    fused_tiny: Path,
) -> None:
    """Both decoders' models (dynamic and specialisations) take image_embeddings as (1, h, w, C): the fused one
    reads them as its rows with no transpose (`rows_input`), the plain one through a layout conversion inside
    the model. Fed a channels-last entry or a channels-first array, both give the same masks (f32, to
    rounding)."""
    import openvino as ov

    bundle = Bundle.load(fused_tiny)
    grid = bundle.embed_grid
    emb = np.random.default_rng(6).normal(size=(1, 64, grid, grid)).astype(np.float32)
    prompts = [_prompts(bundle, 1, 2, seed=7), _prompts(bundle, 2, 3, masks=True, seed=8)]
    outs = {}
    for variant in ("fused", "none"):
        backend = _backend(fused_tiny, decoder_variant=variant)
        try:
            decoder = backend.sessions["sam_decoder"]
            assert decoder.rows == (variant == "fused")
            for compiled in [decoder.compiled, *(m.compiled for m in decoder.models.values())]:
                port = next(p for p in compiled.inputs if "image_embeddings" in p.get_names())
                assert list(port.get_shape()) == [1, grid, grid, 64], variant
            outs[variant] = [
                backend.decode(e, *p) for p in prompts for e in (emb, channels_last(emb, "float16"))
            ]
        finally:
            backend.close()
    for fused, plain in zip(outs["fused"], outs["none"], strict=True):
        np.testing.assert_allclose(fused.low_res_masks, plain.low_res_masks, atol=2e-3, rtol=1e-3)
    core = ov.Core()
    fused = core.read_model(str(fused_tiny / "sam_decoder.fused.onnx"))
    assert rows_input(fused)
    (param,) = [p for p in fused.get_parameters() if p.get_friendly_name() == "image_embeddings"]
    readers = [t.get_node().get_type_name() for t in param.output(0).get_target_inputs()]
    assert readers == ["Reshape"] and "image_embeddings" in param.output(0).get_names()
    plain = core.read_model(str(fused_tiny / "sam_decoder.onnx"))
    assert not rows_input(plain)  # no such pattern: left as it was
    (param,) = [p for p in plain.get_parameters() if p.get_friendly_name() == "image_embeddings"]
    assert list(param.get_partial_shape().to_shape()) == [1, 64, grid, grid]
