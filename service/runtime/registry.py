"""Backends by name: the registry of runtimes, the old names kept as aliases, and `create_backend`.

Each runtime class is named as "package.module:Class" and imported only when chosen, so `service/` never needs
torch unless the torch backend is chosen. "auto" resolves in service/runtime/auto.py.
"""

from __future__ import annotations

import importlib
from typing import Any

from service.runtime.base import Backend, BackendError

# name -> "module:class"; classes take (bundle, settings, metrics) and are imported only when chosen.
_REGISTRY: dict[str, str] = {
    "onnxruntime": "service.runtime.onnxruntime:OnnxRuntimeBackend",
    "openvino": "service.runtime.openvino:OpenVinoBackend",
    "tensorrt": "service.runtime.tensorrt:TensorRTBackend",
    "torch": "service.runtime.torch_backend:TorchBackend",
}
# Old names: (backend, settings they imply). onnxruntime-int8 = a variant, ort-cuda = providers, torch-cuda = device.
ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    "onnxruntime-int8": ("onnxruntime", {"require_variant": True}),
    "ort-cuda": ("onnxruntime", {"device": "cuda"}),
    "torch-cuda": ("torch", {"device": "cuda"}),
}


class SettingsView:
    """`settings` with some attributes replaced (what an alias or `auto` implies); everything else passes
    through."""

    def __init__(self, settings: Any, **overrides: Any) -> None:
        self._settings, self._overrides = settings, overrides

    def __getattr__(self, name: str) -> Any:
        if name in self._overrides:
            return self._overrides[name]
        return getattr(self._settings, name)


def register_backend(name: str, target: str) -> None:
    """Register a backend class as "package.module:Class" (imported only when chosen)."""
    _REGISTRY[name] = target


def available_backends() -> list[str]:
    """Every name create_backend accepts: backends, aliases and "auto"."""
    return sorted({*_REGISTRY, *ALIASES, "auto"})


def create_backend(name: str, bundle: Any, settings: Any, metrics: Any = None) -> Backend:
    """Load backend `name` ("auto", a backend or an alias) over `bundle`. info.details["selection"] says
    what was asked for, what runs, which variant, and why (service/runtime/auto.py for "auto")."""
    if name == "auto":
        from service.runtime.auto import resolve_backend

        choice = resolve_backend(settings, bundle)
        backend_name, overrides, reason = choice.name, {"device": choice.device}, choice.reason
    elif name in ALIASES:
        backend_name, overrides = ALIASES[name]
        reason = f"{name} is an alias of {backend_name} with {overrides}"
    elif name in _REGISTRY:
        backend_name, overrides, reason = name, {}, f"asked for (SAMCLIP_BACKEND={name})"
    else:
        raise BackendError(f"unknown backend {name!r}; known: {', '.join(available_backends())}")
    module_name, _, attr = _REGISTRY[backend_name].partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except ImportError as exc:
        raise BackendError(f"backend {backend_name!r} is not installed here: {exc}") from exc
    backend = cls(bundle, SettingsView(settings, **overrides) if overrides else settings, metrics)
    backend.info.details["selection"] = {
        "requested": name,
        "backend": backend_name,
        "variant": backend.info.details.get("variant"),
        "reason": reason,
        "variant_reason": backend.info.details.get("variant_reason"),
    }
    return backend
