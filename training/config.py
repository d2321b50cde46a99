"""Training configs: frozen dataclasses read from JSON (``training/configs/{paper,demo,test}.json``).

A config names the student architecture (a model_export config name or JSON path), the teachers, the data
folders and one :class:`StageConfig` per stage ("1" probing, "2" joint fine-tuning, "3" resolution adaptation).
Paths may be overridden on the command line (see ``training.train``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass(frozen=True)
class StageConfig:
    """One training stage.

    train: which parts get gradients: "clip_head" (stages 1 and 3) or "all" (stage 2; text tower stays frozen).
    clip_resolutions: square input sides for CLIP distillation, one per batch (per-resolution batch sampler).
    clip_batch: CLIP images per step (global, split over ranks); sam_batch: SAM images per step, each with
    masks_per_image prompts. lr: CLIP-head learning rate; encoder and SAM head get lr * backbone_lr_scale.
    clip_weight : sam_weight is the paper's 1 : 10; dense_weight > 0 enables the (documented) dense
    mask-level CLIP distillation on SAM-data images (0 = the paper's recipe exactly); dense_object_weight
    up-weights patches covered by objects (weight 1 + dense_object_weight * coverage); dense_batch: how many of
    the SAM images get the dense loss (0 = all); dense_cache_gib: per-process memory bound of the dense
    targets / frozen-encoder tokens cache (training.stages.FeatureCache; 0 = no cache).
    """

    steps: int
    train: str = "clip_head"
    clip_resolutions: tuple[int, ...] = (224, 448)
    clip_batch: int = 32
    sam_batch: int = 0
    masks_per_image: int = 8
    sam_resolution: int = 0
    lr: float = 1e-3
    backbone_lr_scale: float = 0.1
    weight_decay: float = 0.05
    warmup_steps: int = 0
    clip_weight: float = 1.0
    sam_weight: float = 10.0
    dense_weight: float = 0.0
    dense_object_weight: float = 0.0
    dense_batch: int = 0
    dense_cache_gib: float = 2.0


@dataclass(frozen=True)
class TeacherConfig:
    """CLIP teacher: an OpenCLIP model name (``open_clip.create_model``) with an optional pretrained file and
    optional model-config JSON registered with ``open_clip.add_model_config`` (custom architectures)."""

    clip_model: str = "ViT-L-14"
    clip_pretrained: str = ""
    clip_model_config: str = ""
    clip_image_size: int = 224
    sam_checkpoint: str = ""


@dataclass(frozen=True)
class TrainConfig:
    model: str
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    clip_images: str = ""
    sam_data: str = ""
    stages: dict[str, StageConfig] = field(default_factory=dict)
    seed: int = 0
    bf16: bool = False
    log_every: int = 10
    ckpt_every: int = 200
    threads: int = 0

    def stage(self, name: str | int) -> StageConfig:
        if str(name) not in self.stages:
            raise KeyError(f"stage {name} not in config (have {sorted(self.stages)})")
        return self.stages[str(name)]

    def replace(self, **kw: Any) -> TrainConfig:
        return dataclasses.replace(self, **kw)


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; allowed {sorted(names)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    data = dict(data)
    data.pop("description", None)
    data["teacher"] = _build(TeacherConfig, data.get("teacher", {}), "teacher")
    data["stages"] = {k: _build(StageConfig, v, f"stages.{k}") for k, v in data.get("stages", {}).items()}
    return _build(TrainConfig, data, "config")


def load_train_config(name_or_path: str | Path) -> TrainConfig:
    """Load ``training/configs/<name>.json`` or a JSON file path."""
    path = Path(name_or_path)
    if not path.is_file():
        path = CONFIG_DIR / f"{name_or_path}.json"
    return config_from_dict(json.loads(path.read_text()))
