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
# Kept small enough to commit (≈ 5 MB): the runtime tiles the silence latent for longer clips, and
# the VAE encoder (11.5 MB even at tiny size: it is 128 channels wide throughout) is only needed by
# the source-audio tasks, which a full `acestep-edge export` bundle carries.
SILENCE_FRAMES = 1500
DEMO_GRAPHS = ("text_encoder", "condition_encoder", "dit", "vae_decoder", "audio_tokenizer", "audio_detokenizer")


def default_out() -> Path:
    return Path(acestep_edge.__file__).resolve().parent / "demo_bundle"


def build_demo_bundle(out: str | Path | None = None, ops: str = "standard", log=print) -> Path:
    """tiny() preset, seed 0, official layout, fp32 → the bundle at `out` (default acestep_edge/demo_bundle)."""
    out = Path(out) if out is not None else default_out()
    with tempfile.TemporaryDirectory(prefix="acestep-tiny-") as tmp:
        write_random_checkpoint(tmp, tiny(), seed=SEED, layout="official", dtype=torch.float32,
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
