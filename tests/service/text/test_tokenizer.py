"""ClipTokenizer (tokenizers + tokenizer.json, no torch) gives the same ids as open_clip.tokenize."""

from __future__ import annotations

import numpy as np
import pytest

from service.bundle import Bundle
from service.text.tokenizer import ClipTokenizer, clean_text

open_clip = pytest.importorskip("open_clip")

TEXTS = [
    "a photo of a dog.",
    "A Photo Of A DOG!!",
    "  leading and   inner\twhitespace\n",
    "html &amp;lt;b&amp;gt; entities &quot;quoted&quot;",
    "mojibake cafÃ© and naïve ﬁsh",
    "don't won't it's we'll they're I'm",
    "numbers 12345 and 3.14159, emoji 🐶🐕",
    "中文 日本語 한국어 العربية",
    "",
    "word " * 120,  # truncated: eot kept last
    "a-b_c/d\\e|f~g`h^i",
]


@pytest.fixture(scope="module")
def tokenizer(tiny_bundle) -> ClipTokenizer:
    return ClipTokenizer.from_bundle(Bundle.load(tiny_bundle))


def test_ids_equal_open_clip(tokenizer: ClipTokenizer) -> None:
    ours = tokenizer(TEXTS)
    ref = open_clip.tokenize(TEXTS).numpy()
    assert ours.dtype == np.int64 and ours.shape == (len(TEXTS), 77)
    np.testing.assert_array_equal(ours, ref)


def test_truncation_keeps_eot_last_and_padding_is_zero(tokenizer: ClipTokenizer) -> None:
    long, short = tokenizer(["word " * 120, "dog"])
    assert long[0] == tokenizer.sot_token_id and long[-1] == tokenizer.eot_token_id
    assert short[0] == tokenizer.sot_token_id and short[2] == tokenizer.eot_token_id and not short[3:].any()


def test_single_string_and_clean_text(tokenizer: ClipTokenizer) -> None:
    assert tokenizer("dog").shape == (1, 77)
    assert clean_text("  A &amp;amp;  B\n") == "a & b"
