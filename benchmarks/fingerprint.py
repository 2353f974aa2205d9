"""Behaviour fingerprint: short real runs of every method, hashed, to hold a refactor to bit-identity.

    python benchmarks/fingerprint.py --out before.json [--runs-root DIR] [--only NAME ...]
    python benchmarks/fingerprint.py --compare before.json     # exit 1 on any difference
    python benchmarks/fingerprint.py --same-runs OLD_ROOT NEW_ROOT   # two run roots, run by run

Each case is a whole `run_experiment` (cold start from the cache, evaluation before, a few GRPO
steps, token records, likelihood probe, evaluation after) of one METHODS recipe, or one schedule
variant, on the tiny, narrowing and strategies presets at a few steps and a small evaluation. A
case's fingerprint is the sha256 of its metrics rows (without the `time/` keys), its evaluation
files, summary, token records and probe (all without wall times) and final adapter. Numbers move with the CPU
kind and the thread count: compare fingerprints taken on one machine, with the same --threads.
Prints a table and, on its last line, JSON {case: sha}.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

from thrlab.train.presets import METHODS, from_preset, run_id
from thrlab.train.experiment import run_experiment

# Small but every stage runs: 2 mini-batches where a schedule is off-policy, micro-batches of
# whole groups, evaluation with samples, token records and the probe on the last step.
_SMALL = dict(steps=3, prompts_per_step=4, group_size=4, passk_k=2, eval_limit=24,
              eval_passk_limit=12, eval_samples=4, thr_save_every=3, save_every=2,
              sft_control=False)
_PRESET_SMALL = {"tiny": dict(_SMALL, sft_control=True, eval_limit=16),
                 "narrowing": dict(_SMALL, probe_every=3, probe_prompts=8),
                 "strategies": dict(_SMALL, probe_every=3, probe_prompts=8)}
# Schedules and paths a recipe alone does not reach.
_VARIANTS = {
    "tiny/thr_exploit/off_policy_micro": ("tiny", "thr_exploit",
                                          dict(mini_batches=2, micro_batch_size=4, epochs=2)),
    "tiny/thr_exploit/dropout": ("tiny", "thr_exploit", dict(lora_dropout=0.1)),
    "tiny/thr_explore/quantile_groupvocab": ("tiny", "thr_explore",
                                             dict(thr_tau_mode="quantile", thr_vocab="group",
                                                  thr_advantage_weighted=True,
                                                  thr_length_normalize=False)),
    "tiny/grpo/dynamic_kl": ("tiny", "grpo", dict(dynamic_sampling=True, kl_coef=1e-2)),
    "tiny/entropy_fork/micro": ("tiny", "entropy_fork", dict(micro_batch_size=4)),
    "tiny/kl_cov/mini": ("tiny", "kl_cov", dict(mini_batches=2, cov_ratio=0.05)),
    "tiny/clip_cov/mini": ("tiny", "clip_cov", dict(mini_batches=2, cov_ratio=0.05)),
    "tiny/thr_exploit/llama": ("tiny", "thr_exploit", dict(tiny_arch="llama")),
}
_OFF_POLICY_ONLY = {"kl_cov"}  # refuses an on-policy schedule (config check)


def cases() -> dict[str, tuple[str, str, dict]]:
    out = {}
    for preset in _PRESET_SMALL:
        for method in METHODS:
            over = dict(mini_batches=2) if method in _OFF_POLICY_ONLY else {}
            out[f"{preset}/{method}"] = (preset, method, over)
    out.update(_VARIANTS)
    return out


def _sha_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _timeless(x):
    """x without wall-clock entries (keys wall_s, *_wall_s, time/*), recursively."""
    if isinstance(x, dict):
        return {k: _timeless(v) for k, v in x.items()
                if not (k == "wall_s" or k.endswith("_wall_s") or k.startswith("time/"))}
    if isinstance(x, list):
        return [_timeless(v) for v in x]
    return x


def _sha_json(obj) -> str:
    return hashlib.sha256(json.dumps(_timeless(obj), sort_keys=True).encode()).hexdigest()


def fingerprint(run: Path) -> dict:
    """{part: sha256} of what a run folder records about behaviour (no wall times)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    parts = {"metrics": _sha_json(rows)}
    for p in [run / "summary.json", *sorted(run.glob("eval_*.json")),
              *sorted(run.glob("thr_tokens/*.json")), *sorted(run.glob("probe.json"))]:
        parts[str(p.relative_to(run))] = _sha_json(json.loads(p.read_text()))
    for p in sorted((run / "adapter").glob("*.safetensors")):
        parts[f"adapter/{p.name}"] = _sha_file(p)
    parts["all"] = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    return parts


def _differing(a: dict, b: dict) -> list[str]:
    return [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and k != "all"]


def same_runs(old_root: Path, new_root: Path) -> int:
    """Fingerprint every finished run folder of new_root against the folder of the same run id in
    old_root (e.g. a whole study regenerated after a refactor); exit 1 on any difference."""
    runs = sorted(d.name for d in new_root.iterdir() if (d / "COMPLETE").exists())
    bad, missing = [], []
    for name in runs:
        if not (old_root / name / "COMPLETE").exists():
            missing.append(name)
            continue
        diff = _differing(fingerprint(new_root / name), fingerprint(old_root / name))
        if diff:
            bad.append(name)
            print(f"DIFFERS {name}: {', '.join(diff)}")
    for name in missing:
        print(f"not in {old_root}: {name}")
    print(f"{len(runs) - len(bad) - len(missing)} of {len(runs)} run folders of {new_root} "
          f"identical to {old_root}")
    return 1 if bad or missing else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--same-runs", nargs=2, metavar=("OLD_ROOT", "NEW_ROOT"),
                    help="compare two run roots folder by folder instead of running the cases")
    ap.add_argument("--out", help="write the fingerprints (JSON) here")
    ap.add_argument("--compare", help="a previous --out file: report every case that differs")
    ap.add_argument("--runs-root", default=None, help="default: a temporary folder")
    ap.add_argument("--only", nargs="*", default=[], help="case names or prefixes")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.same_runs:
        return same_runs(*map(Path, args.same_runs))
    chosen = {k: v for k, v in cases().items()
              if not args.only or any(k.startswith(o) for o in args.only)}
    root = Path(args.runs_root or tempfile.mkdtemp(prefix="thrlab-fingerprint-"))
    got = {}
    for name, (preset, method, over) in chosen.items():
        cfg = from_preset(preset, method, threads=args.threads,
                          **{**_PRESET_SMALL[preset], **over})
        run_experiment(cfg, runs_root=root, progress=False)
        got[name] = fingerprint(root / run_id(cfg))
        print(f"{name:<44} {got[name]['all'][:16]}", flush=True)
    bad = []
    if args.compare:
        old = json.loads(Path(args.compare).read_text())
        for name, parts in got.items():
            if name not in old:
                print(f"{name}: not in {args.compare}")
                continue
            diff = _differing(parts, old[name])
            if diff:
                bad.append(name)
                print(f"DIFFERS {name}: {', '.join(diff)}")
        print(f"{len(got) - len(bad)} of {len(got)} cases identical to {args.compare}")
    if args.out:
        Path(args.out).write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    print(json.dumps({k: v["all"] for k, v in got.items()}))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
