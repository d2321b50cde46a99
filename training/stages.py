"""The seed's merging stages as one objective module (so DDP can wrap it) plus freezing and lr groups.

Stage 1 (CLIP-head probing) and stage 3 (resolution adaptation): only ``clip_head`` trains; encoder, SAM
prompt encoder / mask decoder, text tower and logit scale are frozen. Stage 2 (joint fine-tuning): encoder,
SAM head and CLIP head train; encoder and SAM head at ``lr * backbone_lr_scale`` (the seed: 10x smaller);
the text tower and logit scale stay frozen (they are the CLIP teacher's).

Losses: CLIP distillation (1 - cos between the head's pooled embedding and the teacher's image embedding)
weighted ``clip_weight``; SAM self-distillation (student vs frozen teacher SAM masks and IoUs for the same
prompts) weighted ``sam_weight`` (1 : 10 in the seed); optional dense mask-level CLIP distillation weighted
``dense_weight`` (an addition for the demo, 0 in paper.json; see training/README.md); patches are weighted
``1 + dense_object_weight * object coverage`` so the few object patches are not drowned by background ones.

SAM-data items carry no augmentation, so the dense targets of a (record, mask set) never change and, while the
encoder is frozen (stages 1 and 3), neither do its tokens: :class:`FeatureCache` keeps both (fp16) so later
epochs only run the CLIP head on them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.config import StageConfig
from training.crops import instance_crops, patch_coverage, remove_objects
from training.losses import cosine_distill_loss, dense_distill_loss, sam_distill_loss
from training.sam_ops import batch_prompts, decode_all
from training.teachers import SAM_PARTS, ClipTeacher, SamTeacher

BACKBONE_PARTS = ("image_encoder", *SAM_PARTS[1:])


def set_trainable(model: nn.Module, stage: StageConfig) -> list[dict]:
    """Freeze per stage and return optimizer param groups (named "clip_head" and "backbone")."""
    for p in model.parameters():
        p.requires_grad_(False)
    head = list(model.clip_head.parameters())
    for p in head:
        p.requires_grad_(True)
    groups = [{"name": "clip_head", "params": head, "lr": stage.lr}]
    if stage.train == "all":
        back = [p for part in BACKBONE_PARTS for p in getattr(model, part).parameters()]
        for p in back:
            p.requires_grad_(True)
        groups.append({"name": "backbone", "params": back, "lr": stage.lr * stage.backbone_lr_scale})
    elif stage.train != "clip_head":
        raise ValueError(f"stage.train must be 'clip_head' or 'all', got {stage.train!r}")
    return groups


@torch.no_grad()
def dense_targets(
    teacher: ClipTeacher,
    images: torch.Tensor,
    masks: torch.Tensor,
    valid: torch.Tensor,
    grid: int,
    backgrounds: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-patch CLIP targets from the teacher: each patch's target is the coverage-weighted mix of the
    teacher embeddings of the instance crops covering it and of the object-free image (background).

    images (B, 3, S, S) uint8, masks (B, M, S, S) bool, valid (B, M), backgrounds (B, 3, S, S) uint8 object-free
    images (None: inpainted here from the valid masks) -> (targets (B, grid, grid, D), object coverage
    (B, grid, grid) float in [0, 1])."""
    out, covered = [], []
    size = (teacher.image_size, teacher.image_size)
    for b in range(images.shape[0]):
        m = masks[b][valid[b]]
        crops = instance_crops(images[b], m, teacher.image_size)
        bg = backgrounds[b] if backgrounds is not None else remove_objects(images[b], m)
        bg = F.interpolate(bg[None].float(), size=size, mode="bilinear", antialias=True)
        emb = teacher.encode_image(torch.cat([crops.float(), bg]))
        cov = patch_coverage(m, grid)
        objects = cov.sum(0).clamp(0, 1)
        cov = torch.cat([cov, (1 - objects)[None]])
        out.append(F.normalize(torch.einsum("khw,kd->hwd", cov, emb), dim=-1))
        covered.append(objects)
    return torch.stack(out), torch.stack(covered)


class FeatureCache:
    """Per (record index, sorted mask indices): dense targets + object coverage, and frozen-encoder tokens.

    Values are stored on CPU in fp16, at most `max_bytes` of them (later entries are not kept: at SA-1B scale
    the cache holds a prefix and the rest is recomputed); ``get`` returns float32 on `device`, or None on a miss."""

    def __init__(self, max_bytes: int) -> None:
        self.store: dict[tuple, tuple[torch.Tensor, ...]] = {}
        self.max_bytes, self.bytes = max_bytes, 0

    @staticmethod
    def key(sam: dict, b: int, what: str) -> tuple:
        ann = sam["ann_index"][b]
        return (what, int(sam["index"][b]), tuple(sorted(int(a) for a in ann[sam["valid"][b]])))

    def get(self, sam: dict, n: int, what: str, device: torch.device) -> tuple[torch.Tensor, ...] | None:
        if "index" not in sam:
            return None
        hits = [self.store.get(self.key(sam, b, what)) for b in range(n)]
        if any(h is None for h in hits):
            return None
        return tuple(torch.stack([h[i] for h in hits]).to(device).float() for i in range(len(hits[0])))

    def put(self, sam: dict, what: str, *values: torch.Tensor) -> None:
        if "index" not in sam:
            return
        for b in range(values[0].shape[0]):
            entry = tuple(v[b].detach().to("cpu", torch.float16) for v in values)
            size = sum(v.numel() * v.element_size() for v in entry)
            if self.bytes + size > self.max_bytes:
                return
            self.store[self.key(sam, b, what)] = entry
            self.bytes += size


class MergeObjective(nn.Module):
    """forward(clip_images, sam) -> (total loss, {name: detached loss}); student + frozen teachers."""

    def __init__(
        self,
        student: nn.Module,
        clip_teacher: ClipTeacher,
        sam_teacher: SamTeacher | None,
        stage: StageConfig,
    ) -> None:
        super().__init__()
        self.student, self.clip_teacher, self.sam_teacher, self.stage = (
            student,
            clip_teacher,
            sam_teacher,
            stage,
        )
        self.encoder_frozen = stage.train != "all"
        self.cache = FeatureCache(int(stage.dense_cache_gib * 2**30))

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.student.normalize(images)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.encoder_frozen):
            return self.student.image_encoder(x)

    def clip_loss(self, images: torch.Tensor) -> torch.Tensor:
        target = self.clip_teacher.encode_image(images)
        _, tokens = self.encode(images)
        return cosine_distill_loss(self.student.clip_head(tokens)[0], target)

    def sam_loss(
        self, emb: torch.Tensor, images: torch.Tensor, sam: dict, gen: torch.Generator
    ) -> torch.Tensor:
        with torch.no_grad():
            t_emb, _ = self.sam_teacher.image_encoder(self.student.normalize(images))
        losses = []
        for b, prompts, _ in batch_prompts(sam["masks"], sam["valid"], emb.shape[-1], gen):
            with torch.no_grad():
                t_logits, t_iou = decode_all(self.sam_teacher, t_emb[b : b + 1], prompts)
            s_logits, s_iou = decode_all(self.student, emb[b : b + 1], prompts)
            losses.append(sam_distill_loss(s_logits, t_logits, s_iou, t_iou))
        return torch.stack(losses).mean() if losses else emb.sum() * 0

    def dense_loss(self, sam: dict, tokens: torch.Tensor | None) -> torch.Tensor:
        """Mask-level CLIP distillation on the first ``dense_batch`` SAM images (targets and, with the encoder
        frozen, tokens come from the cache after the first epoch)."""
        images = sam["image"]
        n, device = self.stage.dense_batch or images.shape[0], images.device
        if tokens is None and self.encoder_frozen:
            hit = self.cache.get(sam, n, "tokens", device)
            if hit is None:
                hit = (self.encode(images[:n])[1],)
                self.cache.put(sam, "tokens", *hit)
            tokens = hit[0]
        elif tokens is None:
            tokens = self.encode(images[:n])[1]
        targets = self.cache.get(sam, n, "targets", device)
        if targets is None:
            back = sam["background"][:n] if "background" in sam else None
            grid = tokens.shape[1]
            targets = dense_targets(
                self.clip_teacher, images[:n], sam["masks"][:n], sam["valid"][:n], grid, back
            )
            self.cache.put(sam, "targets", *targets)
        target, objects = targets
        dense = self.student.clip_head(tokens[:n])[1]
        return dense_distill_loss(dense, target, 1.0 + self.stage.dense_object_weight * objects)

    def forward(self, clip_images: torch.Tensor | None, sam: dict | None, seed: int = 0):
        st, logs = self.stage, {}
        total = torch.zeros((), device=self.student.logit_scale.device)
        if clip_images is not None and st.clip_weight > 0:
            logs["clip"] = self.clip_loss(clip_images)
            total = total + st.clip_weight * logs["clip"]
        if sam is not None:
            images, emb, tokens = sam["image"], None, None
            if st.sam_weight > 0 and st.train == "all" and self.sam_teacher is not None:
                emb, tokens = self.encode(images)
                gen = torch.Generator().manual_seed(seed)
                logs["sam"] = self.sam_loss(emb, images, sam, gen)
                total = total + st.sam_weight * logs["sam"]
            if st.dense_weight > 0:
                logs["dense"] = self.dense_loss(sam, tokens)
                total = total + st.dense_weight * logs["dense"]
        return total, {k: float(v.detach()) for k, v in logs.items()}
