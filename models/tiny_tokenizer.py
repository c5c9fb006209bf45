"""A deterministic, offline byte-level BPE tokenizer in the Qwen2 style, for the tiny preset and tests."""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)

# Qwen2's pre-tokenization split: contractions, letter runs (with one leading non-letter),
# single digits, punctuation runs, newlines and whitespace. Digits are split one by one.
_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Fixed training text. It only shapes which merges exist; byte fallback covers any input.
_CORPUS = (
    "An upbeat pop song with bright synthesizers, punchy drums and a catchy female vocal. "
    "The tempo is around 120 BPM in the key of C major, with a four on the floor kick.",
    "A slow acoustic ballad: fingerpicked guitar, soft piano, warm strings and a male singer. "
    "Melancholic and intimate, recorded in a small room with gentle reverb.",
    "Energetic rock track with distorted electric guitars, a driving bass line, crashing cymbals "
    "and a powerful chorus. Duration 180 seconds, time signature 4/4.",
    "Ambient electronic music, evolving pads, deep sub bass, field recordings of rain and wind, "
    "no vocals, instrumental, calm and spacious, perfect for meditation.",
    "Jazz trio with upright bass, brushed drums and a walking piano melody; smooth, relaxed, "
    "late night lounge atmosphere, swing feel at 96 BPM in B flat minor.",
    "Hip hop beat with a dusty sampled loop, heavy kick, crisp snare, vinyl crackle and a "
    "confident rapper delivering fast verses over the groove.",
    "# Caption\nCinematic orchestral score, soaring brass, timpani, choir, epic and heroic.\n\n"
    "# Metas\n- bpm: 140\n- timesignature: 3\n- keyscale: D minor\n- duration: 60 seconds\n",
    "# Languages\nen\n\n# Lyric\n[Verse]\nWalking down the empty street tonight\n"
    "Counting all the stars that lost their light\n[Chorus]\nHold on, hold on, we are the fire\n"
    "Singing louder, reaching higher\n[Bridge]\nOh oh oh, yeah yeah\n[Outro]\n",
    "[Intro - piano]\n[Verse 2]\nI remember every word you said\nEvery song still playing in my head\n"
    "[Pre-Chorus]\nAnd the night is young, the night is ours\n[Chorus]\nDancing under city stars\n",
    "[Instrumental]\n[Verse]\nÉg sé sólina rísa yfir fjöllunum\nÞú ert ljósið mitt í myrkrinu\n"
    "Við syngjum saman á íslensku, ó hvað ég elska þig\n",
    "[Verse]\n夜空の星が輝いている\n君と一緒に歌おう\n[Chorus]\n我们一起唱歌，音乐让我们快乐\n"
    "사랑해요, 노래를 불러요\n",
    "Deutsch: Über den Wolken muss die Freiheit wohl grenzenlos sein. Français: la musique "
    "est très belle, ça me plaît. Español: canción alegre, corazón, mañana.",
)


def _bpe_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    return tok


def build_tokenizer(vocab_size: int = 512) -> Tokenizer:
    """Train the tiny tokenizer; every id (BPE vocab plus special tokens) is < `vocab_size`.

    The special tokens come after the BPE vocabulary, as in Qwen2 (`<|endoftext|>` is the first
    id after the merges), and are registered as added special tokens so their literal text in a
    prompt encodes to one id. No post-processor is set: the real Qwen3-Embedding tokenizer may
    append an EOS through its TemplateProcessing post-processor; the bundle's own
    tokenizer.json decides that, and the tiny one deliberately does not append anything.
    """
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool):
        raise ValueError(f"vocab_size must be an int, got {type(vocab_size).__name__}")
    min_size = 256 + len(SPECIAL_TOKENS)
    if vocab_size < min_size:
        raise ValueError(f"vocab_size must be at least {min_size} (256 bytes + special tokens), got {vocab_size}")
    tok = _bpe_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(SPECIAL_TOKENS),
        min_frequency=2,
        show_progress=False,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(list(_CORPUS), trainer=trainer)
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    size = tok.get_vocab_size(with_added_tokens=True)
    if size > vocab_size:
        raise RuntimeError(f"trained vocabulary has {size} entries, more than vocab_size={vocab_size}")
    return tok
