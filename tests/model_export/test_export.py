"""ONNX export of the tiny model: checker, manifest, and ONNX Runtime vs PyTorch on every graph."""

from __future__ import annotations

import hashlib
import math
from datetime import datetime

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from model_export.config import load_config  # noqa: E402
from model_export.export_onnx import example_text_ids  # noqa: E402
from model_export.torch_parity import Prompt, decoder_feeds, torch_decode  # noqa: E402
from samclip_bundle.graphs import GRAPHS  # noqa: E402
from samclip_bundle.manifest import Manifest  # noqa: E402

TOL = 1e-4
CFG = load_config("tiny")
S, G, M = CFG.image_size, CFG.embed_grid, CFG.mask_input_size


@pytest.fixture(scope="module")
def sessions(tiny_bundle):
    manifest = Manifest.read(tiny_bundle)
    return {g: ort.InferenceSession(str(tiny_bundle / manifest.graphs[g].file)) for g in GRAPHS}


def run(session, **feeds):
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def maxerr(a, b) -> float:
    b = b.detach().numpy() if hasattr(b, "detach") else b
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max())


def test_every_graph_passes_onnx_checker(tiny_bundle):
    for graph in GRAPHS:
        onnx.checker.check_model(str(tiny_bundle / f"{graph}.onnx"), full_check=True)
    assert (tiny_bundle / "tokenizer.json").is_file()
    assert not list(tiny_bundle.glob("*.unsimplified.onnx"))


def test_manifest_describes_bundle(tiny_bundle, tiny_model):
    m = Manifest.read(tiny_bundle).to_dict()  # key by key, as in manifest.json
    assert m["format_version"] == 2 and m["opset"] == 17
    assert m["model"] == {"name": "tiny", "config": CFG.to_dict()}
    assert m["preprocess"]["image_size"] == S and m["preprocess"]["pixel_mean"] == list(CFG.pixel_mean)
    assert m["preprocess"]["resize"] == "longest_side" and m["preprocess"]["pad"] == "bottom_right"
    g = m["graphs"]
    assert g["encoder"]["inputs"] == [{"name": "image", "shape": ["batch", 3, S, S], "dtype": "float32"}]
    assert [o["shape"] for o in g["encoder"]["outputs"]] == [["batch", 64, G, G], ["batch", G, G, 96]]
    assert g["clip_head"]["inputs"][0]["shape"] == ["batch", "grid_h", "grid_w", 96]
    assert [o["name"] for o in g["clip_head"]["outputs"]] == ["image_embedding", "patch_embeddings"]
    assert g["text_encoder"]["inputs"] == [
        {"name": "input_ids", "shape": ["num_texts", 77], "dtype": "int64"}
    ]
    dec_in = {i["name"]: i["shape"] for i in g["sam_decoder"]["inputs"]}
    assert dec_in == {
        "image_embeddings": [1, 64, G, G], "point_coords": ["num_prompts", "num_points", 2],
        "point_labels": ["num_prompts", "num_points"], "mask_input": ["num_prompts", 1, M, M],
        "has_mask_input": ["num_prompts"],
    }  # fmt: skip
    dec_out = {o["name"]: o["shape"] for o in g["sam_decoder"]["outputs"]}
    assert dec_out == {"iou_predictions": ["num_prompts", 4], "low_res_masks": ["num_prompts", 4, M, M]}
    files = {e["file"]: e["sha256"] for e in g.values()} | {m["tokenizer"]["file"]: m["tokenizer"]["sha256"]}
    for name, sha in files.items():
        assert hashlib.sha256((tiny_bundle / name).read_bytes()).hexdigest() == sha
    expected_fp = hashlib.sha256("".join(files[k] for k in sorted(files)).encode()).hexdigest()
    assert m["fingerprint"] == expected_fp
    assert m["tokenizer"]["context_length"] == 77 and m["tokenizer"]["eot_token_id"] == 49407
    assert m["clip"]["logit_scale"] == pytest.approx(math.exp(tiny_model.logit_scale.item()))
    assert m["weights"]["random_init"] is True and m["weights"]["seed"] == 0
    assert "RANDOM WEIGHTS" in m["weights"]["warning"]
    assert {"torch", "onnx", "onnxruntime", "samclip_serve"} <= set(m["versions"])
    assert datetime.fromisoformat(m["created_at"]).tzinfo is not None


@pytest.mark.parametrize("batch", [1, 3])
def test_encoder_matches_torch_dynamic_batch(sessions, tiny_model, batch):
    x = torch.randn(batch, 3, S, S, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        emb, tokens = tiny_model.image_encoder(x)
    out = run(sessions["encoder"], image=x.numpy())
    assert maxerr(out["image_embeddings"], emb) <= TOL
    assert maxerr(out["patch_tokens"], tokens) <= TOL


@pytest.mark.parametrize("grid", [(G, G), (7, 7), (9, 12), (24, 24)])
def test_clip_head_accepts_other_grids(sessions, tiny_model, grid):
    tokens = torch.randn(2, *grid, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        img, dense = tiny_model.clip_head(tokens)
    out = run(sessions["clip_head"], patch_tokens=tokens.numpy())
    assert out["patch_embeddings"].shape == (2, *grid, 64)
    assert maxerr(out["image_embedding"], img) <= TOL
    assert maxerr(out["patch_embeddings"], dense) <= TOL
    np.testing.assert_allclose(np.linalg.norm(out["image_embedding"], axis=-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("num", [1, 5])
def test_text_encoder_matches_torch(sessions, tiny_model, num):
    ids = example_text_ids(num, 77, seed=num)
    with torch.no_grad():
        ref = tiny_model.text_encoder(ids)
    assert maxerr(run(sessions["text_encoder"], input_ids=ids.numpy())["text_embedding"], ref) <= TOL


def _prompts(rng: np.random.Generator, kind: str) -> list[Prompt]:
    def pts(n):
        return rng.uniform(0, S * 0.7, (n, 2)).astype(np.float32), rng.integers(0, 2, n).astype(np.float32)

    def box():
        x0, y0 = rng.uniform(0, S * 0.4, 2)
        return np.array([x0, y0, x0 + rng.uniform(10, 90), y0 + rng.uniform(10, 90)], np.float32)

    def mask():
        return rng.normal(0, 4, (1, M, M)).astype(np.float32)

    if kind == "one_point":
        return [Prompt(*pts(1))]
    if kind == "five_boxes":
        return [Prompt(box=box()) for _ in range(5)]
    # five prompts of 3 tokens each: points, point+box, with and without mask input
    return [Prompt(*pts(2)), Prompt(*pts(1), box=box()), Prompt(*pts(2), mask=mask()),
            Prompt(*pts(1), box=box(), mask=mask()), Prompt(*pts(2))]  # fmt: skip


@pytest.mark.parametrize("kind", ["one_point", "five_boxes", "mixed_five"])
def test_decoder_matches_torch_per_prompt(sessions, tiny_model, kind):
    """One ONNX call with K prompts == K separate SAM-API calls of the PyTorch model (all 4 mask tokens)."""
    rng = np.random.default_rng(7)
    emb = torch.randn(1, 64, G, G, generator=torch.Generator().manual_seed(1))
    prompts = _prompts(rng, kind)
    out = run(sessions["sam_decoder"], **decoder_feeds(emb.numpy(), prompts, M))
    refs = [torch_decode(tiny_model, emb, p) for p in prompts]
    ref_iou, ref_low = torch.cat([r[0] for r in refs]), torch.cat([r[1] for r in refs])
    assert out["low_res_masks"].shape == (len(prompts), 4, M, M)
    assert maxerr(out["iou_predictions"], ref_iou) <= TOL
    assert maxerr(out["low_res_masks"], ref_low) <= TOL
    assert set(out) == {"iou_predictions", "low_res_masks"}  # the S x S upscale is not in the graph


def test_decoder_ignores_padding_coords_and_unused_mask(sessions):
    """Label -1 points contribute no coordinates; has_mask_input=0 ignores mask_input even if non-finite."""
    emb = np.random.default_rng(0).normal(size=(1, 64, G, G)).astype(np.float32)
    feeds = decoder_feeds(emb, [Prompt(np.array([[50.0, 60.0]], np.float32), np.array([1.0], np.float32))], M)
    base = run(sessions["sam_decoder"], **feeds)
    moved = dict(feeds, point_coords=feeds["point_coords"].copy(), mask_input=np.full((1, 1, M, M), np.nan))
    moved["point_coords"][0, 1] = [200.0, 13.0]  # the padding point
    other = run(sessions["sam_decoder"], **{k: v.astype(np.float32) for k, v in moved.items()})
    np.testing.assert_array_equal(other["low_res_masks"], base["low_res_masks"])
    with_mask = dict(feeds, has_mask_input=np.ones(1, np.float32))
    assert not np.allclose(run(sessions["sam_decoder"], **with_mask)["low_res_masks"], base["low_res_masks"])


def test_neck_input_config_exports_neck_tokens(tmp_path):
    """clip_head.input = "neck": patch_tokens are the image embeddings channels-last, and the CLIP head graph
    takes them (width out_chans), in PyTorch and in the exported encoder + CLIP head graphs."""
    from model_export.build import build_model
    from model_export.config import SamClipConfig
    from model_export.export_onnx import export_bundle

    data = load_config("tiny").to_dict()
    data.update(name="tiny-neck")
    # tiny: embed_dim 96 != out_chans 64, so a head built or fed with the wrong width would not even run
    data["clip_head"].update(input="neck", num_heads=2)
    cfg = SamClipConfig.from_dict(data)
    model = build_model(cfg, seed=0).eval()
    x = torch.randn(1, 3, cfg.image_size, cfg.image_size)
    with torch.no_grad():
        emb, tokens = model.image_encoder(x)
        image, _ = model.clip_head(tokens)
    assert torch.equal(tokens, emb.permute(0, 2, 3, 1))
    export_bundle(model, cfg, tmp_path, {"random_init": True, "seed": 0, "sources": []}, progress=False)
    assert Manifest.read(tmp_path).clip_width == 64
    enc = ort.InferenceSession(str(tmp_path / "encoder.onnx"), providers=["CPUExecutionProvider"])
    head = ort.InferenceSession(str(tmp_path / "clip_head.onnx"), providers=["CPUExecutionProvider"])
    onnx_tokens = enc.run(["patch_tokens"], {"image": x.numpy()})[0]
    onnx_image = head.run(["image_embedding"], {"patch_tokens": onnx_tokens})[0]
    np.testing.assert_allclose(onnx_image, image.numpy(), atol=1e-4)
