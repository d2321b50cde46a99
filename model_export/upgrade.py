"""`python -m model_export upgrade BUNDLE`: migrate a format-1 bundle to format 2 in place.

Format 2 differs in one place: the SAM decoder graph has exactly the outputs iou_predictions and low_res_masks.
Format-1 decoders (and any sam_decoder variant) also carried `masks`, low_res_masks upscaled to S x S, which
no caller uses. The upgrade extracts the sub-graph that computes the kept outputs (onnx.utils.Extractor: the
upscale nodes go), rewrites those files, their sha256 and I/O in the manifest, the fingerprint and
format_version. Running it on a format-2 bundle changes nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from samclip_bundle.graphs import GRAPH_INPUTS, GRAPH_OUTPUTS
from samclip_bundle.hashing import sha256_file
from samclip_bundle.manifest import FORMAT_VERSION, Manifest


def prune_decoder_file(path: Path) -> None:
    """Rewrite the ONNX decoder at `path` keeping only GRAPH_OUTPUTS["sam_decoder"] (and what computes them)."""
    import onnx
    import onnx.utils

    model = onnx.load(str(path))
    keep = list(GRAPH_OUTPUTS["sam_decoder"])
    if [o.name for o in model.graph.output] == keep:
        return
    pruned = onnx.utils.Extractor(model).extract_model(list(GRAPH_INPUTS["sam_decoder"]), keep)
    onnx.checker.check_model(pruned)
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(pruned, str(tmp))
    tmp.replace(path)


def upgrade_bundle(bundle: Path) -> dict[str, Any]:
    """Migrate `bundle` in place to FORMAT_VERSION; returns a summary (from/to version, files rewritten)."""
    manifest = Manifest.read(bundle, legacy=True)
    before = manifest.format_version
    if before == FORMAT_VERSION:
        return {"bundle": str(bundle), "from": before, "to": before, "rewritten": []}
    decoder = manifest.graphs["sam_decoder"]
    files = [decoder.file, *(v.file for v in manifest.variants.get("sam_decoder", []))]
    for name in dict.fromkeys(files):
        prune_decoder_file(bundle / name)
    decoder.outputs = [o for o in decoder.outputs if o.name in GRAPH_OUTPUTS["sam_decoder"]]
    decoder.sha256 = sha256_file(bundle / decoder.file)
    for variant in manifest.variants.get("sam_decoder", []):
        variant.sha256 = sha256_file(bundle / variant.file)
    data = manifest.to_dict() | {"format_version": FORMAT_VERSION}
    upgraded = Manifest.from_dict(data, str(Manifest.path(bundle)))  # the format-2 contract must now hold
    upgraded.refresh_fingerprint()
    upgraded.write(bundle)
    return {
        "bundle": str(bundle),
        "from": before,
        "to": FORMAT_VERSION,
        "rewritten": list(dict.fromkeys(files)),
        "fingerprint": upgraded.fingerprint,
    }


def add_upgrade_parser(subparsers: Any) -> None:
    """Register `upgrade` on the model_export argparse subparsers."""
    p = subparsers.add_parser("upgrade", help=f"migrate an older bundle in place to format {FORMAT_VERSION}")
    p.add_argument("bundle", type=Path)
    p.set_defaults(func=cmd_upgrade)


def cmd_upgrade(args: argparse.Namespace) -> int:
    print(json.dumps(upgrade_bundle(args.bundle), indent=2))
    return 0
