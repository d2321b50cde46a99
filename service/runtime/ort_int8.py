"""ONNX Runtime with int8 graph variants (`SAMCLIP_BACKEND=onnxruntime-int8`).

Same sessions, providers and threading as `service.runtime.onnxruntime.OnnxRuntimeBackend`; the graphs that have
an onnxruntime variant in the manifest (`python -m model_export optimize BUNDLE --target ort-int8`: dynamic int8
quantisation of the linear layers, `<graph>.int8.onnx`) are loaded instead of their fp32 files. Variant choice:
setting `variant` (service.runtime.variants: "auto" = the passing one with the lowest rank).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from service.runtime.base import BackendError
from service.runtime.onnxruntime import OnnxRuntimeBackend
from service.runtime.variants import auto_variant_name, choose_variant

GRAPHS = ("encoder", "clip_head", "text_encoder", "sam_decoder")


class _VariantBundle:
    """A bundle view whose graph_path() points at variant files; everything else is the wrapped bundle's."""

    def __init__(self, bundle: Any, files: dict[str, str]) -> None:
        self._bundle = bundle
        self._files = files

    def graph_path(self, name: str) -> Path:
        if name in self._files:
            return Path(self._bundle.path) / self._files[name]
        return self._bundle.graph_path(name)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bundle, name)


class OnnxRuntimeInt8Backend(OnnxRuntimeBackend):
    """OnnxRuntimeBackend over the bundle's onnxruntime int8 variants (BackendError when it has none)."""

    def __init__(self, bundle: Any, settings: Any, metrics: Any = None) -> None:
        wanted = str(getattr(settings, "variant", None) or "auto")
        name = auto_variant_name(bundle.manifest, "onnxruntime") if wanted == "auto" else wanted
        files = {}
        for graph in GRAPHS:
            entry = choose_variant(bundle.manifest, graph, name or "none", "onnxruntime")
            if entry is not None:
                files[graph] = entry["file"]
        if not files:
            raise BackendError(
                f"bundle {bundle.path} has no onnxruntime variant {name or wanted!r}; run "
                f"`python -m model_export optimize {bundle.path} --target ort-int8`"
            )
        super().__init__(_VariantBundle(bundle, files), settings, metrics)
        self.info.name = "onnxruntime-int8"
        self.info.precision = "int8"
        self.info.details["variant"] = name
        self.info.details["graphs"] = {g: files.get(g, bundle.manifest["graphs"][g]["file"]) for g in GRAPHS}
