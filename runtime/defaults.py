"""Render defaults, resolved once: the bundle's manifest, then `GenerationConfig`, then the request.

The exporter writes `sampler_defaults` into every manifest (export/manifest.py `SAMPLER_DEFAULTS`).
`FORMAT_DEFAULTS` repeats those values only for a manifest that lacks a key; nothing else in the
runtime or the bench writes a fallback of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# The manifest keys the runtime reads, with the values the exporter writes. Steps, CFG scale and
# guidance are request fields with Runware's defaults (runtime/request.py); the APG constants live
# in runtime/sampler.py; tests/test_defaults.py checks that the manifest agrees with all of them.
FORMAT_DEFAULTS = {"shift": 3.0, "chunk_mask": 1.0, "vae_chunk": 512, "vae_overlap": 64}


@dataclass(frozen=True)
class RenderDefaults:
    """What a render uses when the request does not say."""

    shift: float  # schedule shift; settings.shift overrides per request
    chunk_mask: float  # chunk-mask value of full-span tasks
    vae_chunk: int  # VAE decode window, latent frames
    vae_overlap: int  # context frames per side of each window

    def shift_for(self, request) -> float:
        """The request's settings.shift, else this default."""
        shift = request.settings.shift
        return float(shift if shift is not None else self.shift)


def resolve(manifest_defaults: Mapping | None, config=None) -> RenderDefaults:
    """The bundle's `sampler_defaults`, each overridden by the config's field of the same name when set."""
    values = {key: (manifest_defaults or {}).get(key, value) for key, value in FORMAT_DEFAULTS.items()}
    for key in values:
        override = getattr(config, key, None)
        if override is not None:
            values[key] = override
    return RenderDefaults(shift=float(values["shift"]), chunk_mask=float(values["chunk_mask"]),
                          vae_chunk=int(values["vae_chunk"]), vae_overlap=int(values["vae_overlap"]))
