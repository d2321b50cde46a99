"""Smoke test of benchmarks/service_latency.py: the real script, a real server subprocess, the tiny bundle.

Only checks that one run produces every figure with a sane value; nothing is asserted on speed.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "service_latency.py"

POSITIVE_MS = [
    "cold_ms",
    "cached_prompt_ms",
    "embed_ms",
    "refine_new_image_ms",
    "encoder_stage_embed_ms",
    "encoder_stage_refine_ms",
    "text_miss_stage_ms",
    "text_miss_request_ms",
    "text_hit_request_ms",
    "overhead_cached_ms",
    "overhead_cold_ms",
    "decoder_cached_ms",
    "postprocess_cached_ms",
    "transport_cached_ms",
    "decode_cold_ms",
    "preprocess_cold_ms",
    "postprocess_cold_ms",
    "transport_cold_ms",
    "cached_over_cold",
    "cold_over_cached",
    "refine_over_embed",
    "overhead_cold_fraction",
]


@pytest.fixture(scope="module")
def bench(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("service_latency") / "result.json"
    cmd = [sys.executable, str(SCRIPT), "--bundle", str(tiny_bundle), "--repeats", "1"]
    cmd += ["--cached-repeats", "2", "--width", "600", "--height", "400", "--json", str(out)]
    cmd += ["--photo-width", "800", "--photo-height", "600", "--boxes", "1,2"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(out.read_text()), proc.stdout


def test_json_has_every_field_with_sane_values(bench: tuple[dict, str]) -> None:
    result, _ = bench
    for key in POSITIVE_MS:
        value = result[key]
        assert isinstance(value, float) and math.isfinite(value) and value > 0, (key, value)
    assert result["model"] == "tiny" and result["requested_backend"] == "(server default)"
    assert result["backend"] == result["selection"]["backend"]  # the default path, as the server chose it
    assert result["repeats"] == 1 and result["cached_repeats"] == 2 and len(result["cold_ms_all"]) == 1
    assert result["image"] == "600x400 JPEG"
    assert result["queue_cold_ms"] >= 0 and isinstance(result["text_miss_cost_ms"], float)
    # one encoder pass per new image on refine (read from the server's /metrics counter)
    assert result["encoder_runs_per_refine"] == 1.0
    # derived figures are consistent with the medians they come from
    assert result["cached_over_cold"] == pytest.approx(result["cached_prompt_ms"] / result["cold_ms"])
    assert result["refine_over_embed"] == pytest.approx(result["refine_new_image_ms"] / result["embed_ms"])
    assert result["overhead_cached_ms"] <= result["cached_prompt_ms"]
    assert result["overhead_cold_ms"] <= result["cold_ms"]
    assert result["overhead_cold_fraction"] <= 1.0
    # per-request Server-Timing stage medians: the encoder ran on new images only, the decoder on prompts
    stages = result["stages_ms"]
    assert set(stages) == {"cold", "cached", "embed", "refine", "text_miss"}
    assert stages["cold"]["encoder"] > 0 and stages["cold"]["decoder"] > 0 and stages["cold"]["total"] > 0
    assert "encoder" not in stages["cached"] and stages["cached"]["decoder"] > 0
    assert stages["refine"]["encoder"] > 0 and stages["refine"]["head"] > 0
    assert "decoder" not in stages["embed"] and stages["text_miss"]["text"] > 0


def test_prints_the_table(bench: tuple[dict, str]) -> None:
    _, stdout = bench
    assert "cold /segment/prompt" in stdout and "refine/embed" in stdout and "ratio to cold" in stdout
    assert "interactive path (issue 16)" in stdout and "each extra box" in stdout
    assert "cached 1 box, 250 ms after the last request" in stdout


def test_interactive_figures_against_the_previous_path(bench: tuple[dict, str]) -> None:
    """The issue-16 figures of the same run: new vs previous path over HTTP, parity and storage in-process."""
    result, _ = bench
    http = result["interactive"]
    for k in ("1", "2"):
        for side in ("new", "old"):
            fig = http["cached_prompt"]["boxes"][k][side]
            assert fig["wall_ms"] > 0 and fig["decoder_ms"] > 0 and fig["postprocess_ms"] > 0
    assert math.isfinite(http["cached_prompt"]["extra_box_ms_new"])
    paced = http["cached_prompt"]["paced"]  # the 1-box request after 250 ms idle, on both servers
    assert paced["gap_ms"] == 250 and paced["new"]["wall_ms"] > paced["new"]["decoder_ms"] > 0
    assert paced["old"]["wall_ms"] > 0 and paced["ratio"] > 0
    for name in ("segment_text", "refine", "prompt_box"):
        fig = http["photo"][name]
        assert fig["new_postprocess_ms"] > 0 and fig["old_postprocess_ms"] > 0 and fig["ratio"] > 0
    assert http["photo"]["image"] == "800x600 JPEG" and http["photo"]["concurrent_refines"]["new"] > 0
    # float16 entries (the default) hold half the bytes of the previous path's float32 ones (+ fixed overhead)
    sizes = http["entry_bytes"]
    assert 0.45 < sizes["new"]["mean_entry_bytes"] / sizes["old"]["mean_entry_bytes"] < 0.55
    offline = result["offline"]
    assert offline["decoder_parity"]["mask_iou"] >= 0.97
    assert (
        offline["storage_parity"]["mask_iou"] >= 0.99
        and offline["storage_parity"]["text_segment_iou"] >= 0.98
        and offline["storage_parity"]["decoder_fed"]["float32"] == "float32"
    )
    assert "skipped" in offline["official"]  # segment_anything's vit_b only
    # the trained-like mask figure at both sizes (smaller than the 1024 input frame: no runs path), same JSON
    render = offline["mask_render"]
    assert [tuple(f["size"]) for f in render] == [(400, 600), (600, 800)]
    assert all(f["same_json"] and "runs" not in f["ms"] and f["ms"]["bitmap"] > 0 for f in render)


def test_floor_per_extra_box_from_the_work_at_one_thread(bench: tuple[dict, str]) -> None:
    """benchmarks/interactive_floor.py in the same run: the work at 1 thread and the floor it implies."""
    result, stdout = bench
    fig = result["offline"]["floor"]
    assert fig["cpus"] >= 1 and fig["size"] == [400, 600]
    for side in ("one_thread", "default"):
        times = fig[side]
        assert all(math.isfinite(v) and v > 0 for k, v in times.items() if k != "decoder_extra_box_ms")
        extra = (times["decoder_4_box_ms"] - times["decoder_1_box_ms"]) / 3
        assert times["decoder_extra_box_ms"] == pytest.approx(extra, abs=0.01)
    work = fig["one_thread"]
    for kind in ("random_init", "trained_like"):
        expected = (work["decoder_extra_box_ms"] + work[f"finish_{kind}_ms"]) / fig["cpus"]
        assert fig["floor_ms"][kind] == pytest.approx(expected, abs=0.01)
    assert f"floor per extra box on {fig['cpus']} CPUs" in stdout


def test_mask_render_times_the_runs_path_where_it_applies() -> None:
    sys.path.insert(0, str(SCRIPT.parent))
    from mask_render import figures

    (fig,) = figures([(1100, 1650)], repeats=2)
    assert fig["same_json"] and fig["rle_chars"] > 0
    assert set(fig["ms"]) == {"runs", "bitmap", "plain"} and fig["runs_over_plain"] > 0


def _module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("service_latency", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules["service_latency"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_parse_server_timing_reads_stages_and_cache() -> None:
    header = (
        'decode;dur=1.50, encoder;dur=300.25, decoder;dur=4, decoder;dur=1, cache;desc="miss", total;dur=320'
    )
    stages, cache = _module().parse_server_timing(header)
    assert cache == "miss"
    assert stages == {"decode": 1.5, "encoder": 300.25, "decoder": 5.0, "total": 320.0}


def test_generated_images_are_distinct_jpegs_of_the_asked_size() -> None:
    import io

    from PIL import Image

    module = _module()
    a, b = module.make_jpeg(0, 150, 100), module.make_jpeg(1, 150, 100)
    assert a != b and a == module.make_jpeg(0, 150, 100)
    with Image.open(io.BytesIO(a)) as img:
        assert img.format == "JPEG" and img.size == (150, 100)
