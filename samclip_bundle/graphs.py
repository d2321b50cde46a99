"""The four bundle graphs and their input/output names (model_export/BUNDLE.md), defined once.

Shapes (S = image size, h = w = S / patch, C = encoder out_chans, W = encoder width, D = CLIP embed dim):
  encoder       image (B,3,S,S) f32                 -> image_embeddings (B,C,h,w), patch_tokens (B,h,w,W)
  clip_head     patch_tokens (B,h,w,W) f32          -> image_embedding (B,D), patch_embeddings (B,h,w,D)
  text_encoder  input_ids (N,77) int64              -> text_embedding (N,D)
  sam_decoder   image_embeddings (1,C,h,w), point_coords (K,N,2), point_labels (K,N), mask_input (K,1,4h,4w),
                has_mask_input (K,)  all f32        -> iou_predictions (K,4), low_res_masks (K,4,4h,4w)
"""

from __future__ import annotations

GRAPHS: tuple[str, ...] = ("encoder", "clip_head", "text_encoder", "sam_decoder")
GRAPH_FILES: dict[str, str] = {g: f"{g}.onnx" for g in GRAPHS}
GRAPH_INPUTS: dict[str, tuple[str, ...]] = {
    "encoder": ("image",),
    "clip_head": ("patch_tokens",),
    "text_encoder": ("input_ids",),
    "sam_decoder": ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input"),
}
GRAPH_OUTPUTS: dict[str, tuple[str, ...]] = {
    "encoder": ("image_embeddings", "patch_tokens"),
    "clip_head": ("image_embedding", "patch_embeddings"),
    "text_encoder": ("text_embedding",),
    "sam_decoder": ("iou_predictions", "low_res_masks"),
}
# Every input is float32 except the text encoder's token ids.
INT64_INPUTS = frozenset({"input_ids"})
# Format 1 decoders also had `masks` (K,4,S,S): low_res_masks upscaled, removed by `model_export upgrade`.
LEGACY_DECODER_OUTPUT = "masks"
TOKENIZER_FILE = "tokenizer.json"


def input_dtype(name: str) -> str:
    """numpy dtype name of a graph input: "int64" for token ids, else "float32"."""
    return "int64" if name in INT64_INPUTS else "float32"


def check_graph(name: str) -> str:
    """`name` when it is one of GRAPHS, else ValueError listing them."""
    if name not in GRAPHS:
        raise ValueError(f"unknown graph {name!r}; known: {', '.join(GRAPHS)}")
    return name
