"""The tiny byte-level BPE tokenizer: determinism, special tokens, round trips, id range."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer

from acestep_edge.models.config import tiny
from acestep_edge.models.tiny_tokenizer import ENDOFTEXT, IM_END, IM_START, build_tokenizer

TEXTS = [
    "An upbeat pop song with bright synthesizers at 120 BPM.",
    "# Languages\nen\n\n# Lyric\n[Verse]\nWalking down the street\n  double  spaces\ttab\n",
    "Ég sé sólina rísa — Þú ert ljósið mitt",
    "夜空の星が輝いている 我们一起唱歌 사랑해요 🎵🎸",
    "Unseen words: zyxwvut quokka 0123456789 !!?? ~`^",
    "",
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return build_tokenizer()


def test_deterministic():
    assert build_tokenizer().to_str() == build_tokenizer().to_str()
    assert build_tokenizer(400).to_str() == build_tokenizer(400).to_str()


def test_vocab_fits_tiny_text_encoder(tok):
    vocab = tiny().text.vocab_size
    assert tok.get_vocab_size(with_added_tokens=True) <= vocab
    assert max(tok.get_vocab(with_added_tokens=True).values()) < vocab
    # Merges were actually learned: more than the 256 byte symbols plus specials.
    assert tok.get_vocab_size(with_added_tokens=True) > 256 + 3 + 100


@pytest.mark.parametrize("size", [259, 300, 400])
def test_vocab_size_respected(size):
    t = build_tokenizer(size)
    assert max(t.get_vocab(with_added_tokens=True).values()) < size
    ids = t.encode("Þú ert ljósið mitt " + ENDOFTEXT).ids
    assert max(ids) < size


def test_rejects_too_small_vocab():
    with pytest.raises(ValueError, match="at least"):
        build_tokenizer(100)


def test_special_tokens_are_single_ids(tok):
    specials = [tok.token_to_id(s) for s in (ENDOFTEXT, IM_START, IM_END)]
    assert None not in specials and len(set(specials)) == 3
    eot = specials[0]
    for prompt in ("# Lyric\nhello" + ENDOFTEXT, "abc" + ENDOFTEXT + "def", ENDOFTEXT):
        ids = tok.encode(prompt).ids
        assert ids.count(eot) == 1
        # The literal text is not also spelled out in byte tokens.
        assert tok.decode(ids, skip_special_tokens=True) == prompt.replace(ENDOFTEXT, "")
    assert tok.encode(IM_START + "user" + IM_END).ids[0] == specials[1]


def test_no_eos_appended(tok):
    eot = tok.token_to_id(ENDOFTEXT)
    assert eot not in tok.encode("a caption without an end token").ids
    assert tok.encode("x" + ENDOFTEXT).ids[-1] == eot
    assert tok.encode("x" + ENDOFTEXT).ids[-2] != eot


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(tok, text):
    ids = tok.encode(text).ids
    assert tok.decode(ids) == text
    assert tok.decode(tok.encode(text + ENDOFTEXT).ids, skip_special_tokens=False) == text + ENDOFTEXT


def test_merges_compress_known_text(tok):
    text = "The tempo is around 120 BPM with drums and a catchy vocal."
    assert len(tok.encode(text).ids) < len(text.encode("utf-8")) * 0.6


def test_nfc_normalization(tok):
    composed, decomposed = "\u00e9", "e\u0301"
    assert tok.encode(decomposed).ids == tok.encode(composed).ids


def test_serialized_form_reloads(tok):
    again = Tokenizer.from_str(tok.to_str())
    for text in TEXTS:
        assert again.encode(text + ENDOFTEXT).ids == tok.encode(text + ENDOFTEXT).ids
