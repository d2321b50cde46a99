"""Build a SAM-CLIP model with random weights (deterministic for a seed)."""

from __future__ import annotations

import torch
from torch import nn

from .config import SamClipConfig, list_models, load_config
from .modeling.samclip import SamClip

__all__ = ["build_model", "list_models"]


def _randomize_positional_params(model: SamClip) -> None:
    """SAM zero-initialises its position tables; random weights should exercise them, so draw them."""
    for name, param in model.named_parameters():
        if name.endswith(("pos_embed", "rel_pos_h", "rel_pos_w")):
            nn.init.trunc_normal_(param, std=0.02)


def build_model(name_or_cfg: str | SamClipConfig, seed: int | None = None) -> SamClip:
    """SamClip with random weights in eval mode.

    ``name_or_cfg``: a bundled model name (see :func:`list_models`), a JSON path, or a SamClipConfig.
    With ``seed`` the weights are identical on every call and the global RNG state is left untouched.
    """
    cfg = load_config(name_or_cfg)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        model = SamClip(cfg)
        with torch.no_grad():
            _randomize_positional_params(model)
    return model.eval()
