"""One DiT forward of the PyTorch reference (models/dit.py, the network models/reference.py runs) in fp32 and
bf16, optionally beside another implementation of the same DiT loaded from a Python file, A/B interleaved.

    python benchmarks/dit_forward_speed.py --threads 2 --frames 1500 --tokens 300 --repeats 5 \
        [--official path/to/module.py]

The `--official` module must define `build_official_dit(config_dict) -> nn.Module` and
`official_forward(model, x, t, encoder_states, context)`; it receives our weights (strict
load_state_dict, so the parameter names must match the official checkpoint's `decoder.*` names) and
its output is compared with ours before timing. Default config: the `bench` preset (8 layers × 1024).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time

import torch

from acestep_edge.models.config import PRESETS
from acestep_edge.models.dit import DiT

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _load(path: str):
    spec = importlib.util.spec_from_file_location("official_dit_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="bench", choices=sorted(PRESETS))
    parser.add_argument("--frames", type=int, default=1500, help="latent frames T (1500 = 60 s)")
    parser.add_argument("--tokens", type=int, default=300, help="encoder tokens S")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    parser.add_argument("--official", default=None, help="Python file with build_official_dit / official_forward")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = PRESETS[args.preset]().dit
    torch.manual_seed(0)
    ours = DiT(cfg).eval()
    for p in ours.parameters():  # random weights time the same; scaled so activations stay O(1)
        p.data.normal_(0.0, 1.0 / max(1, p.shape[-1]) ** 0.5 if p.dim() > 1 else 0.1)
    other = None
    if args.official:
        module = _load(args.official)
        other = module.build_official_dit(cfg.to_dict()).eval()
        other.load_state_dict(ours.state_dict(), strict=True)
    g = torch.Generator().manual_seed(1)
    b, t_len, s = args.batch, args.frames, args.tokens
    x = torch.randn(b, t_len, 64, generator=g)
    t = torch.full((b,), 0.7)
    enc = torch.randn(b, s, cfg.encoder_hidden_size, generator=g)
    ctx = torch.randn(b, t_len, 128, generator=g)
    results = {}
    for name in args.dtypes:
        dtype = DTYPES[name]
        ours.to(dtype)
        impls = {"ours": lambda: ours(x.to(dtype), t, enc.to(dtype), ctx.to(dtype))}
        if other is not None:
            other.to(dtype)
            impls["official"] = lambda: module.official_forward(other, x.to(dtype), t.to(dtype), enc.to(dtype),
                                                                ctx.to(dtype))
        times = {k: [] for k in impls}
        with torch.inference_mode():
            outs = {k: f().float() for k, f in impls.items()}  # warm-up, and the outputs compared below
            for _ in range(args.repeats):
                for k, f in impls.items():  # interleaved A/B
                    start = time.perf_counter()
                    f()
                    times[k].append(time.perf_counter() - start)
        row = {k: {"median_s": statistics.median(v), "min_s": min(v), "all_s": v} for k, v in times.items()}
        if other is not None:
            diff = (outs["ours"] - outs["official"]).abs().max().item()
            row["max_abs_diff"] = diff
            row["max_abs_ref"] = outs["official"].abs().max().item()
            row["ratio_ours_over_official"] = row["ours"]["median_s"] / row["official"]["median_s"]
        results[name] = row
        print(name, json.dumps({k: (v if not isinstance(v, dict) else {kk: vv for kk, vv in v.items() if kk != "all_s"})
                                for k, v in row.items()}), flush=True)
    print(json.dumps({"config": args.preset, "frames": t_len, "tokens": s, "batch": b, "threads": args.threads,
                      "torch": torch.__version__, "results": results}))


if __name__ == "__main__":
    main()
