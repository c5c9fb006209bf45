"""Regenerate the checked-in tiny random-weight bundle: `python -m acestep_edge.export.demo_bundle`."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

import acestep_edge
from acestep_edge.export.bundle import export_bundle
from acestep_edge.export.inspect import inspect_bundle
from acestep_edge.models.config import tiny
from acestep_edge.models.random_checkpoint import write_random_checkpoint

COMMAND = "python -m acestep_edge.export.demo_bundle"
SEED = 0
# Kept small enough to commit (≈ 5 MB): the runtime tiles the silence latent for longer clips.
SILENCE_FRAMES = 1500
# The VAE encoder is built 4 channels wide (VaeConfig.encoder_channels): diffusers' layout makes
# it 128 wide throughout (2.9 M parameters, 11.5 MB, ~35 GMAC per second of audio), too big to
# commit and too slow for the editing-task examples; 4 wide it is ~20 kB and encodes 30 s in seconds.
VAE_ENCODER_CHANNELS = 4
DEMO_GRAPHS = ("text_encoder", "condition_encoder", "dit", "vae_decoder", "vae_encoder", "audio_tokenizer",
               "audio_detokenizer")


def demo_preset():
    """The demo bundle's model: tiny() with the narrow VAE encoder."""
    return tiny(vae_encoder_channels=VAE_ENCODER_CHANNELS)


def default_out() -> Path:
    return Path(acestep_edge.__file__).resolve().parent / "demo_bundle"


def build_demo_bundle(out: str | Path | None = None, ops: str = "standard", log=print) -> Path:
    """tiny() preset, seed 0, official layout, fp32 → the bundle at `out` (default acestep_edge/demo_bundle)."""
    out = Path(out) if out is not None else default_out()
    with tempfile.TemporaryDirectory(prefix="acestep-tiny-") as tmp:
        write_random_checkpoint(tmp, demo_preset(), seed=SEED, layout="official", dtype=torch.float32,
                                silence_frames=SILENCE_FRAMES)
        return export_bundle(tmp, out, layout="official", precision="fp32", ops=ops, graphs=DEMO_GRAPHS,
                             command=COMMAND,
                             checkpoint_label=f"random tiny checkpoint (seed {SEED}, official layout, fp32)", log=log)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=None, help="bundle directory (default: acestep_edge/demo_bundle)")
    parser.add_argument("--ops", default="standard", choices=("standard", "ort", "plain"))
    args = parser.parse_args()
    path = build_demo_bundle(args.out, args.ops)
    print(inspect_bundle(path, verify=True))


if __name__ == "__main__":
    main()
