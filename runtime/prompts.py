"""Caption and lyric prompt strings and their tokenization with the bundled tokenizer.json.

The templates are the official ones (ace-step/ACE-Step-1.5 acestep/constants.py `SFT_GEN_PROMPT`,
`LYRIC_GEN_PROMPT`, `TASK_INSTRUCTIONS`), filled as acestep/core/generation/handler/prompt_utils.py
`build_dit_inputs` and the handler's `_parse_metas` fill them.
"""

from __future__ import annotations

import math
import numbers
import re
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from .vocab import CAPTION_MAX_TOKENS, LYRIC_MAX_TOKENS, TIME_SIGNATURES, TRACK_NAMES
from .vocab import TASKS as _REQUEST_TASKS

END_OF_TEXT = "<|endoftext|>"

# Official constants.TASK_INSTRUCTIONS; the *_default entries are used when no track is given.
TASK_INSTRUCTIONS = {
    "text2music": "Fill the audio semantic mask based on the given conditions:",
    "repaint": "Repaint the mask area based on the given conditions:",
    "cover": "Generate audio semantic tokens based on the given conditions:",
    "cover-nofsq": "Generate audio semantic tokens based on the given conditions:",
    "extract": "Extract the {TRACK_NAME} track from the audio:",
    "extract_default": "Extract the track from the audio:",
    "lego": "Generate the {TRACK_NAME} track based on the audio context:",
    "lego_default": "Generate the track based on the audio context:",
    "complete": "Complete the input track with {TRACK_CLASSES}:",
    "complete_default": "Complete the input track:",
}

TASKS = _REQUEST_TASKS + ("cover-nofsq",)

# Request-side spellings of the canonical time signatures 2/3/4/6 (runtime/vocab.py).
_TIME_SIGNATURE_FRACTIONS = {k: str(v) for k, v in TIME_SIGNATURES.items() if "/" in k}

# A caption block of an already formatted SFT prompt: from the "# Caption" heading to the next
# "# " heading (normally "# Metas") or the end of the text.
_SFT_CAPTION = re.compile(r"^#\s*Caption[ \t]*\n(.*?)(?=^#\s|\Z)", re.DOTALL | re.MULTILINE)


def _check_track(name: str) -> str:
    if not isinstance(name, str) or name.strip().lower() not in TRACK_NAMES:
        raise ValueError(f"unknown track name {name!r}; use one of: {', '.join(TRACK_NAMES)}")
    return name.strip().upper()


def task_instruction(task: str, track_name: str | None = None,
                     track_classes: Sequence[str] | None = None) -> str:
    """Instruction text for a task; track names are upper-cased as the official handler does."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; use one of: {', '.join(TASKS)}")
    if task in ("extract", "lego"):
        if not track_name:
            return TASK_INSTRUCTIONS[f"{task}_default"]
        return TASK_INSTRUCTIONS[task].format(TRACK_NAME=_check_track(track_name))
    if task == "complete":
        if isinstance(track_classes, str):
            raise ValueError("track_classes must be a list of track names, not a single string")
        if not track_classes:
            return TASK_INSTRUCTIONS["complete_default"]
        classes = " | ".join(_check_track(c) for c in track_classes)
        return TASK_INSTRUCTIONS["complete"].format(TRACK_CLASSES=classes)
    return TASK_INSTRUCTIONS[task]


def _meta_value(value) -> str:
    if value is None:
        return "N/A"
    text = str(value).strip()
    return text if text else "N/A"


def format_time_signature(value) -> str:
    """'4/4' → '4' (and 2/4, 3/4, 6/8); anything else is kept verbatim, as the handler does."""
    text = _meta_value(value)
    return _TIME_SIGNATURE_FRACTIONS.get(text.replace(" ", ""), text)


def format_metas(bpm, time_signature, key_scale, duration) -> str:
    """The four metas lines (bpm, timesignature, keyscale, duration) of the official handler's
    `_parse_metas`, each ending in a newline; missing values read 'N/A'."""
    if isinstance(duration, bool) or not isinstance(duration, numbers.Real):
        raise ValueError(f"duration must be a number of seconds, got {duration!r}")
    if not math.isfinite(duration) or duration < 0:
        raise ValueError(f"duration must be a finite, non-negative number of seconds, got {duration!r}")
    if isinstance(bpm, bool):
        raise ValueError(f"bpm must be a number, got {bpm!r}")
    return (
        f"- bpm: {_meta_value(bpm)}\n"
        f"- timesignature: {format_time_signature(time_signature)}\n"
        f"- keyscale: {_meta_value(key_scale)}\n"
        f"- duration: {int(duration)} seconds\n"
    )


def extract_caption(text: str) -> str:
    """Return the caption block when `text` is already a full SFT prompt, else `text` unchanged.

    The official handler only looks when both '# Instruction' and '# Caption' are present and
    cuts at '# Metas'; we accept any text with a '# Caption' heading and cut at the next heading,
    so a pasted prompt never nests a second '# Metas' section inside ours.
    """
    match = _SFT_CAPTION.search(text)
    if match is None:
        return text
    return match.group(1).replace(END_OF_TEXT, "").strip()


def caption_prompt(instruction: str, caption: str, metas: str) -> str:
    """SFT_GEN_PROMPT: '# Instruction\\n…\\n\\n# Caption\\n…\\n\\n# Metas\\n…<|endoftext|>\\n'."""
    for name, value in (("instruction", instruction), ("caption", caption), ("metas", metas)):
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string, got {type(value).__name__}")
    if not instruction.endswith(":"):
        instruction += ":"
    caption = extract_caption(caption)
    return f"# Instruction\n{instruction}\n\n# Caption\n{caption}\n\n# Metas\n{metas}{END_OF_TEXT}\n"


def lyric_prompt(language: str | None, lyrics: str | None) -> str:
    """LYRIC_GEN_PROMPT: '# Languages\n{language}\n\n# Lyric\n{lyrics}<|endoftext|>'.

    Lyrics go in as given and None is an empty lyric, as on the official default path
    (acestep/inference.py generate_music passes `params.lyrics` to the DiT unchanged; only the
    Gradio "instrumental" box, the CLI flag and the LM write '[Instrumental]'). Send
    '[Instrumental]' yourself to get that tag.
    """
    if lyrics is not None and not isinstance(lyrics, str):
        raise ValueError(f"lyrics must be a string, got {type(lyrics).__name__}")
    if language is not None and not isinstance(language, str):
        raise ValueError(f"language must be a string, got {type(language).__name__}")
    language = language.strip() if language and language.strip() else "unknown"
    return f"# Languages\n{language}\n\n# Lyric\n{lyrics or ''}{END_OF_TEXT}"


class TokenIds(NamedTuple):
    """Token ids (int64, [L]) and whether the text was cut at the cap."""

    ids: np.ndarray
    truncated: bool


class PromptTokenizer:
    """The bundle's tokenizer.json, configured like the official AutoTokenizer calls.

    The handler calls `tokenizer(text, truncation=True, max_length=N)` with the default
    add_special_tokens=True. A fast HF tokenizer turns that into the backend's
    `enable_truncation(N)` + `encode(text, add_special_tokens=True)`: the literal '<|endoftext|>'
    in our templates matches the added special token, the tokenizer.json post-processor adds
    whatever it adds (Qwen3-Embedding copies append one more EOS), and truncation
    leaves room for those added tokens. We do exactly that here and add nothing of our own.
    """

    def __init__(self, tokenizer) -> None:
        from tokenizers import Tokenizer

        if not isinstance(tokenizer, Tokenizer):
            raise ValueError("PromptTokenizer needs a tokenizers.Tokenizer; use PromptTokenizer.from_file(path)")
        # One configured copy per cap keeps encode calls free of shared mutable truncation state.
        blob = tokenizer.to_str()
        self._caption = self._configured(Tokenizer.from_str(blob), CAPTION_MAX_TOKENS)
        self._lyrics = self._configured(Tokenizer.from_str(blob), LYRIC_MAX_TOKENS)

    @classmethod
    def from_file(cls, path: str | Path) -> "PromptTokenizer":
        from tokenizers import Tokenizer

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path} (the bundle must contain tokenizer.json)")
        return cls(Tokenizer.from_file(str(path)))

    @staticmethod
    def _configured(tokenizer, max_length: int):
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=max_length)
        return tokenizer

    @staticmethod
    def _encode(tokenizer, text: str) -> TokenIds:
        if not isinstance(text, str):
            raise ValueError(f"text to tokenize must be a string, got {type(text).__name__}")
        encoding = tokenizer.encode(text, add_special_tokens=True)
        ids = np.asarray(encoding.ids, dtype=np.int64)
        return TokenIds(ids, bool(encoding.overflowing))

    @property
    def pad_id(self) -> int:
        """The pad token: Qwen3's tokenizer pads with '<|endoftext|>'."""
        token = self._caption.token_to_id(END_OF_TEXT)
        if token is None:
            raise ValueError(f"the tokenizer has no {END_OF_TEXT!r} token to pad with")
        return int(token)

    def encode_caption(self, text: str) -> TokenIds:
        """Token ids of a full caption prompt, cut at 256 tokens."""
        return self._encode(self._caption, text)

    def encode_lyrics(self, text: str) -> TokenIds:
        """Token ids of a full lyric prompt, cut at 2048 tokens."""
        return self._encode(self._lyrics, text)
