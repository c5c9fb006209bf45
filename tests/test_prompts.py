"""Prompt templates, task instructions, metas and tokenizer truncation (runtime/prompts.py)."""

from __future__ import annotations

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from acestep_edge.runtime.prompts import (
    TASK_INSTRUCTIONS,
    PromptTokenizer,
    caption_prompt,
    extract_caption,
    format_metas,
    lyric_prompt,
    task_instruction,
)

EOT = "<|endoftext|>"

# ----------------------------------------------------------------------------- templates


def test_metas_full_example_from_spec():
    assert format_metas(120, 4, "C major", 60) == (
        "- bpm: 120\n- timesignature: 4\n- keyscale: C major\n- duration: 60 seconds\n"
    )


def test_metas_missing_values_read_na():
    assert format_metas(None, None, None, 30.0) == (
        "- bpm: N/A\n- timesignature: N/A\n- keyscale: N/A\n- duration: 30 seconds\n"
    )
    assert format_metas("", " ", "", 10) == (
        "- bpm: N/A\n- timesignature: N/A\n- keyscale: N/A\n- duration: 10 seconds\n"
    )


def test_metas_duration_is_truncated_and_values_verbatim():
    text = format_metas(93, 3, "F# minor", 59.9)
    assert text == "- bpm: 93\n- timesignature: 3\n- keyscale: F# minor\n- duration: 59 seconds\n"
    assert format_metas(140, 6, "B♭ major", 600).splitlines()[2] == "- keyscale: B♭ major"


@pytest.mark.parametrize("given,expected", [("4/4", "4"), ("3/4", "3"), ("6/8", "6"), ("2/4", "2"),
                                            (2, "2"), (6, "6"), ("4", "4"), ("5/4", "5/4")])
def test_metas_time_signature(given, expected):
    assert format_metas(None, given, None, 12).splitlines()[1] == f"- timesignature: {expected}"


@pytest.mark.parametrize("bad", [None, float("nan"), -1, "60", True])
def test_metas_rejects_bad_duration(bad):
    with pytest.raises(ValueError, match="duration"):
        format_metas(120, 4, "C major", bad)


def test_caption_prompt_exact_string():
    metas = format_metas(120, 4, "C major", 60)
    got = caption_prompt("Fill the audio semantic mask based on the given conditions:", "lofi piano", metas)
    assert got == (
        "# Instruction\nFill the audio semantic mask based on the given conditions:\n\n"
        "# Caption\nlofi piano\n\n"
        "# Metas\n- bpm: 120\n- timesignature: 4\n- keyscale: C major\n- duration: 60 seconds\n"
        "<|endoftext|>\n"
    )


def test_caption_prompt_forces_trailing_colon():
    got = caption_prompt("Do the thing", "x", "m\n")
    assert got.startswith("# Instruction\nDo the thing:\n\n# Caption\nx\n\n# Metas\nm\n<|endoftext|>\n")
    assert caption_prompt("Done:", "x", "m\n").startswith("# Instruction\nDone:\n\n")


def test_caption_prompt_extracts_sft_formatted_caption():
    pasted = ("# Instruction\nSomething else:\n\n# Caption\n  dreamy synthwave, 80s drums \n\n"
              "# Metas\n- bpm: 99\n- timesignature: 3\n- keyscale: N/A\n- duration: 5 seconds\n<|endoftext|>\n")
    assert extract_caption(pasted) == "dreamy synthwave, 80s drums"
    got = caption_prompt("Fill:", pasted, "M\n")
    assert got == "# Instruction\nFill:\n\n# Caption\ndreamy synthwave, 80s drums\n\n# Metas\nM\n<|endoftext|>\n"
    assert got.count("# Metas") == 1


def test_plain_caption_is_untouched():
    caption = "rock with # hashtags and a #Caption word"
    assert extract_caption(caption) == caption


def test_lyric_prompt_exact_strings():
    lyrics = "[Verse]\nhello world\n[Chorus]\nla la"
    assert lyric_prompt("en", lyrics) == "# Languages\nen\n\n# Lyric\n[Verse]\nhello world\n[Chorus]\nla la<|endoftext|>"
    assert lyric_prompt("ja", "") == "# Languages\nja\n\n# Lyric\n<|endoftext|>"
    assert lyric_prompt("en", None) == "# Languages\nen\n\n# Lyric\n<|endoftext|>"
    # as the official LYRIC_GEN_PROMPT.format: no "[Instrumental]" is substituted, blanks stay
    assert lyric_prompt(None, "  \n") == "# Languages\nunknown\n\n# Lyric\n  \n<|endoftext|>"


# ----------------------------------------------------------------------------- task instructions


def test_task_instruction_texts():
    assert task_instruction("text2music") == "Fill the audio semantic mask based on the given conditions:"
    assert task_instruction("cover") == "Generate audio semantic tokens based on the given conditions:"
    assert task_instruction("cover-nofsq") == "Generate audio semantic tokens based on the given conditions:"
    assert task_instruction("repaint") == "Repaint the mask area based on the given conditions:"
    assert task_instruction("extract", "vocals") == "Extract the VOCALS track from the audio:"
    assert task_instruction("extract") == "Extract the track from the audio:"
    assert task_instruction("lego", "backing_vocals") == "Generate the BACKING_VOCALS track based on the audio context:"
    assert task_instruction("lego") == "Generate the track based on the audio context:"
    assert task_instruction("complete", track_classes=["drums", "Bass"]) == "Complete the input track with DRUMS | BASS:"
    assert task_instruction("complete", track_classes=["guitar"]) == "Complete the input track with GUITAR:"
    assert task_instruction("complete") == "Complete the input track:"
    assert task_instruction("complete", track_classes=[]) == "Complete the input track:"
    assert set(TASK_INSTRUCTIONS) >= {"text2music", "cover", "repaint", "lego", "extract", "complete"}


def test_task_instruction_rejects_unknown_task_and_track():
    with pytest.raises(ValueError, match="unknown task"):
        task_instruction("remix")
    with pytest.raises(ValueError, match="unknown track"):
        task_instruction("extract", "kazoo")
    with pytest.raises(ValueError, match="list"):
        task_instruction("complete", track_classes="drums")


# ----------------------------------------------------------------------------- tokenizer


WORDS = [f"w{i}" for i in range(40)]


def _tiny_tokenizer(eos_post_processor: bool) -> Tokenizer:
    vocab = {"[UNK]": 0, EOT: 1, "#": 2, ":": 3, "-": 4}
    for word in ["Instruction", "Caption", "Metas", "Languages", "Lyric", "en", "la"] + WORDS:
        vocab[word] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens([EOT])
    if eos_post_processor:  # what current Qwen3-Embedding tokenizer.json files do (a TemplateProcessing post-processor)
        tok.post_processor = processors.TemplateProcessing(single=f"$A {EOT}", special_tokens=[(EOT, 1)])
    tok.enable_padding(length=3000)  # must be switched off by PromptTokenizer
    return tok


@pytest.fixture(params=[False, True], ids=["no-post", "eos-post"])
def tokenizer_file(request, tmp_path):
    path = tmp_path / "tokenizer.json"
    _tiny_tokenizer(request.param).save(str(path))
    return path, request.param


def _words(n: int) -> str:
    return " ".join(WORDS[i % len(WORDS)] for i in range(n))


def test_short_prompt_is_tokenized_without_extra_specials(tokenizer_file):
    path, eos_post = tokenizer_file
    tok = PromptTokenizer.from_file(path)
    ids, truncated = tok.encode_caption("# Caption\nw1 w2<|endoftext|>\n")
    # '#'=2, 'Caption'=6, w1=13, w2=14, the literal <|endoftext|> = 1 (one special token).
    expected = [2, 6, 13, 14, 1] + ([1] if eos_post else [])
    assert ids.dtype == np.int64 and ids.ndim == 1
    assert ids.tolist() == expected
    assert truncated is False


def test_caption_truncated_at_256(tokenizer_file):
    path, eos_post = tokenizer_file
    tok = PromptTokenizer.from_file(path)
    ids, truncated = tok.encode_caption(_words(300) + EOT)
    assert truncated is True and ids.shape == (256,)
    # Truncation leaves room for the post-processor's EOS, as the HF tokenizer call does.
    assert (ids[-1] == 1) == eos_post
    exact = tok.encode_caption(_words(256 - int(eos_post)))
    assert exact.truncated is False and exact.ids.shape == (256,)


def test_lyrics_truncated_at_2048(tokenizer_file):
    path, eos_post = tokenizer_file
    tok = PromptTokenizer.from_file(path)
    long = tok.encode_lyrics(_words(3000))
    assert long.truncated is True and long.ids.shape == (2048,)
    short = tok.encode_lyrics(_words(2000))
    assert short.truncated is False and short.ids.shape == (2000 + int(eos_post),)


@pytest.mark.export  # transformers comes with the test extras installed beside the export side
def test_matches_hf_tokenizer_call(tokenizer_file):
    import transformers
    path, _ = tokenizer_file
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path))
    ours = PromptTokenizer.from_file(path)
    for text in ["# Caption\nw3 w4<|endoftext|>\n", _words(400) + EOT]:
        want = hf(text, truncation=True, max_length=256)["input_ids"]
        assert ours.encode_caption(text).ids.tolist() == want


def test_tokenizer_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        PromptTokenizer.from_file(tmp_path / "missing.json")
    with pytest.raises(ValueError):
        PromptTokenizer("not a tokenizer")
    tok = PromptTokenizer(_tiny_tokenizer(False))
    with pytest.raises(ValueError, match="string"):
        tok.encode_caption(None)
