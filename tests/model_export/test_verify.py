"""verify_bundle, the runner registry, and the bundle vs segment_anything's SamPredictor end to end."""

from __future__ import annotations

import json
import shutil
from functools import partial

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
sa = pytest.importorskip("segment_anything")

from segment_anything import SamPredictor  # noqa: E402
from segment_anything import modeling as sam_modeling  # noqa: E402

from model_export.build import build_model  # noqa: E402
from model_export.cli import main  # noqa: E402
from model_export.config import load_config  # noqa: E402
from model_export.export_onnx import export_graph, graph_specs, stamp_output_shapes  # noqa: E402
from model_export.torch_parity import (  # noqa: E402
    Prompt,
    decoder_feeds,
    masks_at_original,
    preprocess,
    random_image,
    upscale,
)
from model_export.verify import RUNNERS, OrtRunner, VerificationError, register_runner, verify_bundle  # noqa: E402
from samclip_bundle.hashing import sha256_file  # noqa: E402
from samclip_bundle.manifest import Manifest  # noqa: E402

CFG = load_config("tiny")
S, M = CFG.image_size, CFG.mask_input_size


def test_verify_passes_on_exported_bundle(tiny_bundle):
    report = verify_bundle(tiny_bundle, samples=2)
    assert report["ok"] is True, json.dumps(report, indent=2)
    assert report["integrity"] == {"ok": True, "problems": []}
    assert {k.split(".")[0] for k in report["outputs"]} == {
        "encoder",
        "clip_head",
        "text_encoder",
        "sam_decoder",
    }
    assert all(o["max_abs_err"] <= 1e-4 for o in report["outputs"].values())
    assert report["masks"]["count"] > 0 and report["masks"]["min_pixel_agreement"] >= 0.999
    assert all(h != w for h, w in report["image_sizes"])  # non-square images


def test_verify_fails_on_graph_with_other_weights(tiny_bundle, tmp_path):
    """A decoder exported from different weights (manifest hashes updated) is caught by parity, not hashes."""
    bundle = shutil.copytree(tiny_bundle, tmp_path / "b")
    spec = next(s for s in graph_specs(build_model("tiny", seed=1), CFG) if s.name == "sam_decoder")
    export_graph(spec, bundle / spec.file, opset=17)
    stamp_output_shapes(bundle / spec.file, spec.output_shapes)
    manifest = Manifest.read(bundle)
    manifest.graphs["sam_decoder"].sha256 = sha256_file(bundle / spec.file)
    manifest.refresh_fingerprint()
    manifest.write(bundle)
    report = verify_bundle(bundle, samples=1)
    assert report["integrity"]["ok"] is True
    assert report["ok"] is False
    assert report["outputs"]["sam_decoder.low_res_masks"]["ok"] is False
    assert report["outputs"]["encoder.image_embeddings"]["ok"] is True


def test_verify_cli_exits_nonzero_on_tampered_artifact(tiny_bundle, tmp_path, capsys):
    bundle = shutil.copytree(tiny_bundle, tmp_path / "b")
    with open(bundle / "tokenizer.json", "a") as fh:
        fh.write(" ")
    assert main(["verify", str(bundle), "--samples", "1"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False
    assert any(p.startswith("tokenizer.json: sha256") for p in report["integrity"]["problems"])


def test_registered_runner_is_used_and_judged(tiny_bundle):
    class NoisyEncoder(OrtRunner):
        def run(self, graph, feeds):
            out = super().run(graph, feeds)
            if graph == "encoder":
                out["patch_tokens"] = out["patch_tokens"] + 1e-2
            return out

    register_runner("noisy-test", NoisyEncoder)
    try:
        report = verify_bundle(tiny_bundle, samples=1, backend="noisy-test")
    finally:
        RUNNERS.pop("noisy-test")
    assert report["backend"] == "noisy-test" and report["ok"] is False
    assert report["outputs"]["encoder.patch_tokens"]["ok"] is False
    assert report["outputs"]["encoder.image_embeddings"]["ok"] is True
    with pytest.raises(VerificationError, match="unknown backend"):
        verify_bundle(tiny_bundle, backend="no-such-backend")


# ------------------------------------------------------------------ vs segment_anything's SamPredictor


def reference_sam(model) -> torch.nn.Module:
    """segment_anything Sam with the tiny hyper-parameters, loaded strictly with our SAM weights."""
    e, d, c = CFG.encoder, CFG.mask_decoder, CFG.encoder.out_chans
    sam = sam_modeling.Sam(
        image_encoder=sam_modeling.ImageEncoderViT(
            img_size=S, patch_size=e.patch_size, embed_dim=e.embed_dim, depth=e.depth, num_heads=e.num_heads,
            mlp_ratio=e.mlp_ratio, out_chans=c, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=e.use_rel_pos, window_size=e.window_size, global_attn_indexes=e.global_attn_indexes,
        ),
        prompt_encoder=sam_modeling.PromptEncoder(
            embed_dim=c, image_embedding_size=(CFG.embed_grid,) * 2, input_image_size=(S, S),
            mask_in_chans=CFG.prompt_encoder.mask_in_chans,
        ),
        mask_decoder=sam_modeling.MaskDecoder(
            num_multimask_outputs=d.num_multimask_outputs, transformer_dim=c, iou_head_depth=d.iou_head_depth,
            iou_head_hidden_dim=d.iou_head_hidden_dim,
            transformer=sam_modeling.TwoWayTransformer(
                depth=d.transformer_depth, embedding_dim=c, mlp_dim=d.transformer_mlp_dim,
                num_heads=d.transformer_num_heads,
            ),
        ),
        pixel_mean=list(CFG.pixel_mean), pixel_std=list(CFG.pixel_std),
    )  # fmt: skip
    prefixes = ("image_encoder.", "prompt_encoder.", "mask_decoder.")
    sam.load_state_dict({k: v for k, v in model.state_dict().items() if k.startswith(prefixes)}, strict=True)
    return sam.eval()


@pytest.fixture(scope="module")
def bundle_runner(tiny_bundle):
    return OrtRunner(tiny_bundle, Manifest.read(tiny_bundle))


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape and a.dtype == b.dtype == bool
    return float((a == b).mean())


@pytest.mark.parametrize("shape", [(301, 467), (410, 230)])
def test_masks_match_sam_predictor_on_non_square_image(tiny_bundle, tiny_model, bundle_runner, shape):
    """Bundle + BUNDLE.md pre/post-processing vs SamPredictor: embeddings <= 1e-4, masks >= 99.9% equal."""
    rng = np.random.default_rng(shape[0])
    image = random_image(rng, *shape)
    predictor = SamPredictor(reference_sam(tiny_model))
    predictor.set_image(image)
    x, input_size = preprocess(image, CFG)
    assert input_size == predictor.input_size
    emb = bundle_runner.encode(x.numpy())["image_embeddings"]
    assert np.abs(emb - predictor.features.numpy()).max() <= 1e-4

    h, w = shape
    scale = np.array([input_size[1] / w, input_size[0] / h], np.float32)  # original -> input frame (x, y)
    points = rng.uniform(0, 1, (2, 2)) * [w - 1, h - 1]
    labels = np.array([1, 0])
    boxes = np.array([[0.1 * w, 0.2 * h, 0.6 * w, 0.9 * h], [0.5 * w, 0.1 * h, 0.95 * w, 0.5 * h],
                      [0.3 * w, 0.3 * h, 0.7 * w, 0.7 * h]])  # fmt: skip

    def bundle_masks(prompts: list[Prompt]) -> np.ndarray:
        out = bundle_runner.decode(**decoder_feeds(emb, prompts, M))
        return masks_at_original(upscale(torch.as_tensor(out["low_res_masks"]), S), input_size, shape)

    checks = []
    ref, _, low_ref = predictor.predict(points, labels, multimask_output=True)
    ours = bundle_masks([Prompt((points * scale).astype(np.float32), labels.astype(np.float32))])
    checks.append((ours[0, 1:], ref))
    ref_single, _, _ = predictor.predict(points, labels, multimask_output=False)
    checks.append((ours[0, :1], ref_single))
    ref_mask, _, _ = predictor.predict(points[:1], labels[:1], mask_input=low_ref[:1], multimask_output=True)
    ours_mask = bundle_masks([Prompt((points[:1] * scale).astype(np.float32), labels[:1].astype(np.float32),
                                     mask=low_ref[:1].astype(np.float32))])  # fmt: skip
    checks.append((ours_mask[0, 1:], ref_mask))
    ref_box, _, _ = predictor.predict(box=boxes[0], multimask_output=False)
    in_boxes = (boxes.reshape(-1, 2, 2) * scale).reshape(-1, 4).astype(np.float32)
    ours_boxes = bundle_masks([Prompt(box=b) for b in in_boxes])  # several boxes in one decoder call
    checks.append((ours_boxes[0, :1], ref_box))
    batch = predictor.transform.apply_boxes_torch(torch.as_tensor(boxes, dtype=torch.float32), shape)
    ref_boxes, _, _ = predictor.predict_torch(None, None, boxes=batch, multimask_output=True)
    checks.append((ours_boxes[:, 1:], ref_boxes.numpy()))

    for ours_m, ref_m in checks:
        assert _agreement(ours_m, ref_m) >= 0.999
    positive = np.concatenate([r.reshape(-1) for _, r in checks]).mean()
    assert 0.01 < positive < 0.99, "degenerate masks would make the comparison meaningless"


def test_serving_backend_is_verified_through_the_service(tiny_bundle, capsys):
    """`verify --backend openvino` runs `python -m service.verify` in a subprocess (model_export never imports
    service) and reports its gates; an unavailable backend fails with its reason and exit status 1."""
    pytest.importorskip("openvino")
    assert main(["verify", str(tiny_bundle), "--backend", "openvino", "--samples", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["backend"] == "openvino" and report["device"] == "cpu"
    assert report["gates"]["text_segment_iou"] == 0.95 and report["decoder_mask_iou"] >= 0.97
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert main(["verify", str(tiny_bundle), "--backend", "tensorrt"]) == 1
        report = json.loads(capsys.readouterr().out)
        assert report["ok"] is False and "TensorRT is not installed" in report["error"]
