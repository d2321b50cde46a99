"""tokenizer.json + ClipTokenizer reproduce open_clip.tokenize exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest

open_clip = pytest.importorskip("open_clip")

from model_export.tokenizer import (  # noqa: E402
    EOT_TOKEN_ID,
    SOT_TOKEN_ID,
    ClipTokenizer,
    build_tokenizer_json,
)

TEXTS = [
    "a photo of a cat",
    "",
    "   ",
    "A PHOTO OF A DOG.",
    "Hello, World!!!",
    "it's a dog's life; they're here, we've gone, I'm ok, you'll see, he'd go",
    "naïve café résumé",
    "東京タワー と 富士山",
    "Привет, мир",
    "مرحبا بالعالم",
    "🙂👍🏽 emoji 🚀🚀",
    "numbers 1234567890 and 3.14159",
    "e.g. foo_bar/baz?q=1&x=2 -- ok...",
    "&amp; &lt;b&gt;bold&lt;/b&gt; &quot;quoted&quot;",
    "tab\tnew\nline\u00a0nbsp\u2003emspace",
    "ＦＵＬＬ ＷＩＤＴＨ ｔｅｘｔ",
    "ÀÉÎÕÜ ß İstanbul ǅ",
    "schÃ¶n mojibake",
    "<start_of_text> literal specials <end_of_text>",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "a diagram of a transformer",
    "x" * 300,
    "word " * 100,
    "the quick brown fox jumps over the lazy dog " * 6,
    "##$$%%^^&&**(())",
    "'quoted' \"double\" `back`",
    "Ωmega ∑ ∫ √ ≠ ≤",
    "ﬁ ligature and ½ fraction",
    "zero\u200bwidth\u200djoiner",
    "ends with space ",
]


@pytest.fixture(scope="module")
def tok_path(tmp_path_factory):
    return build_tokenizer_json(tmp_path_factory.mktemp("tok") / "tokenizer.json")


def test_ids_match_open_clip(tok_path):
    tok = ClipTokenizer(tok_path)
    got = tok.encode_batch(TEXTS)
    want = open_clip.tokenize(TEXTS).numpy()
    assert got.dtype == np.int64 and got.shape == (len(TEXTS), 77)
    mismatched = [TEXTS[i] for i in range(len(TEXTS)) if not np.array_equal(got[i], want[i])]
    assert not mismatched
    assert (got[:, 0] == SOT_TOKEN_ID).all()
    assert got[TEXTS.index("word " * 100), -1] == EOT_TOKEN_ID  # truncated, EOT kept last
    assert got[1, :3].tolist() == [SOT_TOKEN_ID, EOT_TOKEN_ID, 0]  # empty string


def test_other_context_length_and_single_string(tok_path):
    tok = ClipTokenizer(tok_path)
    got = tok.encode_batch(TEXTS, context_length=16)
    assert np.array_equal(got, open_clip.tokenize(TEXTS, context_length=16).numpy())
    assert np.array_equal(tok.encode_batch("a cat"), open_clip.tokenize(["a cat"]).numpy())
    assert tok.encode_batch([]).shape == (0, 77)


def test_tokenizer_json_layout(tok_path):
    data = json.loads(tok_path.read_text(encoding="utf-8"))
    assert data["model"]["type"] == "BPE" and data["model"]["end_of_word_suffix"] == "</w>"
    vocab = data["model"]["vocab"]
    assert len(vocab) == 49408
    assert vocab["<start_of_text>"] == SOT_TOKEN_ID and vocab["<end_of_text>"] == EOT_TOKEN_ID
