"""The typed bundle contract shared by export (`model_export`), training and serving (`service`).

Torch-free and runtime-free: `manifest` (the pydantic `Manifest` of manifest.json and the only code that reads
or writes it), `graphs` (graph names and their input/output names), `hashing` (sha256 of files, fingerprint),
`variants` (which reduced-precision variant a runtime runs), `engines` (TensorRT engine records),
`cuda_probe` (which NVIDIA GPUs the driver sees, through ctypes) and `parity` (the fast-path accuracy gates,
numpy only). Nothing here imports `model_export`, `service` or `training`.
"""

from samclip_bundle.graphs import GRAPH_FILES, GRAPH_INPUTS, GRAPH_OUTPUTS, GRAPHS
from samclip_bundle.hashing import fingerprint, sha256_file
from samclip_bundle.manifest import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    Manifest,
    ManifestError,
    OutdatedManifestError,
)

__all__ = [
    "FORMAT_VERSION",
    "GRAPHS",
    "GRAPH_FILES",
    "GRAPH_INPUTS",
    "GRAPH_OUTPUTS",
    "MANIFEST_NAME",
    "Manifest",
    "ManifestError",
    "OutdatedManifestError",
    "fingerprint",
    "sha256_file",
]
