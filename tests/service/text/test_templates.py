"""The 80 prompt templates are open_clip's own OpenAI ImageNet list, and the ensemble rule is the CLIP paper's."""

from __future__ import annotations

import numpy as np
import pytest

from service.text.templates import OPENAI_IMAGENET_TEMPLATES, ensemble, expand


def test_templates_equal_open_clips_list() -> None:
    metadata = pytest.importorskip("open_clip.zero_shot_metadata", reason="needs open_clip (dev extra)")
    theirs = [t("{}") if callable(t) else t for t in metadata.OPENAI_IMAGENET_TEMPLATES]
    assert list(OPENAI_IMAGENET_TEMPLATES) == theirs and len(theirs) == 80


def test_expand_and_ensemble() -> None:
    prompts = expand("dog")
    assert len(prompts) == 80 and prompts[0] == OPENAI_IMAGENET_TEMPLATES[0].format("dog")
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(80, 16)).astype(np.float32)
    out = ensemble(emb)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    ref = unit.mean(0) / np.linalg.norm(unit.mean(0))
    np.testing.assert_allclose(out, ref, rtol=1e-5)
    assert out.dtype == np.float32
