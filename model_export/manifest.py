"""Export-side pieces of the bundle manifest: graph I/O read back from ONNX files, library versions, the
weights record. The manifest itself (its typed model, reading, writing, hashing) is `samclip_bundle.manifest`.

Needs only the standard library plus `onnx` (imported lazily, for reading graph inputs/outputs).
"""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from samclip_bundle.hashing import sha256_file
from samclip_bundle.manifest import RANDOM_WEIGHTS_WARNING, GraphEntry, TensorSpec, Weights, WeightSource

# Distributions whose versions are recorded in manifest.versions (missing ones are skipped).
_VERSIONED = {
    "samclip_serve": "samclip-serve",
    "torch": "torch",
    "onnx": "onnx",
    "onnxruntime": "onnxruntime",
    "onnxslim": "onnxslim",
    "open_clip": "open_clip_torch",
    "tokenizers": "tokenizers",
    "safetensors": "safetensors",
}
_SAMCLIP_FALLBACK_VERSION = "0.1.0"


def _dim(d: Any) -> int | str:
    if d.HasField("dim_value"):
        return int(d.dim_value)
    return d.dim_param or "?"


def _value_info(vi: Any) -> TensorSpec:
    from onnx import helper

    ttype = vi.type.tensor_type
    dtype = helper.tensor_dtype_to_np_dtype(ttype.elem_type).name
    return TensorSpec(name=vi.name, shape=[_dim(d) for d in ttype.shape.dim], dtype=dtype)


def graph_io(onnx_path: str | Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """(inputs, outputs) of a saved ONNX graph; shapes hold ints and dim_param strings.

    Initializers listed as inputs (old exporters) are left out; weights are not loaded.
    """
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {init.name for init in model.graph.initializer}
    inputs = [_value_info(vi) for vi in model.graph.input if vi.name not in inits]
    return inputs, [_value_info(vi) for vi in model.graph.output]


def graph_entry(path: Path) -> GraphEntry:
    """manifest.graphs[...] entry of a saved graph: file name, sha256 and I/O read back from the file."""
    inputs, outputs = graph_io(path)
    return GraphEntry(file=path.name, sha256=sha256_file(path), inputs=inputs, outputs=outputs)


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shaped the bundle (distribution metadata, nothing imported)."""
    versions: dict[str, str] = {"python": platform.python_version()}
    for key, dist in _VERSIONED.items():
        try:
            versions[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            if key == "samclip_serve":
                versions[key] = _SAMCLIP_FALLBACK_VERSION
    return versions


def weights_record(
    random_init: bool, seed: int | None, sources: list[dict[str, str]], random_parts: list[str] | None = None
) -> Weights:
    """manifest.weights. sources: [{"kind": "sam|open_clip|samclip", "path", "sha256"}];
    random_parts: the parts left random when checkpoints covered only some of them."""
    return Weights(
        random_init=bool(random_init),
        seed=seed,
        sources=[WeightSource(kind=s["kind"], path=s["path"], sha256=s["sha256"]) for s in sources],
        warning=RANDOM_WEIGHTS_WARNING if random_init else None,
        random_parts=list(random_parts) if random_parts else None,
    )
