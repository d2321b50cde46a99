"""COCO instances JSON from labelling results, and the sidecar state file that makes `samclip label` resumable.

Output (`--out coco.json`), loadable by `pycocotools.coco.COCO` and evaluable by `COCOeval` (iouType "segm"):
- images: {"id", "file_name" (the path as given), "width", "height", "samclip_image_id" (sha256 hex)};
- categories: one per `--text`, ids 1..N in the order given, {"id", "name": text, "supercategory": "text"};
- annotations: {"id", "image_id", "category_id", "segmentation": COCO RLE {"size": [H, W], "counts": str},
  "bbox": [x, y, w, h], "area": pixels, "score", "iscrowd": 0} (+ "instance", "text_score" with --instances);
  empty masks are left out. Ids are 1-based in the order images finished (stable across resumes).

State (`<out>.state.jsonl`, append-only): line 1 is the run's header (texts, instances, ...); each further
line is one finished image: {"file_name", "width", "height", "samclip_image_id", "annotations": [...]} (ids
assigned when the COCO file is written). A re-run with the same header skips those images; a torn last line
(killed mid-write) is ignored. Without a state file, an existing `--out` written by this tool seeds it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from samclip_client.results import Mask, MasksResult

STATE_SUFFIX = ".state.jsonl"
FORMAT = "samclip-label/1"
_ANNOTATION_EXTRAS = ("instance", "text_score")


class StateMismatch(Exception):
    """The state / output on disk was made with other texts or options than this run's."""


def header(texts: list[str], instances: bool, options: dict[str, Any]) -> dict[str, Any]:
    """What must match for a resume: the texts (categories), instance mode and its options."""
    return {"format": FORMAT, "texts": list(texts), "instances": instances, "options": options}


def image_record(file_name: str, result: MasksResult, texts: list[str]) -> dict[str, Any]:
    """One labelled image as a state line (annotations without ids). Masks whose label is not one of `texts`
    (none are expected) and empty masks are dropped."""
    categories = {text: i + 1 for i, text in enumerate(texts)}
    annotations = [
        annotation(m, categories[m.label]) for m in result.masks if m.label in categories and m.area > 0
    ]
    return {
        "file_name": file_name,
        "width": result.width,
        "height": result.height,
        "samclip_image_id": result.image_id,
        "annotations": annotations,
    }


def annotation(mask: Mask, category_id: int) -> dict[str, Any]:
    out = {
        "category_id": category_id,
        "segmentation": mask.segmentation,
        "bbox": list(mask.bbox),
        "area": int(mask.area),
        "score": float(mask.score),
        "iscrowd": 0,
    }
    out |= {k: getattr(mask, k) for k in _ANNOTATION_EXTRAS if getattr(mask, k) is not None}
    return out


def to_coco(head: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any]:
    """The COCO instances dict of `records` (state lines), ids assigned in order."""
    images, annotations = [], []
    for image_id, rec in enumerate(records, start=1):
        images.append({"id": image_id, **{k: v for k, v in rec.items() if k != "annotations"}})
        for ann in rec["annotations"]:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **ann})
    categories = [{"id": i + 1, "name": t, "supercategory": "text"} for i, t in enumerate(head["texts"])]
    info = {"description": "samclip label", **head}
    return {"info": info, "images": images, "annotations": annotations, "categories": categories}


def from_coco(coco: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Inverse of to_coco: (header, records) of an output file this tool wrote."""
    info = coco.get("info", {})
    if info.get("format") != FORMAT:
        raise StateMismatch("the output file exists but was not written by `samclip label`")
    head = {k: info[k] for k in ("format", "texts", "instances", "options")}
    by_image: dict[int, list[dict[str, Any]]] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(
            {k: v for k, v in ann.items() if k not in ("id", "image_id")}
        )
    records = [
        {**{k: v for k, v in img.items() if k != "id"}, "annotations": by_image.get(img["id"], [])}
        for img in coco["images"]
    ]
    return head, records


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to `path` via a temporary file in the same folder and os.replace (never half a file)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, path)


class LabelState:
    """The images already labelled for `out` (see the module docstring); `append` records one more."""

    def __init__(self, out: Path, head: dict[str, Any]) -> None:
        self.out = out
        self.path = out.with_name(out.name + STATE_SUFFIX)
        self.head = head
        self.records: list[dict[str, Any]] = []
        self._torn = False
        found = self._read()
        if found is not None and found != head:
            raise StateMismatch(
                f"{self.path if self.path.exists() else out} was made with {found}, not {head}: "
                "use another --out, or delete it (and its state file) to start over"
            )
        if found is None or self._torn or not self.path.exists():
            self._rewrite()
        self.done = {rec["file_name"] for rec in self.records}

    def _read(self) -> dict[str, Any] | None:
        if self.path.exists():
            lines = self.path.read_text(encoding="utf-8").splitlines()
            parsed = []
            for i, line in enumerate(lines):
                try:
                    parsed.append(json.loads(line))
                except json.JSONDecodeError:
                    if i != len(lines) - 1:
                        raise StateMismatch(f"{self.path}: line {i + 1} is not JSON") from None
                    self._torn = True
            if not parsed:
                return None
            self.records = parsed[1:]
            return parsed[0]
        if self.out.exists():
            head, self.records = from_coco(json.loads(self.out.read_text(encoding="utf-8")))
            return head
        return None

    def _rewrite(self) -> None:
        lines = [json.dumps(self.head), *(json.dumps(r) for r in self.records)]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        os.replace(tmp, self.path)

    def append(self, record: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        self.records.append(record)
        self.done.add(record["file_name"])

    def write_coco(self) -> dict[str, Any]:
        coco = to_coco(self.head, self.records)
        write_json_atomic(self.out, coco)
        return coco
