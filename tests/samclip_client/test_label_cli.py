"""`samclip label` end to end: real server on the demo bundle, real files, COCO output read by pycocotools.

Covers: COCO() loads the output and COCOeval scores it against generated ground truth; a re-run resumes (only
new images are sent: the server's request counter says so; ids of earlier images do not change), also from
the output file alone; a bad image fails alone (exit 1) and is retried by the next run; a run with other texts
is refused; requests really run concurrently (a slow scripted server sees several at once).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
from pathlib import Path

import pytest
from client_support import Script, image_json, requests_total, scripted_server
from pycocotools.coco import COCO

from benchmarks.label_coco_eval import held_out_scenes, measure, write_dataset
from samclip_client.cli import main
from samclip_client.coco import STATE_SUFFIX, LabelState, header

TEXTS = ["red circle", "blue square"]


def label(*args: str) -> int:
    with contextlib.redirect_stderr(io.StringIO()):
        return main(["label", *args, "--no-progress"])


def test_cli_output_is_coco_and_evaluates(demo_server: str, tmp_path: Path) -> None:
    figures = measure(["red circle"], 6, demo_server, tmp_path)  # the real CLI in a subprocess
    coco = COCO(str(tmp_path / "labels.json"))
    assert len(coco.getImgIds()) == 6 and [c["name"] for c in coco.loadCats(coco.getCatIds())] == [
        "red circle"
    ]
    for ann in coco.loadAnns(coco.getAnnIds()):
        mask = coco.annToMask(ann)
        assert mask.sum() == ann["area"] > 0 and ann["iscrowd"] == 0 and ann["instance"] >= 0
        assert 0.0 <= ann["score"] <= 1.0
    assert figures["images"] == 6 and figures["detections"] >= 6
    assert figures["AP50"] >= 0.5  # 0.95 on the 20-scene README set; chance is far below


def test_resume_skips_done_images(demo_server: str, tmp_path: Path) -> None:
    write_dataset(tmp_path, held_out_scenes(6, "red circle", first_seed=710_000), TEXTS)
    images = sorted(str(p) for p in (tmp_path / "images").glob("*.png"))
    out = tmp_path / "out" / "coco.json"
    common = ["--text", TEXTS[0], "--text", TEXTS[1], "--url", demo_server, "--out", str(out)]
    before = requests_total(demo_server, "/segment", 200)
    assert label(*images[:3], *common, "--concurrency", "2") == 0
    first = json.loads(out.read_text())
    assert label(str(tmp_path / "images"), *common) == 0  # the folder: 3 new images
    assert requests_total(demo_server, "/segment", 200) - before == 6
    second = json.loads(out.read_text())
    assert second["images"][:3] == first["images"] and len(second["images"]) == 6
    assert second["annotations"][: len(first["annotations"])] == first["annotations"]
    assert [c["name"] for c in second["categories"]] == TEXTS
    by_name = {img["file_name"]: img for img in second["images"]}
    for path in images:
        assert by_name[path]["samclip_image_id"] == hashlib.sha256(Path(path).read_bytes()).hexdigest()
    out.with_name(out.name + STATE_SUFFIX).unlink()  # resume from the output file alone
    assert label(*images, *common) == 0
    assert requests_total(demo_server, "/segment", 200) - before == 6
    assert json.loads(out.read_text()) == second
    with pytest.raises(SystemExit, match="was made with"):
        label(*images, "--text", "green triangle", "--url", demo_server, "--out", str(out))


def test_a_bad_image_fails_alone_and_is_retried(demo_server: str, tmp_path: Path) -> None:
    write_dataset(tmp_path, held_out_scenes(2, "red circle", first_seed=720_000), TEXTS)
    bad = tmp_path / "images" / "zz_bad.png"
    bad.write_bytes(b"not an image at all")
    out = tmp_path / "coco.json"
    common = ["--text", TEXTS[0], "--url", demo_server, "--out", str(out)]
    assert label(str(tmp_path / "images"), *common) == 1
    assert sorted(img["file_name"] for img in json.loads(out.read_text())["images"]) == sorted(
        str(p) for p in (tmp_path / "images").glob("scene_*.png")
    )
    shutil.copy(next((tmp_path / "images").glob("scene_*.png")), bad)
    before = requests_total(demo_server, "/segment", 200)
    assert label(str(tmp_path / "images"), *common) == 0
    assert requests_total(demo_server, "/segment", 200) - before == 1
    assert len(json.loads(out.read_text())["images"]) == 3


def test_requests_are_concurrent_and_unreachable_servers_stop_the_run(tmp_path: Path) -> None:
    paths = []
    for i in range(6):
        paths.append(tmp_path / f"{i}.png")
        paths[-1].write_bytes(f"image {i}".encode())

    def answer(seen) -> dict:
        return image_json(seen.headers["X-Image-Id"], masks=[], background_prompts=["background"])

    script = Script(default=(200, {}, answer), delay_s=0.3)
    with scripted_server(script) as url:
        assert label(*map(str, paths), "--text", "dog", "--url", url, "--out", str(tmp_path / "a.json"),
                     "--concurrency", "3") == 0  # fmt: skip
    assert len(script.seen) == 6 and script.max_in_flight == 3
    assert len(json.loads((tmp_path / "a.json").read_text())["images"]) == 6
    gone = f"http://127.0.0.1:{int(url.rsplit(':', 1)[1])}"  # that server is shut down now
    assert label(*map(str, paths), "--text", "dog", "--url", gone, "--out", str(tmp_path / "b.json")) == 1
    assert json.loads((tmp_path / "b.json").read_text())["images"] == []


def test_state_file_survives_a_torn_last_line(tmp_path: Path) -> None:
    out = tmp_path / "coco.json"
    head = header(["dog"], False, {})
    state = LabelState(out, head)
    record = {"file_name": "a.png", "width": 2, "height": 2, "samclip_image_id": "0" * 64, "annotations": []}
    state.append(record)
    with state.path.open("a") as f:
        f.write('{"file_name": "b.png", "wid')  # killed mid-write
    again = LabelState(out, head)
    assert again.done == {"a.png"}
    again.append({**record, "file_name": "c.png"})
    assert [r["file_name"] for r in LabelState(out, head).records] == ["a.png", "c.png"]
    coco = again.write_coco()
    assert [img["id"] for img in coco["images"]] == [1, 2]
