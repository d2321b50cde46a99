"""Backend-shaped runner over a bundle's raw ONNX files in ONNX Runtime (the fp32 reference, int8 variants) or
OpenVINO (precision hint "bf16" / "f32"), for parity measurement on the export side (`optimize`); the service runs
graphs through its own backends. Output names come from samclip_bundle.graphs.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from samclip_bundle.graphs import GRAPH_OUTPUTS, GRAPHS

_OUTPUT_NAMES = tuple(name for graph in GRAPHS for name in GRAPH_OUTPUTS[graph])


def _port_name(names: set[str]) -> str:
    """BUNDLE.md's name for an OpenVINO output port (a port may carry several tensor names)."""
    return next((n for n in _OUTPUT_NAMES if n in names), sorted(names)[0])


class OnnxGraphs:
    """Backend-shaped runner over the four ONNX files, in ONNX Runtime (fp32 reference, int8 variants) or
    OpenVINO (precision hint "bf16" / "f32"). paths: graph name -> .onnx file. For parity measurement only;
    the service uses its own backends."""

    def __init__(
        self, paths: dict[str, Path], runtime: str = "onnxruntime", precision: str = "f32", threads: int = 0
    ):
        self.runtime = runtime
        self._run = {g: self._load(Path(p), runtime, precision, threads) for g, p in paths.items()}

    @staticmethod
    def _load(path: Path, runtime: str, precision: str, threads: int) -> Any:
        if runtime == "onnxruntime":
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            names = [o.name for o in sess.get_outputs()]
            return lambda feeds: dict(zip(names, sess.run(names, feeds), strict=False))
        if runtime == "openvino":
            import openvino as ov

            config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
            if threads:
                config["INFERENCE_NUM_THREADS"] = threads
            compiled = ov.Core().compile_model(str(path), "CPU", config)
            request = compiled.create_infer_request()
            ports = [(_port_name(o.get_names()), o) for o in compiled.outputs]

            def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
                res = request.infer(feeds)
                return {name: np.array(res[port], copy=True) for name, port in ports}

            return run
        raise ValueError(f"unknown runtime {runtime!r}")

    def encode(self, images: np.ndarray) -> SimpleNamespace:
        out = self._run["encoder"]({"image": images})
        return SimpleNamespace(image_embeddings=out["image_embeddings"], patch_tokens=out["patch_tokens"])

    def clip_head(self, patch_tokens: np.ndarray) -> SimpleNamespace:
        out = self._run["clip_head"]({"patch_tokens": patch_tokens})
        return SimpleNamespace(
            image_embedding=out["image_embedding"], patch_embeddings=out["patch_embeddings"]
        )

    def encode_text(self, input_ids: np.ndarray) -> np.ndarray:
        return self._run["text_encoder"]({"input_ids": input_ids})["text_embedding"]

    def decode(self, image_embeddings: np.ndarray, **prompts: np.ndarray) -> SimpleNamespace:
        out = self._run["sam_decoder"]({"image_embeddings": image_embeddings, **prompts})
        return SimpleNamespace(iou_predictions=out["iou_predictions"], low_res_masks=out["low_res_masks"])
