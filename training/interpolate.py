"""Wise-FT weight interpolation: ``python -m training.interpolate A B --alpha 0.5 --out C``.

C = (1 - alpha) * A + alpha * B for every floating-point tensor (alpha = 0 gives A, 1 gives B); A and B must be
SAM-CLIP safetensors checkpoints of the same architecture. Non-float tensors are taken from B.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from model_export.checkpoint import CheckpointError, load_samclip, save_samclip


def interpolate_state(
    a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """Per-tensor (1 - alpha) * a + alpha * b; keys and shapes must match."""
    if set(a) != set(b):
        raise CheckpointError(f"checkpoints differ in keys: {sorted(set(a) ^ set(b))[:6]}")
    out = {}
    for k, va in a.items():
        vb = b[k]
        if va.shape != vb.shape:
            raise CheckpointError(f"{k}: shape {tuple(va.shape)} vs {tuple(vb.shape)}")
        if va.is_floating_point():
            out[k] = va.lerp(vb, alpha) if 0 < alpha < 1 else (va if alpha == 0 else vb).clone()
        else:
            out[k] = vb.clone()
    return out


def interpolate(a: str | Path, b: str | Path, alpha: float, out: str | Path) -> Path:
    """Write the Wise-FT interpolation of checkpoints `a` and `b` to `out`."""
    model_a, meta_a = load_samclip(a)
    model_b, meta_b = load_samclip(b, model_a.config)
    model_b.load_state_dict(interpolate_state(model_a.state_dict(), model_b.state_dict(), alpha))
    extra = {
        "wise_ft": {
            "alpha": alpha,
            "a": str(a),
            "a_sha256": meta_a["sha256"],
            "b": str(b),
            "b_sha256": meta_b["sha256"],
        }
    }
    return save_samclip(model_b, out, extra_metadata=extra)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("a", help="checkpoint at alpha = 0 (e.g. before fine-tuning)")
    p.add_argument("b", help="checkpoint at alpha = 1 (e.g. fine-tuned)")
    p.add_argument("--alpha", type=float, required=True)
    p.add_argument("--out", required=True, type=Path)
    args = p.parse_args(argv)
    if not 0.0 <= args.alpha <= 1.0:
        p.error("--alpha must be in [0, 1]")
    print(interpolate(args.a, args.b, args.alpha, args.out))


if __name__ == "__main__":
    main()
