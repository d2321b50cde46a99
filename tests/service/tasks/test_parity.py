"""Headline parity: the prompt-segment task (ONNX Runtime, numpy pipeline) vs segment_anything's SamPredictor
(torch) on the same tiny weights, on a non-square, EXIF-rotated JPEG: >= 99.9% of mask pixels agree; and a
mask prompt round trip (returned low-res logits fed back as mask_input) follows SamPredictor."""

from __future__ import annotations

import io
from functools import partial

import numpy as np
import pytest
from PIL import Image, ImageOps

torch = pytest.importorskip("torch")
sam_modeling = pytest.importorskip("segment_anything.modeling")
from segment_anything import SamPredictor  # noqa: E402

from service.images.decode import decode_image  # noqa: E402
from service.images.source import ImageSource  # noqa: E402
from service.tasks.prompt import Prompt, encode_mask_logits, segment_prompts  # noqa: E402
from service.timing import Timings  # noqa: E402

pytestmark = pytest.mark.anyio
MIN_AGREEMENT = 0.999


def reference_sam(tiny_model, cfg: dict) -> sam_modeling.Sam:
    """segment_anything.Sam with the tiny hyper-parameters and tiny_model's SAM weights (strict load)."""
    enc, dec, pe = cfg["encoder"], cfg["mask_decoder"], cfg["prompt_encoder"]
    size, grid = cfg["image_size"], cfg["image_size"] // enc["patch_size"]
    sam = sam_modeling.Sam(
        image_encoder=sam_modeling.ImageEncoderViT(
            img_size=size, patch_size=enc["patch_size"], embed_dim=enc["embed_dim"], depth=enc["depth"],
            num_heads=enc["num_heads"], mlp_ratio=enc["mlp_ratio"], out_chans=enc["out_chans"], qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=enc["use_rel_pos"],
            window_size=enc["window_size"], global_attn_indexes=tuple(enc["global_attn_indexes"]),
        ),
        prompt_encoder=sam_modeling.PromptEncoder(
            embed_dim=enc["out_chans"], image_embedding_size=(grid, grid), input_image_size=(size, size),
            mask_in_chans=pe["mask_in_chans"],
        ),
        mask_decoder=sam_modeling.MaskDecoder(
            num_multimask_outputs=dec["num_multimask_outputs"],
            transformer=sam_modeling.TwoWayTransformer(
                depth=dec["transformer_depth"], embedding_dim=enc["out_chans"], mlp_dim=dec["transformer_mlp_dim"],
                num_heads=dec["transformer_num_heads"],
            ),
            transformer_dim=enc["out_chans"], iou_head_depth=dec["iou_head_depth"],
            iou_head_hidden_dim=dec["iou_head_hidden_dim"],
        ),
        pixel_mean=cfg["pixel_mean"], pixel_std=cfg["pixel_std"],
    )  # fmt: skip
    state = {
        k: v
        for k, v in tiny_model.state_dict().items()
        if k.split(".")[0] in ("image_encoder", "prompt_encoder", "mask_decoder")
    }
    sam.load_state_dict(state, strict=True)
    return sam.eval()


def rotated_jpeg() -> bytes:
    """A 320x200 scene stored sideways with EXIF orientation 6 (viewers show it 200 wide x 320 tall)."""
    rng = np.random.default_rng(0)
    img = np.full((200, 320, 3), 40, np.uint8)
    img[30:120, 40:150] = (220, 60, 50)
    yy, xx = np.mgrid[:200, :320]
    img[(yy - 130) ** 2 + (xx - 230) ** 2 < 45**2] = (50, 200, 90)
    img = np.clip(img.astype(int) + rng.integers(-12, 12, img.shape), 0, 255).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=92, exif=exif)
    return buf.getvalue()


PROMPTS = [
    Prompt(points=((60, 200, 1),)),
    Prompt(points=((60, 200, 1), (150, 60, 0), (20, 300, 1))),
    Prompt(box=(10.0, 150.0, 120.0, 310.0)),
    Prompt(points=((100, 100, 1),), box=(40.0, 40.0, 180.0, 200.0)),
]


def _reference(predictor: SamPredictor, spec: Prompt, multimask: bool, mask_input=None):
    coords = np.array([[x, y] for x, y, _ in spec.points]) if spec.points else None
    labels = np.array([label for _, _, label in spec.points]) if spec.points else None
    box = np.array(spec.box) if spec.box is not None else None
    return predictor.predict(coords, labels, box, mask_input=mask_input, multimask_output=multimask)


async def _engine_and_reference(make_engine, tiny_bundle, tiny_model, settings):
    data = rotated_jpeg()
    image = decode_image(data, settings)
    assert (image.width, image.height) == (200, 320)  # EXIF rotation applied: non-square, portrait
    expected_rgb = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    np.testing.assert_array_equal(image.rgb, expected_rgb)
    engine = await make_engine(cache_dtype="float32")  # parity with fp32 torch: no float16 storage
    ref = SamPredictor(reference_sam(tiny_model, engine.bundle.manifest.model.config))
    with torch.no_grad():
        ref.set_image(image.rgb)
    entry = await engine.images.get(await ImageSource.upload(data), Timings(), 1e18)
    return engine, ref, entry


@pytest.mark.parametrize("multimask", [False, True])
async def test_prompt_masks_match_sam_predictor(
    make_engine, tiny_bundle, tiny_model, settings, multimask
) -> None:
    engine, ref, entry = await _engine_and_reference(make_engine, tiny_bundle, tiny_model, settings)
    try:
        groups = await engine.run(segment_prompts, engine.heads, entry, PROMPTS, multimask, Timings())
    finally:
        await engine.stop()

    nontrivial = 0
    for spec, results in zip(PROMPTS, groups, strict=True):
        with torch.no_grad():
            ref_masks, ref_iou, ref_low = _reference(ref, spec, multimask)
        assert len(results) == len(ref_masks) == (3 if multimask else 1)
        for res, mask, iou, low in zip(results, ref_masks, ref_iou, ref_low, strict=True):
            assert res.mask.shape == mask.shape == (320, 200)
            agreement = float(np.mean(res.mask == mask))
            assert agreement >= MIN_AGREEMENT, f"{spec}: only {agreement:.5f} of pixels agree"
            np.testing.assert_allclose(res.low_res_logits, low, atol=2e-3 * max(1.0, np.abs(low).max()))
            assert res.iou_prediction == pytest.approx(float(iou), abs=2e-3)
            nontrivial += 0.01 < mask.mean() < 0.99
    assert nontrivial >= 2, "random weights gave only empty/full masks: the comparison would be vacuous"


async def test_mask_prompt_round_trip_follows_sam_predictor(
    make_engine, tiny_bundle, tiny_model, settings
) -> None:
    """SamPredictor's documented refinement loop: multimask -> best low-res logits -> mask_input of the next call.
    The service does the same through its wire format (return_logits -> mask_input)."""
    engine, ref, entry = await _engine_and_reference(make_engine, tiny_bundle, tiny_model, settings)
    click = Prompt(points=((60, 200, 1),))
    try:
        (first,) = await engine.run(segment_prompts, engine.heads, entry, [click], True, Timings())
        best = max(range(3), key=lambda i: first[i].iou_prediction)
        wire = encode_mask_logits(first[best].low_res_logits)
        again = Prompt(points=((60, 200, 1), (150, 60, 0)), mask_input=wire)
        ((second,),) = await engine.run(segment_prompts, engine.heads, entry, [again], False, Timings())
    finally:
        await engine.stop()
    with torch.no_grad():
        _, ref_iou, ref_low = _reference(ref, click, True)
        ref_best = int(np.argmax(ref_iou))
        ref_masks, ref_iou2, _ = _reference(ref, again, False, mask_input=ref_low[ref_best][None])
    assert best == ref_best
    assert float(np.mean(second.mask == ref_masks[0])) >= MIN_AGREEMENT
    assert second.iou_prediction == pytest.approx(float(ref_iou2[0]), abs=2e-3)
