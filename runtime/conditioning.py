"""Request → `Conditioning`: prompt encoding, the null branch, source and reference audio, cover hints.

The `Conditioner` runs the text and condition encoders, the VAE encoder (source and timbre
reference) and the FSQ tokenizer (cover), and builds the task's edit object (runtime/edits.py).
Everything it returns is constant over one request's renders.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from . import source_audio, tasks
from .bundle import Bundle
from .edits import Cover, Repaint, SourceEdit
from .prompts import PromptTokenizer, caption_prompt, format_metas, lyric_prompt, task_instruction
from .request import Request
from .vocab import CAPTION_MAX_TOKENS, LYRIC_MAX_TOKENS, MAX_SECONDS, TIMBRE_FRAMES, WINDOW_TASKS
from .wire import RequestError


@dataclass
class Branch:
    """One DiT condition: encoder states of both CFG halves and the context source latents."""

    encoder_states: np.ndarray  # [1, S, D]
    null_states: np.ndarray  # [1, S', D]; S' != S only with useNegativePrompt
    src_latents: np.ndarray  # [1, T, 64]

    @property
    def paired(self) -> bool:
        """Both halves fit one batch-2 DiT call (equal encoder lengths). Otherwise they run as two
        batch-1 calls: the DiT has no encoder mask, so padding one half would change its result."""
        return self.null_states.shape == self.encoder_states.shape


@dataclass
class Conditioning:
    """Everything constant over one request's renders."""

    frames: int
    encoder_states: np.ndarray  # [1, S, D]
    null_states: np.ndarray  # [1, S, D] (or [1, S', D] with useNegativePrompt)
    src_latents: np.ndarray  # [1, T, 64]
    chunk_mask: np.ndarray  # [1, T]
    prompts: dict
    warnings: list[str]
    timings: dict[str, float]
    output_samples: int = 0
    edit: SourceEdit | None = None  # None: text2music


def silence_slice(silence: np.ndarray, frames: int) -> np.ndarray:
    """[frames, 64] from the silence latent, tiled when the clip is longer than the stored one."""
    reps = -(-frames // silence.shape[0])
    return np.tile(silence, (reps, 1))[:frames] if reps > 1 else silence[:frames]


class Conditioner:
    """The encoders of one bundle, turned into a request's `Conditioning`."""

    def __init__(self, bundle: Bundle, tokenizer: PromptTokenizer, config):
        self.bundle, self.tokenizer, self.config = bundle, tokenizer, config
        self.sample_rate = int(bundle.audio["sample_rate"])
        self.hop = int(bundle.audio["hop_length"])

    # -- prompts ------------------------------------------------------------------------------
    def _encode_prompt(self, caption: str, lyrics: str, warnings: list[str] | None, pad_to: int | None = None):
        caption_ids, cut_caption = self.tokenizer.encode_caption(caption)
        if pad_to is not None:
            # conditioning_text.py `_pad_sequences`: pad with the pad id, or cut (a negative pad).
            caption_ids = np.pad(caption_ids[:pad_to], (0, max(0, pad_to - caption_ids.size)),
                                 constant_values=self.tokenizer.pad_id)
        lyric_ids, cut_lyrics = self.tokenizer.encode_lyrics(lyrics)
        if warnings is not None and cut_caption:
            warnings.append(f"positivePrompt: the caption prompt exceeds {CAPTION_MAX_TOKENS} tokens and was "
                            "truncated")
        if warnings is not None and cut_lyrics:
            warnings.append(f"settings.lyrics: the lyrics exceed {LYRIC_MAX_TOKENS} tokens and were truncated")
        text_states, lyric_embeds = self.bundle.run("text_encoder", {
            "caption_ids": caption_ids[None], "lyric_ids": lyric_ids[None]})
        return text_states, lyric_embeds, caption_ids, lyric_ids

    def _condition_states(self, caption: str, lyrics: str, refer: np.ndarray, timings: dict, warnings=None,
                          pad_to: int | None = None):
        start = time.perf_counter()
        text_states, lyric_embeds, cap, lyr = self._encode_prompt(caption, lyrics, warnings, pad_to)
        mid = time.perf_counter()
        (states,) = self.bundle.run("condition_encoder", {
            "text_states": text_states, "lyric_embeds": lyric_embeds, "refer_latents": refer})
        timings["text_encoder"] = timings.get("text_encoder", 0.0) + mid - start
        timings["condition_encoder"] = timings.get("condition_encoder", 0.0) + time.perf_counter() - mid
        return states.astype(np.float32), cap, lyr

    def _null_states(self, states, request: Request, instruction: str, metas: str, lyrics: str, refer, timings):
        if not request.settings.use_negative_prompt:
            null = np.broadcast_to(self.bundle.null_condition_emb.reshape(1, 1, -1), states.shape)
            return np.ascontiguousarray(null, dtype=np.float32)
        # negativePrompt as the unconditional caption: same instruction, metas, lyrics and timbre.
        negative = caption_prompt(instruction, request.negative_prompt, metas)
        return self._condition_states(negative, lyrics, refer, timings)[0]

    def _text2music_branch(self, request: Request, metas: str, lyrics: str, refer, silence_t,
                           timings, caption_tokens: int) -> tuple[Branch, str]:
        """The switch condition and its caption: text2music instruction, silence source
        (generate_audio's non-cover condition). Its caption ids are padded or cut to the task
        caption's `caption_tokens`, as conditioning_text.py does; the DiT has no encoder mask, so
        the pad positions are attended to, as in the official model."""
        instruction = task_instruction("text2music")
        caption = caption_prompt(instruction, request.positive_prompt, metas)
        states = self._condition_states(caption, lyrics, refer, timings, pad_to=caption_tokens)[0]
        null = self._null_states(states, request, instruction, metas, lyrics, refer, timings)
        return Branch(states, null, silence_t[None].astype(np.float32)), caption

    # -- audio --------------------------------------------------------------------------------
    def need_graph(self, name: str, param: str, request: Request) -> None:
        if not self.bundle.has_graph(name):
            raise RequestError(param, f"{param}: bundle {self.bundle.path} has no {name!r} graph, which this "
                               "task needs; export the bundle with every graph (acestep-edge export)",
                               "unsupportedTask", request.task_uuid)

    def encode_audio(self, audio: np.ndarray, seed: int, stream: int) -> np.ndarray:
        """[2, n] audio → posterior sample [1, n // hop, 64] (tiled encode, seeded posterior noise)."""
        cfg = self.config
        mean, scale = source_audio.tiled_encode(
            lambda x: self.bundle.run("vae_encoder", {"audio": x}), audio, self.hop,
            cfg.encode_window, cfg.encode_overlap, self.sample_rate)
        noise = source_audio.posterior_noise(seed, mean.shape[1], stream)
        return source_audio.posterior_sample(mean, scale, noise)

    def reference_latents(self, request: Request, seed: int) -> np.ndarray:
        """[1, 750, 64] timbre input: the reference's three segments encoded, or the silence latent."""
        ref = request.settings.reference_audio
        if ref is None:
            return silence_slice(self.bundle.silence_latent, TIMBRE_FRAMES)[None]
        param = "settings.referenceAudio"
        self.need_graph("vae_encoder", param, request)
        audio = source_audio.load(ref, param, request.task_uuid)
        if source_audio.is_silent(audio):
            raise RequestError(param, f"{param}: the reference audio is silent; send audible audio for the "
                               "timbre reference or remove the field", "invalidAudio", request.task_uuid)
        segments = source_audio.reference_segments(audio, self.sample_rate)
        return self.encode_audio(segments, seed, source_audio.REFERENCE_STREAM)[:, :TIMBRE_FRAMES]

    def cover_hints(self, latents: np.ndarray, silence_t: np.ndarray) -> np.ndarray:
        """FSQ tokenise → detokenise 'LM hints' of [1, T, 64] source latents, cropped back to T."""
        padded = tasks.pool_pad(latents, silence_t)
        quantized, _ = self.bundle.run("audio_tokenizer", {"latents": padded.astype(np.float32)})
        (hints,) = self.bundle.run("audio_detokenizer", {"quantized": quantized})
        return hints[:, :latents.shape[1]].astype(np.float32)

    def _window(self, request: Request, seconds: float) -> tasks.Window:
        """The repaint window; refuses windows the source cannot hold (only known once it is loaded)."""
        settings = request.settings
        window = tasks.repaint_window(settings.repainting_start, settings.repainting_end, seconds)
        p = "settings."
        if settings.repainting_start is not None and settings.repainting_start > seconds:
            raise RequestError(p + "repaintingStart", f"{p}repaintingStart: {settings.repainting_start:g} s is after "
                               f"the end of the source ({seconds:.2f} s); start at or before it",
                               "valueOutOfRange", request.task_uuid)
        if settings.repainting_end is not None and settings.repainting_end != -1 and settings.repainting_end < 0:
            raise RequestError(p + "repaintingEnd", f"{p}repaintingEnd: {settings.repainting_end:g} s ends before "
                               "the source starts; send an end >= 0 (or -1 for the end of the source)",
                               "valueOutOfRange", request.task_uuid)
        if window.end <= window.start:
            raise RequestError(p + "repaintingEnd", f"{p}repaintingEnd: the window [{window.start - window.left_pad:g}, "
                               f"{window.end - window.left_pad:g}) s is empty; send an end after the start",
                               "conflictingParameters", request.task_uuid)
        total = seconds + window.left_pad + window.right_pad
        if total > MAX_SECONDS:
            raise RequestError(p + "repaintingEnd", f"{p}repaintingStart/repaintingEnd: the outpainted clip would be "
                               f"{total:.1f} s; the limit is {MAX_SECONDS:g} s", "valueOutOfRange", request.task_uuid)
        return window

    # -- the whole request --------------------------------------------------------------------
    def condition(self, request: Request, seed: int | None, mask_value: float) -> Conditioning:
        """Prompts, timbre, source latents and masks of a request; `seed` seeds the VAE posterior draws."""
        settings = request.settings
        seed = seed if seed is not None else request.seed if request.seed is not None else 0
        timings: dict[str, float] = {}
        warnings: list[str] = []
        task = settings.task
        silence = self.bundle.silence_latent

        start = time.perf_counter()
        source = window = None
        if request.input_audio is not None:  # complete may go without (a silent target)
            self.need_graph("vae_encoder", "inputs.audio", request)
            source = source_audio.load(request.input_audio, "inputs.audio", request.task_uuid)
        seconds = request.duration if source is None else source.shape[-1] / self.sample_rate
        # generate_music defaults repainting_start=0.0, repainting_end=None: repaint and lego always
        # carry a range, the whole source when the request gives none.
        if source is not None and (settings.repainting_start is not None or settings.repainting_end is not None
                                   or task in WINDOW_TASKS):
            window = self._window(request, seconds)
            sr = self.sample_rate
            source = np.pad(source, ((0, 0), (tasks.pad_samples(window.left_pad, sr),
                                               tasks.pad_samples(window.right_pad, sr))))
        refer = self.reference_latents(request, seed)
        if source is not None:
            if source_audio.is_silent(source):  # the handler uses silence latents for a silent source
                raw = silence_slice(silence, source.shape[-1] // self.hop)[None]
            else:
                raw = self.encode_audio(source, seed, source_audio.SOURCE_STREAM)
            frames = tasks.latent_length(raw.shape[1])
            raw = tasks.pad_latents(raw, silence_slice(silence, frames), frames)
        else:
            frames = request.latent_frames
        if source is not None or settings.reference_audio is not None:
            timings["audio_encoder"] = time.perf_counter() - start

        metas = format_metas(settings.bpm, settings.time_signature, settings.key_scale, seconds)
        instruction = task_instruction(task, settings.track_name, settings.track_classes)
        caption = caption_prompt(instruction, request.positive_prompt, metas)
        lyrics = lyric_prompt(settings.vocal_language, settings.lyrics)
        states, cap_ids, lyr_ids = self._condition_states(caption, lyrics, refer, timings, warnings)
        null = self._null_states(states, request, instruction, metas, lyrics, refer, timings)

        silence_t = silence_slice(silence, frames)
        src = silence_t[None].astype(np.float32)
        chunk = np.full((1, frames), mask_value, dtype=np.float32)
        prompts = {"caption": caption, "lyrics": lyrics, "caption_tokens": int(cap_ids.size),
                   "lyric_tokens": int(lyr_ids.size)}
        edit = None
        if source is not None:
            start = time.perf_counter()
            src, chunk, edit = self._edit(request, source, raw, window, silence_t, frames, mask_value, metas, lyrics,
                                          refer, timings, prompts)
            timings["task_context"] = time.perf_counter() - start
            output_samples = source.shape[-1]
        else:
            output_samples = int(round(request.duration * self.sample_rate))
        return Conditioning(
            frames=frames, encoder_states=states, null_states=null, src_latents=src.astype(np.float32),
            chunk_mask=chunk, prompts=prompts, warnings=warnings + list(request.warnings), timings=timings,
            output_samples=output_samples, edit=edit)

    def _edit(self, request: Request, source, raw, window, silence_t, frames: int, mask_value: float, metas: str,
              lyrics: str, refer, timings: dict, prompts: dict):
        """(src_latents, chunk_mask, edit object) of a source task."""
        settings, task = request.settings, request.settings.task
        context = raw
        if task == "cover":
            self.need_graph("audio_tokenizer", "inputs.audio", request)
            context = self.cover_hints(raw, silence_t)
        span = None if window is None else tasks.window_frames(window, frames, self.sample_rate, self.hop)
        src, chunk, repaint = tasks.task_context(task, context, silence_t, span, mask_value)
        switch = None
        if tasks.switch_step(request.steps, settings.cover_conditioning_scale) is not None:
            switch, prompts["switch_caption"] = self._text2music_branch(
                request, metas, lyrics, refer, silence_t, timings, prompts["caption_tokens"])
            prompts["switch_caption_tokens"] = prompts["caption_tokens"]
        # `strength` starts from the noised source (generate_audio's cover_noise_strength, any task)
        # except where it is the repaint strength: repaint, and lego with a window of its own.
        own_window = settings.repainting_start is not None or settings.repainting_end is not None
        repaint_strength = task == "repaint" or (task == "lego" and own_window)
        start = None if repaint_strength else request.strength
        common = dict(strength=start, switch_scale=settings.cover_conditioning_scale, switch=switch)
        if task == "cover":
            edit = Cover(raw, source, window, **common)
        elif repaint is not None:
            ratio, cf, wav_cf = tasks.repaint_config(settings.repaint_mode,
                                                     request.strength if repaint_strength else None)
            edit = Repaint(raw, source, window, repaint=repaint, injection_ratio=ratio, crossfade_frames=cf,
                           wav_crossfade=wav_cf, splice_waveform=settings.repaint_mode != "aggressive", **common)
        else:
            edit = SourceEdit(raw, source, window, **common)
        return src, chunk, edit
