"""Train the controls study of a testbed preset (thrlab.paper.controls.STUDY_SEED_SETS): the frontier
(GRPO and each THR variant at three learning rates, evaluated along the run), the step-size
control (GRPO at the lr that matches THR p = 0's distance from the start), the token-choice
mask controls and the dose-response of p. Finished runs are reused; benchmarks/testbed.py reads
them.

    python benchmarks/run_study.py --preset narrowing                    # everything, in order
    python benchmarks/run_study.py --preset narrowing --parts frontier matched --seeds 0 1 2
    python benchmarks/run_study.py --preset tiny --only grpo thr_p0 --set steps=2   # a smoke run

The order is the budget's (issue 25): frontier and matched control on every seed set first,
then the masks, then the dose-response (first seed set only). The matched lr is measured on the
first seed set's frontier runs and fixed for the second (confirmatory) one. Two one-thread runs
at a time (`--workers`); each run's output goes to <runs-root>/.logs/<run_id>.log.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

PARTS = ("frontier", "matched", "masks", "dose")


def main(argv=None) -> int:
    from thrlab.paper import controls
    from thrlab.paper.grid import _run_parallel
    from thrlab.train.config import parse_overrides
    from thrlab.train.experiment import resolve_model_path
    from thrlab.train.presets import run_id
    from thrlab.train.runs import RunDir

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="narrowing")
    ap.add_argument("--runs-root", default="runs")
    ap.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    ap.add_argument("--seeds", type=int, nargs="+", default=None,
                    help="default: every seed set of thrlab.paper.controls.STUDY_SEED_SETS")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--only", nargs="+", default=None, metavar="LABEL",
                    help="train only the runs with these labels (thrlab.paper.controls.run_label)")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                    help="config overrides for every run (e.g. a smoke test's budget)")
    args = ap.parse_args(argv)
    overrides = parse_overrides(args.set)
    first = list(controls.STUDY_SEED_SETS[0])
    sets = [args.seeds] if args.seeds else [list(s) for s in controls.STUDY_SEED_SETS]
    root = Path(args.runs_root)
    matched = None
    for part in args.parts:
        for seeds in sets:
            if part == "dose":
                seeds = [s for s in seeds if s in first]
            if part == "matched" and matched is None:
                m = controls.fixed_matched_lr(args.preset, str(root))  # the reader's own
                if m is None:
                    raise SystemExit(f"the matched lr needs the frontier runs of seeds {first}: "
                                     f"run --parts frontier --seeds {' '.join(map(str, first))}")
                matched = m["lr"]
                print(f"matched lr {matched:g} (exact {m['lr_exact']:.4g}): GRPO's distance "
                      f"{m['ladder']} vs THR p = 0's {m['target']:.4f}", flush=True)
            cells = [c for c in controls.study_cells(args.preset, seeds, part, matched, overrides)
                     if args.only is None or c[0] in args.only or part == "matched"]
            todo = [(label, seed, cfg, root / run_id(cfg)) for label, seed, cfg in cells
                    if not RunDir(root / run_id(cfg)).complete]
            print(f"{part}, seeds {seeds}: {len(cells)} runs, {len(todo)} to train", flush=True)
            if todo:
                resolve_model_path(todo[0][2], progress=False)  # the cold start, once
                t0 = time.time()
                _run_parallel(todo, args.workers, root)
                print(f"{part}, seeds {seeds}: {time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
