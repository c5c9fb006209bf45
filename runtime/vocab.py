"""The runtime's vocabulary, once: task, track and language names, enums, and the model's limits."""

from __future__ import annotations

TASK_TYPE = "audioInference"
MODEL_ID = "runware:ace-step@v1.5-xl-base"
OUTPUT_TYPES = ("URL", "base64Data", "dataURI")
GUIDANCE_TYPES = ("apg", "cfg", "adg")

# Editing tasks of the official generate_music handler; every one but text2music takes source audio.
TASKS = ("text2music", "cover", "repaint", "extract", "lego", "complete")
SOURCE_TASKS = ("cover", "repaint", "extract", "lego", "complete")
# complete renders without one too (a silent target): the official generate_music_request.py does
# not list it among the tasks that require src_audio.
SOURCE_OPTIONAL_TASKS = ("complete",)
WINDOW_TASKS = ("repaint", "lego")  # tasks that take a repaint window (default: the whole source)
# `strength` acts on every source task: the repaint strength for repaint and a windowed lego, else
# the start from the noised source (the official cover_noise_strength, any task).
STRENGTH_TASKS = SOURCE_TASKS
COVER_SCALE_TASKS = ("cover", "repaint")  # tasks that take settings.coverConditioningScale
TRACK_TASKS = ("extract", "lego")  # tasks that take settings.trackName
# Repaint preservation modes (official generate_music._resolve_repaint_config); strength acts in
# balanced mode only.
REPAINT_MODES = ("balanced", "conservative", "aggressive")

# Official acestep/constants.py TRACK_NAMES.
TRACK_NAMES = ("woodwinds", "brass", "fx", "synth", "strings", "percussion", "keyboard",
               "guitar", "bass", "drums", "backing_vocals", "vocals")
# Official acestep/constants.py VALID_LANGUAGES (ISO 639-1, plus 'yue' and 'unknown').
VALID_LANGUAGES = (
    "ar", "az", "bg", "bn", "ca", "cs", "da", "de", "el", "en",
    "es", "fa", "fi", "fr", "he", "hi", "hr", "ht", "hu", "id",
    "is", "it", "ja", "ko", "la", "lt", "ms", "ne", "nl", "no",
    "pa", "pl", "pt", "ro", "ru", "sa", "sk", "sr", "sv", "sw",
    "ta", "te", "th", "tl", "tr", "uk", "ur", "vi", "yue", "zh",
    "unknown",
)
# Request spellings of the canonical time signatures 2/3/4/6 (the official metas write the number).
TIME_SIGNATURES = {"2": 2, "3": 3, "4": 4, "6": 6, "2/4": 2, "3/4": 3, "4/4": 4, "6/8": 6}

# Audio facts of the ACE-Step v1.5 VAE (the bundle's manifest records the same): 48 kHz stereo,
# 1920 samples per latent frame (25 Hz), 64 latent channels.
SAMPLE_RATE = 48_000
HOP_LENGTH = 1920
LATENT_RATE = SAMPLE_RATE // HOP_LENGTH
LATENT_CHANNELS = 64
# Official conditioning_target.py pads source latents to at least 128 frames; text2music likewise.
MIN_FRAMES = 128
MIN_SECONDS = 10.0
MAX_SECONDS = 600.0
# 30 s of 25 Hz latents: the timbre encoder's reference length (io_audio.process_reference_audio).
TIMBRE_FRAMES = 750
# Token caps of the official handler (text tokenizer max_length=256, lyric tokenizer 2048).
CAPTION_MAX_TOKENS = 256
LYRIC_MAX_TOKENS = 2048


def latent_frames_for(duration: float) -> int:
    """Latent length T for a duration in seconds: one frame per hop, never under MIN_FRAMES."""
    return max(MIN_FRAMES, int(round(duration, 1) * SAMPLE_RATE) // HOP_LENGTH)
