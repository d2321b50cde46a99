"""PyTorch backend (`SAMCLIP_BACKEND=torch-cuda`): the SAM-CLIP nn.Modules on a CUDA GPU, bf16/fp16 autocast.

The one GPU path that needs neither TensorRT nor onnxruntime-gpu: torch with CUDA is enough. It is the only
backend that imports torch and `model_export` (the modules), and it does so only when chosen.

Weights, first that applies:
  1. `BUNDLE/weights.safetensors` (or `manifest["weights"]["bundle_file"]`): a SAM-CLIP checkpoint written by
     `model_export.checkpoint.save_samclip`, checked against `manifest["weights"]["bundle_sha256"]` if recorded;
  2. `model_export.sources.model_from_manifest(manifest)` when available (recorded checkpoint files);
  3. a random-init bundle: `build_model(config, seed)` reproduces the exported weights exactly (same seed).
Otherwise BackendError: re-export with the weights in the bundle.

The graphs run through the same export wrappers as the ONNX files (model_export.onnx_wrappers), so outputs
follow BUNDLE.md exactly: the decoder returns all 4 mask tokens for K prompts at once. Attention is
`F.scaled_dot_product_attention` in the modules (flash / memory-efficient kernels on CUDA).

Settings read (all optional): `torch_device` ("cuda" default, "cuda:1", or "cpu" for tests/CI),
`precision` ("auto" = bf16 where the GPU supports it else fp16, fp32 on CPU; or "bf16", "fp16", "fp32"),
`cuda_device` (index used when torch_device is plain "cuda"). Under autocast, matmuls/convs of the encoder,
CLIP head and text tower run in 16-bit while LayerNorm, softmax and reductions stay fp32 (torch's autocast op
lists). The SAM decoder always runs in fp32: it is a tiny share of the FLOPs, and its Fourier features of
point coordinates (sin/cos of 2*pi*coords@G) lose most of their precision in 16-bit matmuls.
Outputs are float32 numpy.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from service.runtime.base import (
    BackendError,
    BackendInfo,
    ClipOutput,
    DecoderOutput,
    EncoderOutput,
    decoder_feeds,
)

WEIGHTS_FILE = "weights.safetensors"


def load_model(bundle_path: Path, manifest: dict[str, Any]) -> tuple[Any, str]:
    """(SamClip in eval mode on CPU, where the weights came from). See module docstring for the order."""
    from model_export.config import SamClipConfig  # noqa: PLC0415

    weights = manifest.get("weights") or {}
    cfg = SamClipConfig.from_dict(manifest["model"]["config"])
    path = bundle_path / weights.get("bundle_file", WEIGHTS_FILE)
    if path.is_file():
        from model_export.checkpoint import file_sha256, load_samclip  # noqa: PLC0415

        expected = weights.get("bundle_sha256")
        if expected and file_sha256(path) != expected:
            raise BackendError(f"{path.name}: sha256 differs from manifest weights.bundle_sha256 (corrupt?)")
        model, _meta = load_samclip(path, cfg)
        return model, f"bundle file {path.name}"
    try:
        from model_export.sources import model_from_manifest  # noqa: PLC0415
    except ImportError:
        model_from_manifest = None
    if model_from_manifest is not None:
        try:
            model, _cfg = model_from_manifest(manifest)
        except Exception as exc:  # noqa: BLE001 - any loader failure becomes one clear message
            raise BackendError(f"cannot rebuild the PyTorch model from the manifest: {exc}") from exc
        kinds = [src.get("kind", "?") for src in weights.get("sources", [])]
        seed = f"random-init seed {weights.get('seed')}" if weights.get("random_init") else ""
        return model, " + ".join([*(f"{k} checkpoint" for k in kinds), *([seed] if seed else [])])
    if weights.get("random_init") and weights.get("seed") is not None:
        from model_export.build import build_model  # noqa: PLC0415

        return build_model(cfg, seed=int(weights["seed"])), f"random-init seed {weights['seed']}"
    raise BackendError(
        "the torch backend needs the PyTorch weights: this bundle has neither weights.safetensors nor a "
        "random-init seed; re-export with the weights in the bundle"
    )


def resolve_precision(torch: Any, device: Any, wanted: str) -> tuple[str, Any]:
    """(label, autocast dtype or None) for `wanted` on `device`."""
    if wanted in ("fp32", "f32"):
        return "fp32", None
    if device.type != "cuda":
        if wanted == "auto":
            return "fp32", None
        return ("bf16", torch.bfloat16) if wanted == "bf16" else ("fp16", torch.float16)
    if wanted == "auto":
        wanted = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if wanted not in ("bf16", "fp16"):
        raise BackendError(f"unknown precision {wanted!r} for torch-cuda (auto, bf16, fp16, fp32)")
    return wanted, torch.bfloat16 if wanted == "bf16" else torch.float16


class TorchCudaBackend:
    """Backend over the PyTorch modules (see module docstring)."""

    def __init__(self, bundle: Any, settings: Any) -> None:
        try:
            import torch  # noqa: PLC0415

            from model_export import onnx_wrappers as wrappers  # noqa: PLC0415
        except ImportError as exc:
            raise BackendError(
                f"the torch backend needs torch and model_export (the export extra): {exc}"
            ) from exc
        self.torch = torch
        name = (
            getattr(settings, "torch_device", None) or f"cuda:{int(getattr(settings, 'cuda_device', 0) or 0)}"
        )
        self.device = torch.device(name)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise BackendError(
                f"torch {torch.__version__} sees no CUDA device; cannot run torch-cuda on {name}"
            )
        self.precision, self.dtype = resolve_precision(
            torch, self.device, getattr(settings, "precision", None) or "auto"
        )
        model, source = load_model(Path(bundle.path), bundle.manifest)
        size = int(bundle.manifest["model"]["config"]["image_size"])
        self.modules = {
            "encoder": wrappers.EncoderOnnx(model),
            "clip_head": wrappers.ClipHeadOnnx(model),
            "text_encoder": wrappers.TextEncoderOnnx(model),
            "sam_decoder": wrappers.SamDecoderOnnx(model, size),
        }
        for m in self.modules.values():
            m.to(self.device).eval()
        self.locks = {g: threading.Lock() for g in self.modules}
        gpu = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        self.info = BackendInfo(
            name="torch-cuda",
            device=str(self.device),
            precision=self.precision,
            details={"torch": torch.__version__, "gpu": gpu, "weights": source, "attention": "sdpa"},
        )

    def _run(self, graph: str, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
        torch = self.torch
        fn = self._decode_low_res if graph == "sam_decoder" else self.modules[graph]
        with self.locks[graph], torch.inference_mode():
            inputs = [
                torch.from_numpy(np.ascontiguousarray(a)).to(self.device, non_blocking=True) for a in arrays
            ]
            use_16bit = self.dtype is not None and graph != "sam_decoder"
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=use_16bit):
                out = fn(*inputs)
            out = out if isinstance(out, tuple) else (out,)
            return tuple(o.float().cpu().numpy() for o in out)

    def _decode_low_res(self, emb: Any, coords: Any, labels: Any, mask_input: Any, has_mask: Any) -> tuple:
        """The export wrapper's decoder without its final S×S upscale (the pipeline reads low-res logits)."""
        dec = self.modules["sam_decoder"]
        sparse = dec.prompt_encoder.embed_points(coords, labels)
        dense = dec._embed_masks(mask_input, has_mask)
        low_res, iou = dec.mask_decoder.predict_masks(emb, dec.image_pe, sparse, dense)
        return iou, low_res

    def encode(self, images: np.ndarray) -> EncoderOutput:
        emb, tokens = self._run("encoder", images.astype(np.float32, copy=False))
        return EncoderOutput(emb, tokens)

    def clip_head(self, patch_tokens: np.ndarray) -> ClipOutput:
        img, dense = self._run("clip_head", patch_tokens.astype(np.float32, copy=False))
        return ClipOutput(img, dense)

    def encode_text(self, input_ids: np.ndarray) -> np.ndarray:
        return self._run("text_encoder", input_ids.astype(np.int64, copy=False))[0]

    def decode(
        self,
        image_embeddings: np.ndarray,
        point_coords: np.ndarray,
        point_labels: np.ndarray,
        mask_input: np.ndarray,
        has_mask_input: np.ndarray,
    ) -> DecoderOutput:
        feeds = decoder_feeds(
            image_embeddings, point_coords, point_labels, mask_input, has_mask_input, np.float32
        )
        iou, low_res = self._run("sam_decoder", *feeds.values())
        return DecoderOutput(iou, low_res)
