"""PyTorch backend (`SAMCLIP_BACKEND=torch`, old name `torch-cuda`): the SAM-CLIP nn.Modules, 16-bit autocast.

The one GPU path that needs neither TensorRT nor onnxruntime-gpu: torch with CUDA is enough. It is the only
backend that imports torch and `model_export` (the modules), and it does so only when chosen.

Weights, first that applies:
  1. `BUNDLE/weights.safetensors` (or `manifest.weights.bundle_file`): a SAM-CLIP checkpoint written by
     `model_export.checkpoint.save_samclip`, checked against `manifest.weights.bundle_sha256` if recorded;
  2. `model_export.sources.model_from_manifest(manifest)` (recorded checkpoint files, or the random-init seed).
Otherwise BackendError: re-export with the weights in the bundle.

The graphs run through the same export wrappers as the ONNX files (model_export.onnx_wrappers), so outputs
follow the bundle contract exactly: the decoder returns iou_predictions and low_res_masks for all 4 mask tokens
of K prompts at once. Attention is `F.scaled_dot_product_attention` in the modules.

Settings read (all optional): `torch_device` ("cuda", "cuda:1", "cpu"; wins when set), else `device` ("cuda":
cuda:`cuda_device`, refused without a GPU; "cpu"; "auto": CUDA when torch sees a GPU, else the CPU) and
`precision` ("auto" = bf16 where the GPU supports it else fp16, fp32 on CPU; or "bf16", "fp16", "fp32"). Under
autocast, matmuls/convs of the encoder, CLIP head and text tower run in 16-bit while LayerNorm, softmax and
reductions stay fp32 (torch's autocast op lists). The SAM decoder always runs in fp32: it is a tiny share of the
FLOPs, and its Fourier features of point coordinates lose most of their precision in 16-bit matmuls.
Outputs are float32 numpy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from samclip_bundle.graphs import GRAPH_OUTPUTS
from samclip_bundle.hashing import sha256_file
from samclip_bundle.variants import VariantChoice
from service.runtime.base import BackendError, GraphBackend, setting

WEIGHTS_FILE = "weights.safetensors"


def load_model(bundle_path: Path, manifest: Any) -> tuple[Any, str]:
    """(SamClip in eval mode on CPU, where the weights came from). See module docstring for the order."""
    from model_export.checkpoint import load_samclip  # noqa: PLC0415
    from model_export.config import SamClipConfig  # noqa: PLC0415
    from model_export.sources import model_from_manifest  # noqa: PLC0415

    weights = manifest.weights
    path = bundle_path / (weights.bundle_file or WEIGHTS_FILE)
    if path.is_file():
        if weights.bundle_sha256 and sha256_file(path) != weights.bundle_sha256:
            raise BackendError(f"{path.name}: sha256 differs from manifest weights.bundle_sha256 (corrupt?)")
        model, _meta = load_samclip(path, SamClipConfig.from_dict(manifest.model.config))
        return model, f"bundle file {path.name}"
    try:
        model, _cfg = model_from_manifest(manifest)
    except Exception as exc:  # noqa: BLE001 - any loader failure becomes one clear message
        raise BackendError(f"cannot rebuild the PyTorch model from the manifest: {exc}") from exc
    parts = [f"{s.kind} checkpoint" for s in weights.sources]
    if weights.random_init:
        parts.append(f"random-init seed {weights.seed}")
    return model, " + ".join(parts)


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
        raise BackendError(f"unknown precision {wanted!r} for the torch backend (auto, bf16, fp16, fp32)")
    return wanted, torch.bfloat16 if wanted == "bf16" else torch.float16


class TorchBackend(GraphBackend):
    """Backend over the PyTorch modules (see module docstring)."""

    name = "torch"
    devices = ("cpu", "cuda")
    runtime = "torch"

    def prepare(self) -> None:
        try:
            import torch  # noqa: PLC0415

            from model_export import onnx_wrappers  # noqa: PLC0415
        except ImportError as exc:
            raise BackendError(
                f"the torch backend needs torch and model_export (the export extra): {exc}"
            ) from exc
        self.torch, self.wrappers = torch, onnx_wrappers
        self.device = torch.device(self._device_name(torch))
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise BackendError(f"torch {torch.__version__} sees no CUDA device; cannot run on {self.device}")
        wanted = str(setting(self.settings, "precision", "auto"))
        self.precision, self.dtype = resolve_precision(torch, self.device, wanted)
        self.model, self.source = load_model(Path(self.bundle.path), self.bundle.manifest)

    def _device_name(self, torch: Any) -> str:
        if explicit := setting(self.settings, "torch_device", None):
            return str(explicit)
        device = str(setting(self.settings, "device", "auto"))
        if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
            return "cpu"
        return f"cuda:{int(setting(self.settings, 'cuda_device', 0))}"

    def choose_variant(self) -> VariantChoice:
        return VariantChoice(None, reason="the torch backend runs the PyTorch modules, not ONNX variants")

    def graph_label(self, graph: str) -> str:
        return f"{type(self.sessions[graph]).__name__} ({self.source})"

    def load_graph(self, graph: str, source: Path) -> Any:
        w = self.wrappers
        make = {"encoder": w.EncoderOnnx, "clip_head": w.ClipHeadOnnx, "text_encoder": w.TextEncoderOnnx}
        module = make.get(graph, w.SamDecoderOnnx)(self.model)
        return module.to(self.device).eval()

    def run_graph(self, graph: str, session: Any, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self.torch
        with torch.inference_mode():
            inputs = [torch.from_numpy(a).to(self.device, non_blocking=True) for a in feeds.values()]
            use_16bit = self.dtype is not None and graph != "sam_decoder"
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=use_16bit):
                out = session(*inputs)
            out = out if isinstance(out, tuple) else (out,)
            arrays = [o.float().cpu().numpy() for o in out]
        return dict(zip(GRAPH_OUTPUTS[graph], arrays, strict=True))

    def after_close(self) -> None:
        self.model = None
        torch = getattr(self, "torch", None)
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def describe(self) -> tuple[str, str, dict[str, Any]]:
        torch = self.torch
        gpu = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        details = {"torch": torch.__version__, "gpu": gpu, "weights": self.source, "attention": "sdpa"}
        return str(self.device), self.precision, details
