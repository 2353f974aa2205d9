"""lm_head over a slice of longer sequences: F.linear's bmm path against thrlab.core.unembed.unembed
(one GEMM per row into one output), side by side.

    python benchmarks/unembed_copy.py                       # 8 rows x 48 tokens, Qwen2.5-0.5B's H, V
    python benchmarks/unembed_copy.py --rows 4 --hidden 1536
    python benchmarks/unembed_copy.py --no-onednn           # torch's own kernels, as without AVX512

Forward + backward of logsumexp over the logits of `rows` x `tokens` completion positions (a
slice of rows x (100 + tokens) states, as the update takes them), bf16, frozen weight, states
with gradient; A/B alternated `--repeats` times, medians and their ratio, and each path's peak
tracked tensor bytes (torch.profiler). Whether F.linear copies the unembedding once per row is a
property of the CPU's kernels (oneDNN's bf16 bmm does, seen on an Intel Xeon with AVX512-BF16;
torch's own kernels do not, seen on an AMD EPYC without AVX512): the output says which it saw
(`f_linear_copies`) and the CPU's capability. The last line is JSON.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from thrlab.core.unembed import unembed
from thrlab.plan.profiling import phase_peaks


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--hidden", type=int, default=896)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-onednn", action="store_true",
                    help="turn oneDNN off: torch's own CPU kernels, as on a CPU without AVX512")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.backends.mkldnn.enabled = not args.no_onednn
    head = torch.nn.Linear(args.hidden, args.vocab, bias=False,
                           dtype=torch.bfloat16).requires_grad_(False)
    states = torch.randn(args.rows, 100 + args.tokens, args.hidden, dtype=torch.bfloat16,
                         requires_grad=True)
    paths = {"F.linear": head, "unembed": lambda h: unembed(head, h)}

    def run(f) -> float:
        t0 = time.perf_counter()
        f(states[:, 100:]).float().logsumexp(-1).sum().backward()
        return time.perf_counter() - t0

    peak = {}
    for name, f in paths.items():  # warm-up, and the peak tracked bytes of one pass
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                    profile_memory=True) as prof:
            with torch.profiler.record_function("thrlab/x"):
                run(f)
        peak[name] = phase_peaks(prof)["x"]
    times = {name: [] for name in paths}
    for _ in range(args.repeats):
        for name, f in paths.items():
            times[name].append(run(f))
    med = {k: statistics.median(v) for k, v in times.items()}
    for name in paths:
        print(f"{name:<10} {med[name]:7.2f} s   peak {peak[name] / 1e9:6.2f} GB")
    copies = peak["F.linear"] >= args.rows * args.hidden * args.vocab * 2  # bf16 (H, V) per row
    cpu = torch.backends.cpu.get_cpu_capability()
    print(f"unembed / F.linear: time {med['unembed'] / med['F.linear']:.2f}, "
          f"peak {peak['unembed'] / peak['F.linear']:.2f}; F.linear "
          f"{'copies the unembedding once per row' if copies else 'makes no copy'} "
          f"(CPU capability {cpu}, oneDNN {'off' if args.no_onednn else 'on'})")
    print(json.dumps({"args": vars(args), "median_s": med, "times_s": times, "peak_bytes": peak,
                      "time_ratio": med["unembed"] / med["F.linear"], "f_linear_copies": copies,
                      "cpu_capability": cpu}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
