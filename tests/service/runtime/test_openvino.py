"""OpenVINO backend and onnxruntime's int8 variant (old name onnxruntime-int8), tested against the plain
onnxruntime backend (fp32) on the random-init `tiny` bundle with the fast-CPU parity gates
(samclip_bundle/parity.py): SAM decoder masks mean IoU >= 0.97 on random prompts, CLIP image/text embeddings
cosine >= 0.99, text-segment masks IoU >= 0.95."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("openvino")

from samclip_bundle.parity import (  # noqa: E402
    generated_images,
    parity_report,
    random_prompts,
    random_text_ids,
)
from service.bundle import Bundle  # noqa: E402
from service.runtime.base import BackendError  # noqa: E402
from service.runtime.registry import available_backends, create_backend


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
    assert {"auto", "openvino", "onnxruntime", "onnxruntime-int8", "ort-cuda", "torch-cuda"} <= set(
        available_backends()
    )


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


def test_image_store_batches_no_more_than_the_encoder_requests(tiny_bundle: Path) -> None:
    """Under the LATENCY hint the encoder has one infer request: the store's batcher then runs each image at
    once (batch limit 1) instead of waiting `max_batch_wait_ms` for a batch it would run item by item."""
    from service.images.store import ImageStore
    from service.metrics import Metrics
    from service.settings import Settings

    settings = Settings(bundle=tiny_bundle, max_batch_size=4, warmup=False)
    bundle = Bundle.load(tiny_bundle)
    backend = create_backend("openvino", bundle, settings, Metrics())
    assert backend.encoder_batch_limit == 1 == backend.info.details["encoder_batch_limit"]
    assert ImageStore(bundle, backend, settings, Metrics()).batcher.max_batch_size == 1
    throughput = create_backend("openvino", bundle, _settings(openvino_hint="THROUGHPUT"))
    assert throughput.encoder_batch_limit == len(throughput.sessions["encoder"].requests) >= 1
    for b in (backend, throughput):
        b.close()


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
    with pytest.raises(BackendError, match="variant 'does-not-exist' is not in the bundle"):
        create_backend("openvino", bundle, _settings(variant="does-not-exist"))
    with pytest.raises(BackendError, match="optimize .* --target ort-int8"):
        create_backend("onnxruntime-int8", bundle, _settings())
    with pytest.raises(BackendError, match="SAMCLIP_DEVICE=cuda but the openvino backend runs on cpu"):
        create_backend("openvino", bundle, _settings(device="cuda"))


@pytest.mark.parametrize("name", ["onnxruntime-int8", "onnxruntime"])
def test_onnxruntime_int8_variant_parity(optimized_bundle: Path, reference, name: str) -> None:
    """The old name and plain `onnxruntime` with variant auto run the same int8 variant."""
    bundle = Bundle.load(optimized_bundle)
    fast = create_backend(name, bundle, _settings())
    assert fast.info.name == "onnxruntime" and fast.info.precision == "int8"
    assert fast.info.details["selection"]["requested"] == name
    assert fast.info.details["variant"] == "int8-dynamic"
    assert fast.info.details["graphs"]["encoder"] == "encoder.int8.onnx"
    assert fast.info.details["graphs"]["sam_decoder"] == "sam_decoder.onnx"
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


def _ready_client(bundle: Path, backend: str, **settings: object):
    import time

    from fastapi.testclient import TestClient

    from service.main import create_app
    from service.settings import Settings

    client = TestClient(create_app(Settings(bundle=bundle, backend=backend, **settings)))
    client.__enter__()
    deadline = time.monotonic() + 120
    while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    return client


def test_service_parity_through_the_app(optimized_bundle: Path, tiny_bundle: Path) -> None:
    """The real app with OpenVINO and its auto-selected int8 variant against the real app with plain onnxruntime
    fp32, over HTTP: text-segment masks IoU >= 0.95, prompt masks IoU >= 0.97, classify probabilities close."""
    from samclip_bundle.parity import mask_iou
    from service.render import decode_rle

    ref_app = _ready_client(tiny_bundle, "onnxruntime", variant="none")
    fast_app = _ready_client(optimized_bundle, "openvino")
    apps = (ref_app, fast_app)
    try:
        info = fast_app.get("/info").json()["backend"]["details"]
        assert info["graphs"]["encoder"]["variant"] == "int8-qdq-attn"
        text_ious, prompt_ious = [], []
        for seed, (w, h) in enumerate([(200, 150), (120, 240)]):
            image = {"content": _png(w, h, seed), "headers": {"Content-Type": "image/png"}}
            for text in ("a cat", "a dog", "tree"):
                ref, fast = [decode_rle(a.post(f"/segment?text={text}", **image).json()["masks"][0]["segmentation"])
                             for a in apps]  # fmt: skip
                text_ious.append(mask_iou(ref, fast))
            boxes = {"boxes": [[10, 10, w // 2, h // 2], [w // 3, h // 3, w - 5, h - 5]], "multimask": True}
            ids = [a.post("/embed", **image).json()["image_id"] for a in apps]
            ref, fast = [a.post("/segment/prompt", json={"image_id": i, **boxes}).json()["prompts"]
                         for a, i in zip(apps, ids, strict=True)]  # fmt: skip
            prompt_ious += [
                mask_iou(decode_rle(ma["segmentation"]), decode_rle(mb["segmentation"]))
                for ga, gb in zip(ref, fast, strict=True)
                for ma, mb in zip(ga["masks"], gb["masks"], strict=True)
            ]
            labels = {"labels": ["cat", "dog", "car"]}
            ref, fast = [{x["label"]: x["probability"] for x in a.post("/classify", params=labels, **image).json()["labels"]}
                         for a in apps]  # fmt: skip
            assert ref == pytest.approx(fast, abs=0.03)
    finally:
        for app in apps:
            app.__exit__(None, None, None)
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
