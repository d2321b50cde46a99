"""OpenVINO backend and the onnxruntime-int8 backend, tested against the plain onnxruntime backend (fp32) on the
random-init `tiny` bundle with the fast-CPU parity gates (model_export/parity.py): SAM decoder masks mean IoU
>= 0.97 on random prompts, CLIP image/text embeddings cosine >= 0.99, text-segment masks IoU >= 0.95."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("openvino")

from model_export.parity import (  # noqa: E402
    generated_images,
    parity_report,
    random_prompts,
    random_text_ids,
)
from service.bundle import Bundle  # noqa: E402
from service.runtime.base import BackendError, available_backends, create_backend  # noqa: E402


def _settings(**kw: object) -> SimpleNamespace:
    base = {"intra_op_threads": 0, "inter_op_threads": 1, "providers": ["CPUExecutionProvider"]}
    return SimpleNamespace(**{**base, **kw})


def _inputs(bundle: Bundle) -> tuple[np.ndarray, dict, np.ndarray]:
    images = generated_images(2, bundle.image_size, list(bundle.pixel_mean), list(bundle.pixel_std), seed=7)
    return (
        images,
        random_prompts(12, bundle.image_size, bundle.embed_grid, seed=7),
        random_text_ids(9, seed=7),
    )


@pytest.fixture(scope="module")
def reference(tiny_bundle: Path):
    return create_backend("onnxruntime", Bundle.load(tiny_bundle), _settings())


@pytest.fixture(scope="module")
def optimized_bundle(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny + openvino-int8 (int8 attention too) and ort-int8 variants."""
    from model_export.quantize import optimize

    out = tmp_path_factory.mktemp("ov") / "tiny"
    shutil.copytree(tiny_bundle, out)
    optimize(out, "openvino-int8", calib_samples=2, attention=True)
    optimize(out, "ort-int8", graphs=("encoder", "clip_head"), parity_samples=1)
    return out


def test_registered() -> None:
    assert {"openvino", "onnxruntime-int8"} <= set(available_backends())


def test_bf16_parity_against_onnxruntime(tiny_bundle: Path, reference) -> None:
    bundle = Bundle.load(tiny_bundle)
    fast = create_backend("openvino", bundle, _settings(openvino_precision="bf16"))
    assert fast.info.name == "openvino" and fast.info.precision == "bf16"
    assert {g["precision"] for g in fast.info.details["graphs"].values()} == {"bf16"}
    report = parity_report(reference, fast, *_inputs(bundle))
    assert report["passed"], report
    assert report["encoder_embedding_cosine"] > 0.999


def test_int8_variant_auto_selected_and_within_gates(optimized_bundle: Path, reference) -> None:
    bundle = Bundle.load(optimized_bundle)
    fast = create_backend("openvino", bundle, _settings())  # variant "auto"
    graphs = fast.info.details["graphs"]
    assert graphs["encoder"]["variant"] == "int8-qdq-attn", graphs
    assert graphs["encoder"]["file"] == "encoder.int8attn.qdq.onnx"
    report = parity_report(reference, fast, *_inputs(bundle))
    assert report["passed"], report
    plain = create_backend("openvino", bundle, _settings(variant="none", openvino_precision="f32"))
    assert all(
        g["variant"] is None and g["precision"] == "f32" for g in plain.info.details["graphs"].values()
    )


def test_encoder_batch_matches_single_images_and_any_clip_grid(tiny_bundle: Path, reference) -> None:
    bundle = Bundle.load(tiny_bundle)
    fast = create_backend("openvino", bundle, _settings(openvino_precision="f32", intra_op_threads=1))
    assert fast.info.details["threads"] == 1
    images = generated_images(3, bundle.image_size, list(bundle.pixel_mean), list(bundle.pixel_std), seed=3)
    batch = fast.encode(images)
    assert batch.image_embeddings.shape[0] == 3 and batch.patch_tokens.shape[0] == 3
    single = fast.encode(images[1:2])
    np.testing.assert_allclose(batch.image_embeddings[1:2], single.image_embeddings, atol=1e-5)
    ref = reference.encode(images)
    np.testing.assert_allclose(batch.image_embeddings, ref.image_embeddings, atol=2e-3)
    tokens = np.ascontiguousarray(batch.patch_tokens[:, :8, :12])  # a grid the static model was not built for
    out, ref_out = fast.clip_head(tokens), reference.clip_head(tokens)
    assert out.patch_embeddings.shape == ref_out.patch_embeddings.shape
    np.testing.assert_allclose(out.image_embedding, ref_out.image_embedding, atol=2e-3)


def test_decoder_dynamic_prompts_and_metrics(tiny_bundle: Path, reference) -> None:
    seen: list[str] = []
    metrics = SimpleNamespace(observe_graph=lambda graph, seconds: seen.append(graph))
    bundle = Bundle.load(tiny_bundle)
    fast = create_backend("openvino", bundle, _settings(openvino_precision="f32"))
    fast.metrics = metrics
    emb = reference.encode(_inputs(bundle)[0][:1]).image_embeddings
    for k in (1, 5):
        prompts = random_prompts(k, bundle.image_size, bundle.embed_grid, seed=k)
        out, ref = fast.decode(emb, **prompts), reference.decode(emb, **prompts)
        assert out.low_res_masks.shape == ref.low_res_masks.shape == (k, 4, 64, 64)
        np.testing.assert_allclose(out.iou_predictions, ref.iou_predictions, atol=1e-3)
    assert seen == ["sam_decoder", "sam_decoder"]


def test_bad_settings_are_clear_errors(tiny_bundle: Path) -> None:
    bundle = Bundle.load(tiny_bundle)
    with pytest.raises(BackendError, match="precision"):
        create_backend("openvino", bundle, _settings(openvino_precision="int3"))
    with pytest.raises(BackendError, match="variant"):
        create_backend("openvino", bundle, _settings(variant="does-not-exist"))
    with pytest.raises(BackendError, match="ort-int8"):
        create_backend("onnxruntime-int8", bundle, _settings())


def test_onnxruntime_int8_backend_parity(optimized_bundle: Path, reference) -> None:
    bundle = Bundle.load(optimized_bundle)
    fast = create_backend("onnxruntime-int8", bundle, _settings())
    assert fast.info.name == "onnxruntime-int8"
    assert fast.info.details["graphs"]["encoder"] == "encoder.int8.onnx"
    report = parity_report(reference, fast, *_inputs(bundle))
    assert report["passed"], report


def _png(width: int, height: int, seed: int) -> bytes:
    import io

    from PIL import Image

    img = generated_images(1, max(width, height), [0, 0, 0], [1, 1, 1], seed=seed)[0]
    rgb = np.clip(img.transpose(1, 2, 0)[:height, :width], 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.anyio
async def test_service_pipeline_parity(optimized_bundle: Path, tiny_bundle: Path) -> None:
    """Through the real Predictor (default settings, OpenVINO with the auto-selected int8 variant) against the
    plain onnxruntime Predictor: text-segment masks IoU >= 0.95, prompt masks IoU >= 0.97, classify close."""
    import time

    from model_export.parity import mask_iou
    from service.metrics import Metrics
    from service.pipeline.decode import decode_image
    from service.pipeline.predictor import Predictor
    from service.pipeline.prompts import PromptRequest
    from service.settings import Settings
    from service.timing import Timings

    settings = Settings()
    predictors = []
    for name, path in (("onnxruntime", tiny_bundle), ("openvino", optimized_bundle)):
        bundle = Bundle.load(path)
        predictors.append(Predictor(bundle, create_backend(name, bundle, settings), settings, Metrics()))
        await predictors[-1].start()
    assert predictors[1].backend.info.details["graphs"]["encoder"]["variant"] == "int8-qdq-attn"
    text_ious, prompt_ious = [], []
    for seed, (w, h) in enumerate([(200, 150), (120, 240)]):
        image = decode_image(_png(w, h, seed), settings)
        entries = [await p.get_entry(image=image, image_id=None, timings=Timings(), deadline=time.monotonic() + 60)
                   for p in predictors]  # fmt: skip
        for text in ("a cat", "a dog", "tree"):
            ref, fast = [
                (await p.segment_text(e, [text], Timings()))[0]
                for p, e in zip(predictors, entries, strict=True)
            ]
            text_ious.append(mask_iou(ref.mask, fast.mask))
        request = PromptRequest(
            boxes=[(10, 10, w // 2, h // 2), (w // 3, h // 3, w - 5, h - 5)], multimask=True
        )
        ref, fast = [
            await p.segment_prompts(e, request, Timings()) for p, e in zip(predictors, entries, strict=True)
        ]
        prompt_ious += [
            mask_iou(a.mask, b.mask)
            for ra, fa in zip(ref, fast, strict=True)
            for a, b in zip(ra, fa, strict=True)
        ]
        ref, fast = [
            await p.classify(e, ["cat", "dog", "car"], 3, Timings())
            for p, e in zip(predictors, entries, strict=True)
        ]
        assert {s.label: s.probability for s in ref} == pytest.approx(
            {s.label: s.probability for s in fast}, abs=0.03
        )
    for p in predictors:
        await p.stop()
    assert np.mean(text_ious) >= 0.95, text_ious
    assert np.mean(prompt_ious) >= 0.97, prompt_ious


def test_app_serves_refine_with_openvino_backend(optimized_bundle: Path) -> None:
    """`SAMCLIP_BACKEND=openvino` end to end: the real app loads, /info names the backend and its int8 variant,
    and /segment/refine answers with a mask at the original size."""
    import time

    from fastapi.testclient import TestClient

    from service.main import create_app
    from service.settings import Settings

    with TestClient(create_app(Settings(bundle=optimized_bundle, backend="openvino"))) as client:
        deadline = time.monotonic() + 120
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        info = client.get("/info").json()
        assert info["backend"]["name"] == "openvino", info["backend"]
        assert info["backend"]["details"]["graphs"]["encoder"]["variant"] == "int8-qdq-attn"
        r = client.post(
            "/segment/refine?text=dog", content=_png(160, 96, 3), headers={"Content-Type": "image/png"}
        )
        assert r.status_code == 200, r.text
        assert r.json()["mask"]["segmentation"]["size"] == [96, 160]
