"""In-process figures of the interactive path for benchmarks/service_latency.py (issue 16): parity of the fast
path against fp32, and the official segment_anything ONNX decoder export timed next to ours.

Every figure runs the service's own code (service.runtime backends, service.tasks, service.images) on a bundle,
on generated photo-like images at ORIGINAL size `size` (H, W); prompts are boxes and points in original pixels.

- `decoder_parity`: the default fast path (the backend `auto` chooses, fused decoder variant with its box/point
  specialisation, float16-stored embedding, fast post-processing) against the fp32 path (the plain decoder graph
  in fp32 ONNX Runtime on the float32 embedding, plain post-processing = Sam.postprocess_masks > 0), both on the
  same encoder output: mean mask IoU at original size (gate 0.97).
- `storage_parity`: entries stored in float32 vs float16 (setting cache_dtype, a backend made with each): SAM masks
  (gate 0.99) and text-segment masks (gate 0.98) mean IoU at original size, each entry's bytes, and the dtype
  each side's decoder was fed (`decoder_fed`: a float32 entry must reach its decoder as float32).
- `official_decoder`: segment_anything's `SamOnnxModel` (return_single_mask, its masks upscaled to the original
  size in the graph, as its export script writes it) exported from the same weights, run by ONNX Runtime for one
  box; against the plain decoder + plain post-processing and the fast path, in this process (blocks of calls
  per path, twice). Each is timed to a binary (H, W) mask (the official one thresholds its logits with `> 0`).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

DECODER_NAMES = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input")


def _images(bundle: Any, count: int, seed: int) -> np.ndarray:
    from samclip_bundle.parity import generated_images

    return generated_images(count, bundle.image_size, list(bundle.pixel_mean), list(bundle.pixel_std), seed)


def _prompts(size: tuple[int, int], count: int, seed: int) -> list[Any]:
    """Boxes and single points (original pixels), alternating."""
    from service.tasks.prompt import Prompt

    rng = np.random.default_rng(seed)
    height, width = size
    out = []
    for i in range(count):
        x0, x1 = sorted(rng.uniform(0, width, 2))
        y0, y1 = sorted(rng.uniform(0, height, 2))
        out.append(Prompt(box=(x0, y0, x1, y1)) if i % 2 == 0 else Prompt(points=((x0, y0, 1),)))
    return out


def _backend(bundle_dir: Path, **overrides: Any) -> tuple[Any, Any]:
    """(Bundle, the backend setting `backend` creates with these settings)."""
    from service.bundle import Bundle
    from service.runtime.registry import create_backend
    from service.settings import Settings

    settings = Settings(bundle=bundle_dir, **overrides)
    bundle = Bundle.load(bundle_dir)
    return bundle, create_backend(settings.backend, bundle, settings)


def _entry(bundle: Any, encoded: Any, i: int, size: tuple[int, int], dtype: str) -> Any:
    from service.images.entry import new_entry
    from service.images.transforms import preprocess_shape

    input_size = preprocess_shape(*size, bundle.image_size)
    return new_entry(f"img{i}", (size[1], size[0]), input_size, encoded.image_embeddings[i : i + 1],
                     encoded.patch_tokens[i : i + 1], dtype)  # fmt: skip


def _masks(heads: Any, entry: Any, prompts: list[Any]) -> list[np.ndarray]:
    from service.tasks.prompt import segment_prompts
    from service.timing import Timings

    return [m.mask for group in segment_prompts(heads, entry, prompts, True, Timings()) for m in group]


def _mean_iou(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    from samclip_bundle.parity import mask_iou

    return round(float(np.mean([mask_iou(x, y) for x, y in zip(a, b, strict=True)])), 6)


class _PlainFp32Backend:
    """The fp32 path's decoder: the bundle's PLAIN graph in fp32 ONNX Runtime (settings: the plain path)."""

    def __init__(self, bundle: Any) -> None:
        import onnxruntime as ort

        path = Path(bundle.path) / bundle.manifest.graphs["sam_decoder"].file
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.settings = SimpleNamespace(postprocess="plain")

    def decode(self, *arrays: np.ndarray) -> Any:
        from service.runtime.base import DecoderOutput

        feeds = {n: np.ascontiguousarray(a, np.float32) for n, a in zip(DECODER_NAMES, arrays, strict=True)}
        return DecoderOutput(*self.session.run(["iou_predictions", "low_res_masks"], feeds))


def decoder_parity(bundle_dir: Path, size: tuple[int, int], images: int = 2, prompts: int = 16) -> dict:
    """The fast path vs the fp32 path (module docstring)."""
    from service.tasks.heads import Heads

    bundle, backend = _backend(bundle_dir)
    try:
        encoded = backend.encode(_images(bundle, images, seed=31))
        fast = Heads(bundle, backend, lambda entry: None)
        plain = Heads(bundle, _PlainFp32Backend(bundle), lambda entry: None)
        specs = _prompts(size, prompts, seed=32)
        ious = []
        for i in range(images):
            got = _masks(fast, _entry(bundle, encoded, i, size, "float16"), specs)
            ref = _masks(plain, _entry(bundle, encoded, i, size, "float32"), specs)
            ious.append(_mean_iou(got, ref))
        return {"mask_iou": round(float(np.mean(ious)), 6), "gate": 0.97, "images": images,
                "masks": images * prompts * 3, "decoder": backend.info.details["graphs"]["sam_decoder"]}  # fmt: skip
    finally:
        backend.close()


def _text_classes(bundle: Any, backend: Any, texts: list[str]) -> np.ndarray:
    """(T + 1, D) float32: the texts' embeddings (one template: a parity check, not the 80) + "background"."""
    from service.text.tokenizer import ClipTokenizer

    return backend.encode_text(ClipTokenizer.from_bundle(bundle)([*texts, "background"]))


def storage_parity(bundle_dir: Path, size: tuple[int, int], images: int = 2, prompts: int = 16) -> dict:
    """float16 vs float32 entries (module docstring), each served by a backend made with that cache_dtype (as a
    server is: OpenVINO takes a cached array at a port of the cache's dtype), on the same encoder output."""
    from service.tasks.heads import Heads
    from service.tasks.textseg import segment_text
    from service.timing import Timings

    texts = ["a dog", "a person", "a red car", "grass", "the sky"]
    specs = _prompts(size, prompts, seed=42)
    sam, seg, nbytes, fed, encoded = {}, {}, {}, {}, None
    for dtype in ("float32", "float16"):
        bundle, backend = _backend(bundle_dir, cache_dtype=dtype)
        try:
            if encoded is None:  # one encoder output for both
                encoded = backend.encode(_images(bundle, images, seed=41))
            heads = Heads(bundle, backend, lambda entry: None)
            classes = _text_classes(bundle, backend, texts)
            entries = [_entry(bundle, encoded, i, size, dtype) for i in range(images)]
            sam[dtype] = [m for e in entries for m in _masks(heads, e, specs)]
            seg[dtype] = [
                r.mask for e in entries for t in texts
                for r in segment_text(heads, e, classes[[texts.index(t), -1]], [t], Timings())
            ]  # fmt: skip
            nbytes[dtype] = int(statistics.median(e.nbytes for e in entries))  # after the CLIP head ran
            fed[dtype] = str(backend.feed("image_embeddings", entries[0].image_embeddings).dtype)
        finally:
            backend.close()
    return {
        "mask_iou": _mean_iou(sam["float16"], sam["float32"]), "mask_gate": 0.99,
        "text_segment_iou": _mean_iou(seg["float16"], seg["float32"]), "text_gate": 0.98,
        "entry_bytes": nbytes, "decoder_fed": fed, "texts": len(texts), "images": images,
    }  # fmt: skip


# --- the official segment_anything ONNX decoder --------------------------------------------------------------
def export_official(bundle_dir: Path, out: Path) -> Path:
    """segment_anything's SamOnnxModel (return_single_mask=True) on the bundle's weights, exported the way
    segment_anything/scripts/export_onnx_model.py does (opset 17, dynamic num_points)."""
    import warnings

    import torch
    from segment_anything import sam_model_registry
    from segment_anything.utils.onnx import SamOnnxModel

    from model_export.sources import model_from_manifest
    from samclip_bundle.manifest import Manifest

    model, cfg = model_from_manifest(Manifest.read(bundle_dir))
    if cfg.name != "vit_b":
        raise ValueError(
            "the official decoder comparison builds segment_anything's vit_b: use a vit_b bundle"
        )
    sam = sam_model_registry["vit_b"]()
    sam.prompt_encoder.load_state_dict(model.prompt_encoder.state_dict(), strict=True)
    sam.mask_decoder.load_state_dict(model.mask_decoder.state_dict(), strict=True)
    onnx_model = SamOnnxModel(sam, return_single_mask=True)
    grid = cfg.embed_grid
    dummy = {
        "image_embeddings": torch.randn(1, cfg.encoder.out_chans, grid, grid),
        "point_coords": torch.randint(0, 1024, (1, 5, 2), dtype=torch.float),
        "point_labels": torch.randint(0, 4, (1, 5), dtype=torch.float),
        "mask_input": torch.randn(1, 1, 4 * grid, 4 * grid),
        "has_mask_input": torch.tensor([1], dtype=torch.float),
        "orig_im_size": torch.tensor([1500, 2250], dtype=torch.float),
    }
    dynamic = {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(onnx_model, tuple(dummy.values()), str(out), dynamo=False, opset_version=17,
                          do_constant_folding=True, input_names=list(dummy),
                          output_names=["masks", "iou_predictions", "low_res_masks"], dynamic_axes=dynamic)  # fmt: skip
    return out


def official_decoder(bundle_dir: Path, size: tuple[int, int], repeats: int = 20) -> dict:
    """One box on one image of ORIGINAL size `size`, to a binary mask: official SamOnnxModel in ONNX Runtime vs
    the plain decoder + plain post-processing vs the fast path (ms, medians; `_blocks`)."""
    import onnxruntime as ort

    from service.images.transforms import map_coords

    with tempfile.TemporaryDirectory() as tmp:
        path = export_official(bundle_dir, Path(tmp) / "sam_onnx.onnx")
        options = ort.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    bundle, backend = _backend(bundle_dir)
    plain_bundle, plain_backend = _backend(bundle_dir, decoder_variant="none", openvino_decoder_shapes=0,
                                           postprocess="plain", cache_dtype="float32")  # fmt: skip
    try:
        encoded = backend.encode(_images(bundle, 1, seed=51))
        (box,) = _prompts(size, 1, seed=52)
        corners = map_coords(np.array(box.box, np.float64).reshape(2, 2), size, bundle.image_size)
        grid = 4 * bundle.embed_grid
        feeds = {
            "image_embeddings": np.ascontiguousarray(encoded.image_embeddings[:1], np.float32),
            "point_coords": corners[None].astype(np.float32),
            "point_labels": np.array([[2.0, 3.0]], np.float32),
            "mask_input": np.zeros((1, 1, grid, grid), np.float32),
            "has_mask_input": np.zeros((1,), np.float32),
            "orig_im_size": np.array(size, np.float32),
        }
        runs = {
            "official_onnx_ms": lambda: session.run(["masks"], feeds)[0][0, 0] > 0,
            "plain_ms": _task(plain_bundle, plain_backend, encoded, size, "float32", box),
            "fast_ms": _task(bundle, backend, encoded, size, "float16", box),
        }
        out = {name: round(statistics.median(ts), 2) for name, ts in _blocks(runs, repeats).items()}
        out["fast_over_official"] = round(out["fast_ms"] / out["official_onnx_ms"], 3)
        out["fast_over_plain"] = round(out["fast_ms"] / out["plain_ms"], 3)
        out["official_runtime"] = f"onnxruntime {ort.__version__} CPUExecutionProvider (fp32)"
        return out
    finally:
        backend.close()
        plain_backend.close()


def _blocks(runs: dict[str, Any], repeats: int) -> dict[str, list[float]]:
    """ms per call of each run: blocks of calls per run (2 warm-up calls each), all runs twice. Blocks, not
    call by call: a runtime's idle worker threads spin a while after each call and would slow the next one's."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(2):
        for name, run in runs.items():
            for i in range(max(1, repeats // 2) + 2):
                start = time.perf_counter()
                run()
                if i >= 2:
                    times[name].append((time.perf_counter() - start) * 1000.0)
    return times


def _task(bundle: Any, backend: Any, encoded: Any, size: tuple[int, int], dtype: str, box: Any) -> Any:
    """One cached 1-box prompt-segment as the service runs it (decoder + post-processing), no HTTP."""
    from service.tasks.heads import Heads
    from service.tasks.prompt import segment_prompts
    from service.timing import Timings

    heads = Heads(bundle, backend, lambda entry: None)
    entry = _entry(bundle, encoded, 0, size, dtype)
    return lambda: segment_prompts(heads, entry, [box], False, Timings())


def figures(
    bundle_dir: Path, size: tuple[int, int], repeats: int = 20, photo: tuple[int, int] | None = None
) -> dict[str, Any]:
    """All in-process figures (one backend at a time: memory). The official decoder comparison needs a vit_b
    bundle (segment_anything builds vit_b); for other models it is reported as skipped. `mask_render`: one
    trained-like mask at `size` and `photo` (benchmarks/mask_render.py); `floor`: the CPU work per extra box and
    the floor it sets (benchmarks/interactive_floor.py)."""
    from interactive_floor import floor as cpu_floor
    from mask_render import figures as mask_render_figures

    from samclip_bundle.manifest import Manifest

    out: dict[str, Any] = {
        "decoder_parity": decoder_parity(bundle_dir, size),
        "storage_parity": storage_parity(bundle_dir, size),
    }
    model = Manifest.read(bundle_dir).model.name
    if model == "vit_b":
        out["official"] = official_decoder(bundle_dir, size, repeats)
    else:
        out["official"] = {"skipped": f"segment_anything's SamOnnxModel is built for vit_b, not {model}"}
    out["mask_render"] = mask_render_figures([size] + ([photo] if photo else []), max(repeats, 20))
    out["floor"] = cpu_floor(bundle_dir, size)
    return out
