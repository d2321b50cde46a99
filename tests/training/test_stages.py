"""Merging stages: losses go down, frozen parts stay bit-identical, learning-rate groups as in the seed."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from model_export.build import build_model
from model_export.checkpoint import load_samclip, read_state_dict
from training.data.datasets import ImageFolderImages, SA1BDataset
from training.stages import MergeObjective, set_trainable
from training.teachers import SamTeacher, copy_text_tower, load_clip_teacher
from training.train import build_student, lr_factor, run_stage


def _parts(sd: dict, prefix: str) -> dict:
    return {k: v for k, v in sd.items() if k.startswith(prefix)}


def _equal(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_lr_groups_stage2(test_config):
    stage = test_config.stage("2")
    model = build_model("demo", seed=0)
    groups = {g["name"]: g for g in set_trainable(model, stage)}
    assert groups["clip_head"]["lr"] == stage.lr
    assert groups["backbone"]["lr"] == stage.lr * 0.1
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    backbone = ids(
        [
            *model.image_encoder.parameters(),
            *model.prompt_encoder.parameters(),
            *model.mask_decoder.parameters(),
        ]
    )
    assert ids(groups["backbone"]["params"]) == backbone
    assert ids(groups["clip_head"]["params"]) == ids(model.clip_head.parameters())
    assert not any(p.requires_grad for p in model.text_encoder.parameters())
    assert not model.logit_scale.requires_grad


def test_lr_groups_stage1_only_head(test_config):
    model = build_model("demo", seed=0)
    groups = set_trainable(model, test_config.stage("1"))
    assert [g["name"] for g in groups] == ["clip_head"]
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"clip_head"}


def test_stage2_steps_lower_clip_and_sam_losses(test_config, shapes_data):
    cfg = test_config
    stage = dataclasses.replace(cfg.stage("2"), lr=3e-3)
    clip_teacher = load_clip_teacher(cfg.teacher)
    student = build_student(cfg, None, clip_teacher.model).train()
    sam_teacher = SamTeacher(build_model("demo", seed=7))  # differs from the student: SAM loss starts > 0
    optim = torch.optim.AdamW(set_trainable(student, stage), weight_decay=0.0)
    objective = MergeObjective(student, clip_teacher, sam_teacher, stage)
    clip_batch = torch.stack([ImageFolderImages(shapes_data)[(i, 64)] for i in range(4)])
    sam_ds = SA1BDataset(shapes_data, 128, 2)
    sam_batch = torch.utils.data.default_collate([sam_ds[i] for i in range(2)])
    history = []
    for _ in range(8):
        loss, logs = objective(clip_batch, sam_batch, seed=0)
        optim.zero_grad()
        loss.backward()
        optim.step()
        history.append(logs)
    for key in ("clip", "sam", "dense"):
        assert history[-1][key] < history[0][key], (key, [h[key] for h in history])


def test_stage1_and_stage3_keep_frozen_parts_bit_identical(test_config, teacher_files, tmp_path):
    s1 = run_stage(test_config, "1", tmp_path / "s1")
    m1, meta = load_samclip(s1)
    assert meta["extra"]["stage"] == "1"
    sd1 = m1.state_dict()
    sam = read_state_dict(teacher_files["sam"])
    for prefix in ("image_encoder.", "prompt_encoder.", "mask_decoder."):
        assert _equal(_parts(sd1, prefix), _parts(sam, prefix)), prefix
    ref = build_model("demo", seed=0)
    copy_text_tower(load_clip_teacher(test_config.teacher).model, ref)
    ref_sd = ref.state_dict()
    assert _equal(_parts(sd1, "text_encoder."), _parts(ref_sd, "text_encoder."))
    assert torch.equal(sd1["logit_scale"], ref_sd["logit_scale"])
    assert not _equal(_parts(sd1, "clip_head."), _parts(ref_sd, "clip_head."))

    s3 = run_stage(test_config, "3", tmp_path / "s3", init=str(s1))
    sd3 = load_samclip(s3)[0].state_dict()
    frozen = [k for k in sd1 if not k.startswith("clip_head.")]
    assert all(torch.equal(sd1[k], sd3[k]) for k in frozen)
    assert not _equal(_parts(sd1, "clip_head."), _parts(sd3, "clip_head."))
    records = [json.loads(line) for line in (tmp_path / "s3" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "step" in r] == list(range(test_config.stage("3").steps))


def test_resume_continues_from_saved_step(test_config, tmp_path):
    cfg = test_config
    short = cfg.replace(stages={**cfg.stages, "1": dataclasses.replace(cfg.stage("1"), steps=2)})
    run_stage(short, "1", tmp_path / "r")
    state = torch.load(tmp_path / "r" / "state.pt", weights_only=True)
    assert int(state["step"]) == 2
    run_stage(cfg, "1", tmp_path / "r", resume=True)
    records = [json.loads(line) for line in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "step" in r] == [0, 1, 2, 3]


def test_lr_schedule_applies_to_the_configured_base_lrs(test_config, tmp_path):
    stage = dataclasses.replace(test_config.stage("2"), steps=4, warmup_steps=2, lr=1e-3)
    cfg = test_config.replace(stages={"2": stage})
    run_stage(cfg, "2", tmp_path / "lr")
    groups = torch.load(tmp_path / "lr" / "state.pt", weights_only=True)["optim"]["param_groups"]
    factor = lr_factor(3, 4, 2)  # lr of the last step (cosine after a linear warm-up)
    assert [g["lr"] for g in groups] == pytest.approx([1e-3 * factor, 1e-4 * factor])


def test_frozen_stage_cache_matches_fresh_features_and_skips_the_encoder(test_config, shapes_data):
    cfg = test_config
    stage = dataclasses.replace(cfg.stage("1"), dense_weight=1.0, clip_weight=0.0)
    clip_teacher = load_clip_teacher(cfg.teacher)
    student = build_student(cfg, None, clip_teacher.model).train()
    set_trainable(student, stage)
    objective = MergeObjective(student, clip_teacher, None, stage)
    sam_ds = SA1BDataset(shapes_data, 128, 4, backgrounds=True)
    batch = torch.utils.data.default_collate([sam_ds[i] for i in range(2)])
    fresh = objective(None, batch)[1]["dense"]
    calls = []
    hook = student.image_encoder.register_forward_hook(lambda *a: calls.append(1))
    cached = objective(None, batch)[1]["dense"]
    hook.remove()
    assert calls == []  # second pass: tokens and targets from the cache
    assert cached == pytest.approx(fresh, rel=2e-3)
    uncached = MergeObjective(student, clip_teacher, None, dataclasses.replace(stage, train="all"))
    assert uncached(None, batch)[1]["dense"] == pytest.approx(fresh, rel=2e-3)
    other = {**batch, "index": batch["index"] + 100}  # another record: a miss, the encoder runs again
    objective(None, other)
    assert len(objective.cache.store) == 8
    per_entry = objective.cache.bytes // 8
    bounded = MergeObjective(student, clip_teacher, None, dataclasses.replace(stage, dense_cache_gib=0))
    bounded.cache.max_bytes = 3 * per_entry  # room for 3 of the 4 entries of one batch
    bounded(None, batch)
    assert len(bounded.cache.store) == 3 and bounded.cache.bytes <= 3 * per_entry
