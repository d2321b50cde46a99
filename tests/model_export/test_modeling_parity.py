"""Parity of the PyTorch SAM-CLIP parts with the reference libraries on identical random weights.

SAM parts vs ``segment_anything`` built with the same hyper-parameters; text tower vs ``open_clip``.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch

pytest.importorskip("segment_anything")
open_clip = pytest.importorskip("open_clip")

from segment_anything import modeling as sam_modeling  # noqa: E402
from segment_anything import sam_model_registry  # noqa: E402

from model_export.build import build_model  # noqa: E402
from model_export.checkpoint import load_open_clip_checkpoint, load_sam_checkpoint  # noqa: E402
from model_export.config import SamClipConfig, load_config  # noqa: E402
from model_export.modeling.samclip import SamClip  # noqa: E402

TOL = 1e-4
SAM_PREFIXES = ("image_encoder.", "prompt_encoder.", "mask_decoder.")


def reference_sam(cfg: SamClipConfig, image_size: int | None = None) -> torch.nn.Module:
    """segment_anything's Sam with ``cfg``'s hyper-parameters (what build_sam does for vit_b)."""
    e, d = cfg.encoder, cfg.mask_decoder
    size = image_size or cfg.image_size
    grid = size // e.patch_size
    encoder = sam_modeling.ImageEncoderViT(
        img_size=size,
        patch_size=e.patch_size,
        embed_dim=e.embed_dim,
        depth=e.depth,
        num_heads=e.num_heads,
        mlp_ratio=e.mlp_ratio,
        out_chans=e.out_chans,
        qkv_bias=True,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        use_rel_pos=e.use_rel_pos,
        window_size=e.window_size,
        global_attn_indexes=e.global_attn_indexes,
    )
    prompt = sam_modeling.PromptEncoder(
        embed_dim=e.out_chans,
        image_embedding_size=(grid, grid),
        input_image_size=(size, size),
        mask_in_chans=cfg.prompt_encoder.mask_in_chans,
    )
    decoder = sam_modeling.MaskDecoder(
        num_multimask_outputs=d.num_multimask_outputs,
        transformer=sam_modeling.TwoWayTransformer(
            depth=d.transformer_depth,
            embedding_dim=e.out_chans,
            mlp_dim=d.transformer_mlp_dim,
            num_heads=d.transformer_num_heads,
        ),
        transformer_dim=e.out_chans,
        iou_head_depth=d.iou_head_depth,
        iou_head_hidden_dim=d.iou_head_hidden_dim,
    )
    return sam_modeling.Sam(image_encoder=encoder, prompt_encoder=prompt, mask_decoder=decoder).eval()


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max abs difference of two same-shaped tensors (0 for empty ones)."""
    assert a.shape == b.shape
    return (a - b).abs().max().item() if a.numel() else 0.0


def sam_part(model: SamClip) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if k.startswith(SAM_PREFIXES)}


@pytest.fixture(scope="module")
def tiny_pair() -> tuple[SamClip, torch.nn.Module]:
    """Our tiny model with every norm/bias perturbed, and the reference Sam holding the same weights."""
    model = build_model("tiny", seed=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or ".neck.1." in name or ".neck.3." in name:
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
    ref = reference_sam(model.config)
    ref.load_state_dict(sam_part(model), strict=True)
    return model, ref


def test_state_dict_keys_match_segment_anything(tiny_pair):
    model, ref = tiny_pair
    ours = sam_part(model)
    theirs = ref.state_dict()
    assert set(ours) == set(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)
    top = {k.split(".")[0] for k in model.state_dict()}
    assert top == {
        "image_encoder",
        "prompt_encoder",
        "mask_decoder",
        "clip_head",
        "text_encoder",
        "logit_scale",
    }


@torch.no_grad()
@pytest.mark.parametrize("chunk_pairs", [None, 1, 13000])
def test_image_embeddings_and_patch_tokens_match(tiny_pair, chunk_pairs, monkeypatch):
    """Also with the relative-position attention split into chunks of query rows, as vit_b's 64 x 64 global
    blocks are at 1024 px: 1 row per chunk (windows too), 3 rows per chunk of the 16-row global grid (the last
    chunk shorter)."""
    from model_export.modeling import image_encoder

    if chunk_pairs is not None:
        monkeypatch.setattr(image_encoder, "BIAS_CHUNK_PAIRS", chunk_pairs)
    model, ref = tiny_pair
    x = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(2))
    captured = {}
    hook = ref.image_encoder.blocks[-1].register_forward_hook(lambda m, i, o: captured.update(tokens=o))
    try:
        expected = ref.image_encoder(x)
    finally:
        hook.remove()
    emb, tokens = model.image_encoder(x)
    assert emb.shape == (2, 64, 16, 16) and tokens.shape == (2, 16, 16, 96)
    assert maxdiff(emb, expected) <= TOL
    assert (tokens - captured["tokens"]).abs().max().item() <= TOL
    assert expected.abs().max().item() > 0.1  # not a degenerate all-zero comparison


@torch.no_grad()
def test_other_input_size_interpolates_positions(tiny_pair):
    """224px input (grid 14; windows padded 14->16; global rel-pos tables resized 31->27 by SAM itself).

    SAM has no abs-pos resizing, so the reference gets our bicubically resized table as its pos_embed.
    """
    model, _ = tiny_pair
    ref = reference_sam(model.config)
    ref.load_state_dict(sam_part(model), strict=True)
    resized = model.image_encoder.abs_pos(14, 14)
    assert resized.shape == (1, 14, 14, 96)
    ref.image_encoder.pos_embed = torch.nn.Parameter(resized.clone())
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    emb, tokens = model.image_encoder(x)
    assert emb.shape == (1, 64, 14, 14) and tokens.shape == (1, 14, 14, 96)
    assert (emb - ref.image_encoder(x)).abs().max().item() <= TOL


def _prompts(kind: str, gen: torch.Generator):
    """(points, boxes, masks) keyword arguments for one prompt kind, in the 256px input frame."""
    pts = torch.rand(3, 2, 2, generator=gen) * 256
    labels = torch.tensor([[1, 0], [1, 1], [0, 1]])
    boxes = torch.tensor([[10.0, 20.0, 120.0, 200.0], [0.0, 0.0, 255.0, 255.0], [60.0, 70.0, 90.0, 75.0]])
    masks = torch.randn(3, 1, 64, 64, generator=gen) * 5
    return {
        "points": {"points": (pts, labels), "boxes": None, "masks": None},
        "one_box": {"points": None, "boxes": boxes[:1], "masks": None},
        "several_boxes": {"points": None, "boxes": boxes, "masks": None},
        "points_and_boxes": {"points": (pts, labels), "boxes": boxes, "masks": None},
        "points_and_mask": {"points": (pts, labels), "boxes": None, "masks": masks},
        "mask_only": {"points": None, "boxes": None, "masks": masks[:1]},
    }[kind]


@pytest.mark.parametrize(
    "kind", ["points", "one_box", "several_boxes", "points_and_boxes", "points_and_mask", "mask_only"]
)
@pytest.mark.parametrize("multimask", [True, False])
@torch.no_grad()
def test_decoder_matches_segment_anything(tiny_pair, kind, multimask):
    model, ref = tiny_pair
    gen = torch.Generator().manual_seed(4)
    emb = torch.randn(1, 64, 16, 16, generator=gen)
    prompts = _prompts(kind, gen)
    sparse_ref, dense_ref = ref.prompt_encoder(**prompts)
    masks_ref, iou_ref = ref.mask_decoder(
        image_embeddings=emb,
        image_pe=ref.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse_ref,
        dense_prompt_embeddings=dense_ref,
        multimask_output=multimask,
    )
    sparse, dense = model.prompt_encoder(**prompts)
    assert maxdiff(sparse, sparse_ref) <= TOL
    assert maxdiff(dense, dense_ref) <= TOL
    masks, iou = model.segment(emb, **prompts, multimask_output=multimask)
    assert masks.shape == masks_ref.shape and iou.shape == iou_ref.shape
    assert masks.shape[1] == (3 if multimask else 1)
    assert maxdiff(masks, masks_ref) <= TOL
    assert maxdiff(iou, iou_ref) <= TOL


@torch.no_grad()
def test_boxes_as_labelled_points_and_mask_flag_match_sam_paths(tiny_pair):
    """The bundle's decoder inputs (corners labelled 2/3, has_mask_input flag) equal SAM's box/mask paths."""
    model, _ = tiny_pair
    pe = model.prompt_encoder
    gen = torch.Generator().manual_seed(5)
    boxes = torch.rand(4, 4, generator=gen) * 256
    corners = boxes.reshape(4, 2, 2)
    labels = torch.tensor([[2.0, 3.0]]).expand(4, 2)
    sparse_box, _ = pe(boxes=boxes)
    assert torch.allclose(pe.embed_points(corners, labels), sparse_box, atol=1e-6)
    masks = torch.randn(4, 1, 64, 64, generator=gen)
    flag = torch.tensor([1.0, 0.0, 1.0, 0.0])
    dense = pe.dense_embeddings(masks, flag)
    _, with_mask = pe(boxes=boxes, masks=masks)
    _, without = pe(boxes=boxes)
    assert torch.allclose(dense[0::2], with_mask[0::2], atol=1e-6)
    assert torch.allclose(dense[1::2], without[1::2], atol=1e-6)


def tiny_open_clip(cfg: SamClipConfig) -> torch.nn.Module:
    """open_clip CLIP with ``cfg.text`` as text tower and a minimal vision tower."""
    t = cfg.text
    text_cfg = open_clip.CLIPTextCfg(
        context_length=t.context_length,
        vocab_size=t.vocab_size,
        width=t.width,
        heads=t.heads,
        layers=t.layers,
        mlp_ratio=t.mlp_ratio,
    )
    vision_cfg = open_clip.CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=8, image_size=32)
    torch.manual_seed(6)
    return open_clip.CLIP(embed_dim=t.embed_dim, vision_cfg=vision_cfg, text_cfg=text_cfg).eval()


TEXTS = ["a photo of a cat", "", "a diagram", "Two DOGS playing in the snow, 2019!", "x " * 90]


@torch.no_grad()
def test_text_tower_matches_open_clip(tmp_path):
    model = build_model("tiny", seed=0)
    ref = tiny_open_clip(model.config)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
        ref.logit_scale.fill_(3.3)
    path = tmp_path / "open_clip.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, path)
    load_open_clip_checkpoint(model, path)
    ids = open_clip.tokenize(TEXTS)
    expected = ref.encode_text(ids, normalize=True)
    got = model.text_encoder(ids)
    assert got.shape == (len(TEXTS), 64)
    assert maxdiff(got, expected) <= TOL
    assert torch.allclose(got.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-5)
    assert maxdiff(expected[0], expected[2]) > 1e-3  # different texts, different embeddings
    assert model.logit_scale.item() == pytest.approx(3.3)


@torch.no_grad()
def test_clip_head_any_grid_and_normalised():
    model = build_model("tiny", seed=0)
    for h, w in [(16, 16), (8, 8), (28, 28), (12, 20)]:
        tokens = torch.randn(2, h, w, 96)
        image, dense = model.clip_head(tokens)
        assert image.shape == (2, 64) and dense.shape == (2, h, w, 64)
        assert torch.allclose(image.norm(dim=-1), torch.ones(2), atol=1e-5)
        assert torch.allclose(dense.norm(dim=-1), torch.ones(2, h, w), atol=1e-5)
    # image embedding = normalised projection of the max-pooled, ln_post-ed tokens
    tokens = torch.randn(1, 16, 16, 96)
    head = model.clip_head
    x = tokens.reshape(1, 256, 96) + head.pos_embed(16, 16)
    x = head.ln_post(head.transformer(x))
    expected = torch.nn.functional.normalize(head.proj(x.max(dim=1).values), dim=-1)
    assert torch.allclose(head(tokens)[0], expected, atol=1e-6)
    # resizing the stored grid to itself is the identity
    pos = head.positional_embedding
    assert torch.allclose(head.pos_embed(8, 8), pos.flatten(2).transpose(1, 2), atol=1e-6)


def test_build_model_is_deterministic_and_eval():
    a, b, c = build_model("tiny", seed=3), build_model("tiny", seed=3), build_model("tiny", seed=4)
    assert not a.training
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["image_encoder.pos_embed"], sc["image_encoder.pos_embed"])
    assert a.logit_scale.item() == pytest.approx(torch.log(torch.tensor(1 / 0.07)).item())


@pytest.mark.slow
@torch.no_grad()
def test_vit_b_official_layout_parity(tmp_path):
    """Full size: SAM vit_b state dict -> load_sam_checkpoint -> 1024px embeddings; ViT-L-14 text tower."""
    ref = sam_model_registry["vit_b"](checkpoint=None).eval()
    gen = torch.Generator().manual_seed(7)
    for name, p in ref.named_parameters():
        if name.endswith(("pos_embed", "rel_pos_h", "rel_pos_w")):  # zero-initialised in SAM
            p.copy_(0.02 * torch.randn(p.shape, generator=gen))
    sam_path = tmp_path / "sam_vit_b.pth"
    torch.save(ref.state_dict(), sam_path)
    model = build_model("vit_b", seed=0)
    load_sam_checkpoint(model, sam_path)
    x = torch.randn(1, 3, 1024, 1024, generator=gen)
    expected = ref.image_encoder(x)
    del ref
    emb, tokens = model.image_encoder(x)
    assert emb.shape == (1, 256, 64, 64) and tokens.shape == (1, 64, 64, 768)
    err = maxdiff(emb, expected)
    print(f"vit_b 1024px image embeddings max abs err {err:.3g}")
    assert err <= TOL

    clip = open_clip.create_model("ViT-L-14", pretrained=None).eval()
    keep = {k: v for k, v in clip.state_dict().items() if not k.startswith("visual.transformer.")}
    clip_path = tmp_path / "vit_l_14.pt"
    torch.save(keep, clip_path)
    load_open_clip_checkpoint(model, clip_path)
    ids = open_clip.tokenize(TEXTS)
    expected_text = clip.encode_text(ids, normalize=True)
    assert maxdiff(expected_text[0], expected_text[2]) > 1e-3
    diff = maxdiff(model.text_encoder(ids), expected_text)
    print(f"ViT-L-14 text embeddings max abs err {diff:.3g}")
    assert diff <= TOL
    assert load_config("vit_b").text.embed_dim == 768
