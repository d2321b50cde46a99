"""Export a SamClip model to the ONNX bundle defined in model_export/BUNDLE.md.

`export_bundle(model, cfg, out_dir, provenance)` writes encoder.onnx, clip_head.onnx, text_encoder.onnx,
sam_decoder.onnx, tokenizer.json and manifest.json. Graphs are exported with the TorchScript-based exporter
(`dynamo=False`): it keeps every dynamic axis below symbolic (batch, CLIP-head grid, number of texts, number of
prompts and points) and needs no onnxscript. Each graph then passes `onnx.checker`, is simplified with
onnxslim (kept unsimplified, with a warning, if simplification fails or breaks the checker) and its I/O is
read back from the saved file into the manifest.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from model_export import manifest as mf
from model_export.onnx_wrappers import ClipHeadOnnx, EncoderOnnx, SamDecoderOnnx, TextEncoderOnnx
from samclip_bundle.graphs import GRAPH_FILES, GRAPH_INPUTS, GRAPH_OUTPUTS, TOKENIZER_FILE
from samclip_bundle.hashing import sha256_file
from samclip_bundle.manifest import (
    FORMAT_VERSION,
    RANDOM_WEIGHTS_WARNING,
    ClipEntry,
    Manifest,
    ModelEntry,
    Preprocess,
    TokenizerEntry,
    utc_now,
)

log = logging.getLogger(__name__)

SOT_TOKEN_ID = 49406
EOT_TOKEN_ID = 49407
PAD_TOKEN_ID = 0


@dataclass
class GraphSpec:
    """One bundle graph: wrapper module, example inputs (traced) and its dynamic axes."""

    name: str
    module: nn.Module
    args: tuple[torch.Tensor, ...]
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    output_shapes: dict[str, list[int | str]]

    @property
    def file(self) -> str:
        return GRAPH_FILES[self.name]


def example_text_ids(num: int, context_length: int, seed: int = 0) -> torch.Tensor:
    """(num, context_length) int64 CLIP-like ids: SOT, random BPE ids, EOT, zero padding (lengths vary)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.zeros(num, context_length, dtype=torch.int64)
    for row in range(num):
        length = int(torch.randint(1, context_length - 1, (1,), generator=gen))
        ids[row, 0] = SOT_TOKEN_ID
        ids[row, 1 : 1 + length] = torch.randint(1, SOT_TOKEN_ID, (length,), generator=gen)
        ids[row, 1 + length] = EOT_TOKEN_ID
    return ids


def example_decoder_inputs(cfg: Any, num_prompts: int = 3, num_points: int = 4, seed: int = 0) -> tuple:
    """Random decoder inputs (BUNDLE.md shapes) with labels covering -1..3; has_mask_input alternates."""
    gen = torch.Generator().manual_seed(seed)
    s, g = cfg.image_size, cfg.embed_grid
    emb = torch.randn(1, cfg.encoder.out_chans, g, g, generator=gen)
    coords = torch.rand(num_prompts, num_points, 2, generator=gen) * s
    labels = torch.randint(-1, 4, (num_prompts, num_points), generator=gen).to(torch.float32)
    mask_input = torch.randn(num_prompts, 1, 4 * g, 4 * g, generator=gen)
    has_mask = (torch.arange(num_prompts) % 2).to(torch.float32)
    return emb, coords, labels, mask_input, has_mask


def graph_specs(model: nn.Module, cfg: Any) -> list[GraphSpec]:
    """The four graphs with example inputs whose dynamic dims are > 1 and differ from each other."""
    s, g, width = cfg.image_size, cfg.embed_grid, cfg.clip_width
    c, d, m = cfg.encoder.out_chans, cfg.clip_head.embed_dim, cfg.mask_decoder.num_multimask_outputs + 1
    grid_h, grid_w = g, g + 2  # non-square and not the positional grid: nothing shape-specific is baked
    gen = torch.Generator().manual_seed(0)
    return [
        GraphSpec(
            "encoder",
            EncoderOnnx(model),
            (torch.randn(2, 3, s, s, generator=gen),),
            list(GRAPH_INPUTS["encoder"]),
            list(GRAPH_OUTPUTS["encoder"]),
            {"image": {0: "batch"}, "image_embeddings": {0: "batch"}, "patch_tokens": {0: "batch"}},
            {"image_embeddings": ["batch", c, g, g], "patch_tokens": ["batch", g, g, width]},
        ),
        GraphSpec(
            "clip_head",
            ClipHeadOnnx(model),
            (torch.randn(2, grid_h, grid_w, width, generator=gen),),
            list(GRAPH_INPUTS["clip_head"]),
            list(GRAPH_OUTPUTS["clip_head"]),
            {
                "patch_tokens": {0: "batch", 1: "grid_h", 2: "grid_w"},
                "image_embedding": {0: "batch"},
                "patch_embeddings": {0: "batch", 1: "grid_h", 2: "grid_w"},
            },
            {"image_embedding": ["batch", d], "patch_embeddings": ["batch", "grid_h", "grid_w", d]},
        ),
        GraphSpec(
            "text_encoder",
            TextEncoderOnnx(model),
            (example_text_ids(3, cfg.text.context_length),),
            list(GRAPH_INPUTS["text_encoder"]),
            list(GRAPH_OUTPUTS["text_encoder"]),
            {"input_ids": {0: "num_texts"}, "text_embedding": {0: "num_texts"}},
            {"text_embedding": ["num_texts", d]},
        ),
        GraphSpec(
            "sam_decoder",
            SamDecoderOnnx(model),
            example_decoder_inputs(cfg),
            list(GRAPH_INPUTS["sam_decoder"]),
            list(GRAPH_OUTPUTS["sam_decoder"]),
            {
                "point_coords": {0: "num_prompts", 1: "num_points"},
                "point_labels": {0: "num_prompts", 1: "num_points"},
                "mask_input": {0: "num_prompts"},
                "has_mask_input": {0: "num_prompts"},
                "iou_predictions": {0: "num_prompts"},
                "low_res_masks": {0: "num_prompts"},
            },
            {
                "iou_predictions": ["num_prompts", m],
                "low_res_masks": ["num_prompts", m, 4 * g, 4 * g],
            },
        ),
    ]


def export_graph(spec: GraphSpec, path: Path, opset: int) -> None:
    """torch.onnx.export (TorchScript exporter) of one wrapper to a single .onnx file."""
    spec.module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy-exporter deprecation and tracer warnings
        torch.onnx.export(
            spec.module, spec.args, str(path), dynamo=False, opset_version=opset,
            input_names=spec.input_names, output_names=spec.output_names,
            dynamic_axes=spec.dynamic_axes, do_constant_folding=True,
        )  # fmt: skip


def stamp_output_shapes(path: Path, shapes: dict[str, list[int | str]]) -> None:
    """Write the contract's output shapes (BUNDLE.md) into the graph, replacing the exporter's generated
    dim names ("Reshape..._dim_1") for axes that are static; onnx.checker then validates them."""
    import onnx

    model = onnx.load(str(path))
    for output in model.graph.output:
        dims = output.type.tensor_type.shape.dim
        want = shapes[output.name]
        if len(dims) != len(want):
            raise ValueError(f"{path.name}: output {output.name} has rank {len(dims)}, expected {want}")
        for dim, value in zip(dims, want, strict=True):
            if isinstance(value, str):
                dim.dim_param = value
            else:
                dim.dim_value = value
    onnx.save(model, str(path))


def check_graph(path: Path) -> None:
    """onnx.checker with full shape inference; raises onnx.checker.ValidationError on failure."""
    import onnx

    onnx.checker.check_model(str(path), full_check=True)


def simplify_graph(path: Path) -> bool:
    """Simplify in place with onnxslim; on any failure keep the original file, log a warning, return False."""
    import onnx

    backup = path.with_suffix(".unsimplified.onnx")
    path.replace(backup)
    try:
        import onnxslim

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            slim = onnxslim.slim(str(backup))
        onnx.save(slim, str(path))
        check_graph(path)
        if mf.graph_io(path) != mf.graph_io(backup):
            raise ValueError("simplification changed the graph inputs/outputs")
    except Exception as exc:  # any onnxslim failure falls back to the exported graph
        log.warning("onnxslim failed for %s (%s); keeping the unsimplified graph", path.name, exc)
        backup.replace(path)
        return False
    backup.unlink()
    return True


def _step(bar: Any, text: str, fn: Callable[[], Any]) -> Any:
    if bar is not None:
        bar.set_postfix_str(text)
    start = time.perf_counter()
    result = fn()
    log.info("%s: %.1fs", text, time.perf_counter() - start)
    if bar is not None:
        bar.update(1)
    return result


def _write_tokenizer(out_dir: Path, context_length: int) -> TokenizerEntry:
    from model_export.tokenizer import build_tokenizer_json

    path = out_dir / TOKENIZER_FILE
    build_tokenizer_json(path)
    return TokenizerEntry(
        file=path.name, sha256=sha256_file(path), context_length=context_length,
        sot_token_id=SOT_TOKEN_ID, eot_token_id=EOT_TOKEN_ID, pad_token_id=PAD_TOKEN_ID,
    )  # fmt: skip


def build_manifest(
    model: nn.Module, cfg: Any, graphs: dict, tokenizer: TokenizerEntry, provenance: dict, opset: int
) -> Manifest:
    """The bundle's manifest (BUNDLE.md, format_version 2); graphs: name -> GraphEntry."""
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        model=ModelEntry(name=cfg.name, config=cfg.to_dict()),
        preprocess=Preprocess(
            image_size=cfg.image_size, pixel_mean=tuple(cfg.pixel_mean), pixel_std=tuple(cfg.pixel_std)
        ),
        graphs=graphs,
        tokenizer=tokenizer,
        clip=ClipEntry(logit_scale=math.exp(float(model.logit_scale.detach())), embed_dim=cfg.clip_head.embed_dim),
        weights=mf.weights_record(
            provenance.get("random_init", False), provenance.get("seed"), provenance.get("sources", []),
            provenance.get("random_parts"),
        ),
        opset=opset,
        versions=mf.library_versions(),
        fingerprint="",
        created_at=utc_now(),
    )  # fmt: skip
    manifest.refresh_fingerprint()
    return manifest


def export_bundle(
    model: nn.Module,
    cfg: Any,
    out_dir: str | Path,
    provenance: dict[str, Any],
    opset: int = 17,
    simplify: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Export the four graphs + tokenizer + manifest into out_dir; return the Manifest.

    provenance: {"random_init": bool, "seed": int | None, "sources": [{"kind", "path", "sha256"}],
    optionally "random_parts": [...]} (what model_export.sources.assemble_model returns).
    manifest.json is written last, so a bundle directory without one is incomplete.
    """
    from tqdm.auto import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    Manifest.path(out).unlink(missing_ok=True)  # no stale manifest next to half-written graphs
    if provenance.get("random_init"):
        parts = provenance.get("random_parts") or ["all parts"]
        log.warning(
            "WARNING: %s: %s, seed %s", RANDOM_WEIGHTS_WARNING, ", ".join(parts), provenance.get("seed")
        )
    model.eval()
    specs = graph_specs(model, cfg)
    steps = len(specs) * (3 if simplify else 2) + 1
    bar = tqdm(total=steps, desc="export", unit="step", disable=not progress)
    graphs: dict[str, Any] = {}
    try:
        for spec in specs:
            path = out / spec.file
            _step(bar, f"{spec.name}: torch.onnx.export", lambda s=spec, p=path: export_graph(s, p, opset))
            stamp_output_shapes(path, spec.output_shapes)
            _step(bar, f"{spec.name}: onnx.checker", lambda p=path: check_graph(p))
            if simplify:
                _step(bar, f"{spec.name}: onnxslim", lambda p=path: simplify_graph(p))
            graphs[spec.name] = mf.graph_entry(path)
        tokenizer = _step(bar, "tokenizer.json", lambda: _write_tokenizer(out, cfg.text.context_length))
    finally:
        bar.close()
    manifest = build_manifest(model, cfg, graphs, tokenizer, provenance, opset)
    manifest.write(out)
    return manifest
