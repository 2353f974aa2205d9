"""The CPU testbed study of one preset, read back from its run folders: is plain GRPO in the
narrowing regime, what did the study cost, how many seeds per CPU-hour.

    python benchmarks/testbed.py --preset narrowing [--runs-root runs] [--seeds 0 1 2 3 4]
    python benchmarks/testbed.py --preset strategies --json
    python benchmarks/testbed.py --preset narrowing --replicate 5 6 7 8 9   # a second seed set

Reads the finished runs of the preset in the runs root (what `make reproduce ARGS="--preset
NAME"` made with the study budget of thrlab.paper.study.STUDY_BUDGETS; nothing is trained here), for
the study's seeds: for GRPO, the change from the start model
of greedy accuracy and Pass@K at every K (paired by seed and problem, 95% intervals), and on the
strategies task the strategy entropy before and after; then the CPU seconds of every run (its own
wall time at one thread: training plus evaluations), their sum, and seeds per CPU-hour (one seed
of the whole grid: every method once). `--replicate SEEDS` also reads a second seed set of the
same study (`make reproduce ARGS="--preset NAME -p seeds=[5,6,7,8,9]"`) and prints every claim on
the first set, the second and both pooled, with whether the two sets' verdicts agree, whether
each set's estimate lies inside the other's interval, and whether the second (confirmatory) set
confirms it. Verdicts follow thrlab.paper.study.verdict: directional claims Holm-adjusted over the
study's family, comparable claims by equivalence within a stated margin, "not resolved" with the
interval's bound. Prints tables and, on its last line, JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from thrlab.core.errors import DataError
from thrlab.core.stats import seed_difference
from thrlab.paper import controls, frontier, grid, paired, plotting, study
from thrlab.train.runs import read_json

# A frontier target chosen after the runs (the fixed one, the start + FRONTIER_GAIN, is passed
# by most runs before their first evaluation): printed, and marked, as exploratory.
EXPLORATORY_GAIN = 0.10


def controls_report(preset: str, runs_root: str, runs, k: int) -> dict:
    """Print the controls study's tables (thrlab.paper.controls.STUDY_SEED_SETS) for `runs` and return
    them as JSON: each method's mechanism metrics, the step-size control, the frontier at the
    fixed gain (and at half and 1.5x it, for sensitivity) and the dose-response of p."""
    out = {}
    mech = controls.mechanics_table(runs)
    for metric in ("greedy_acc", f"pass@{k}"):
        for m, x in paired.problem_scores(runs, metric).items():
            seeds = sorted(runs[runs.method == m].seed)
            for s, v in zip(seeds, x.mean(axis=1)):
                mech.loc[(mech.method == m) & (mech.seed == s), metric] = float(v)
    means = mech.groupby("method", sort=False).mean(numeric_only=True)
    print(f"\nmechanism metrics (seed means; distance and KL from the start after the last step, "
          f"share of tokens a mask keeps, a mask control's overlap with THR's mask):")
    print("| method | lr | seeds | distance | KL from start | tokens kept | overlap with THR's | "
          f"greedy | Pass@{k} |")
    print("|---|---|---|---|---|---|---|---|---|")
    for m, r in means.iterrows():
        n = int((mech.method == m).sum())
        cell = lambda v, f: "-" if v != v else format(v, f)  # NaN: not logged by this method
        print(f"| {m} | {r.lr:.2g} | {n} | {r.distance:.3f} | {cell(r.kl_start, '.4f')} | "
              f"{cell(r.frac_kept, '.3f')} | {cell(r.control_overlap, '.3f')} | "
              f"{r.greedy_acc:.3f} | {r[f'pass@{k}']:.3f} |")
    out["mechanics"] = mech.to_dict("records")
    m = controls.fixed_matched_lr(preset, runs_root)
    if m is not None:
        out["matched"] = {"lr": m["lr"], "lr_exact": m["lr_exact"], "target": m["target"],
                          "ladder": {str(k_): v for k_, v in m["ladder"].items()}}
        print(f"\nstep-size control: GRPO at lr {m['lr']:g} (exact {m['lr_exact']:.4g}), where "
              f"GRPO's seed-mean distance over lrs {sorted(m['ladder'])} "
              f"({', '.join(f'{v:.3f}' for _, v in sorted(m['ladder'].items()))}) reaches THR "
              f"p = 0's {m['target']:.3f} on seeds {list(controls.STUDY_SEED_SETS[0])}")
        piv = mech.pivot(index="seed", columns="method")
        for col in ("distance", "kl_start"):
            for a, b in ((controls.MATCHED, "thr_p0"), (controls.MATCHED, "grpo")):
                if (col, a) in piv and (col, b) in piv:
                    d = piv[[(col, a), (col, b)]].dropna()
                    if len(d) > 1:
                        r = seed_difference(d[(col, b)], d[(col, a)])
                        out["matched"][f"{col}_{a}_minus_{b}"] = r
                        print(f"  {col}: {a} minus {b} {r['mean']:+.3f} [{r['ci_low']:+.3f}, "
                              f"{r['ci_high']:+.3f}] over {len(d)} seeds")
    along = controls.frontier_runs(runs)
    pts = frontier.frontier_points(along, k) if len(along) else None  # read once, every gain
    front = controls.frontier_claims(runs, k, points=pts)
    if not front.empty:
        out["frontier"] = {}
        target = float(front.target.iloc[0])
        print(f"\nfrontier: Pass@{k} at greedy accuracy {target:.3f} (the start's + "
              f"{controls.FRONTIER_GAIN:g}) on the first {int(front.problems.iloc[0])} problems, "
              "method minus GRPO at the same lr, averaged over the lrs where both reach it, "
              "paired by seed (95% t-interval over seeds); at half and 1.5x the gain too:")
        print("| gain | method | difference [95% interval] | seeds | lrs per seed |")
        print("|---|---|---|---|---|")
        gains = [controls.FRONTIER_GAIN, controls.FRONTIER_GAIN / 2, controls.FRONTIER_GAIN * 1.5]
        for gain in gains + [EXPLORATORY_GAIN]:
            t = front if gain == controls.FRONTIER_GAIN else controls.frontier_claims(
                runs, k, gain=gain, points=pts)
            name = f"{gain:g}" if gain in gains else f"{gain:g} (exploratory)"
            out["frontier"][name] = t.to_dict("records")
            for r in t.itertuples():
                print(f"| {name} | {r.method} | {100 * r.diff:+.1f} [{100 * r.ci_low:+.1f}, "
                      f"{100 * r.ci_high:+.1f}] | {r.seeds} | {r.lrs:.1f} |")

        first = pts[pts.step > 0].groupby(["method", "seed"]).apply(
            lambda d: d.sort_values("step").greedy_acc.iloc[0], include_groups=False)
        early = int((first >= target).sum())
        out["frontier"]["crossed_at_first_evaluation"] = [early, len(first)]
        print(f"{early} of {len(first)} runs are past the target at their first evaluation "
              f"(step {int(pts[pts.step > 0].step.min())}): their value is read on the line from "
              "the start to that point")
    dose = controls.dose_table(runs, ["greedy_acc", f"pass@{k}"])
    if len(dose) and dose.p.nunique() > 3:
        out["dose"] = dose.to_dict("records")
        print(f"\ndose-response of p (THR at the preset's lr minus GRPO, paired by seed and "
              "problem, 95% intervals):")
        print("| p | greedy | Pass@" + f"{k} | seeds |")
        print("|---|---|---|---|")
        for p_, d in dose.groupby("p"):
            cells = [f"{100 * r.diff:+.1f} [{100 * r.ci_low:+.1f}, {100 * r.ci_high:+.1f}]"
                     for r in d.sort_values("metric").itertuples()]
            print(f"| {p_:+g} | {' | '.join(cells)} | {int(d.seeds.min())} |")
    return out


def figures(runs, k: int, out_dir: str) -> list[str]:
    """The study's figures in out_dir: frontier.png (Pass@K against greedy accuracy at each lr
    of the ladder, and greedy accuracy and Pass@K against the KL from the start at the
    preset's lr; thrlab.paper.plotting.frontier) and dose_response.png (greedy and Pass@K minus GRPO
    against p; plotting.dose_response). Only what the runs hold is drawn."""
    paths = []
    along = controls.frontier_runs(runs)  # the control's copy of a ladder run: drawn once
    if not along.empty:
        pts = frontier.with_kl(frontier.frontier_points(along, k), along)
        split = {m: frontier.split_label(m) for m in set(pts.method)}
        pts = pts.assign(base=pts.method.map(lambda m: split[m][0]),
                         factor=pts.method.map(lambda m: split[m][1]))
        fig, ax = plotting.figure(ncols=3, nrows=2, width=plotting.DOUBLE, height=2.6)
        for i, f in enumerate(controls.LR_FACTORS):
            d = pts[pts.factor == f].assign(method=lambda x: x.base)
            plotting.frontier(ax[i], d, k)
            ax[i].set_title(f"lr x {f:g}")
        own = pts[pts.factor == 1.0]
        plotting.frontier(ax[3], own, k, x="kl_start", y="greedy_acc")
        plotting.frontier(ax[4], own, k, x="kl_start")
        ax[3].set_title("preset lr")
        ax[4].set_title("preset lr")
        ax[5].axis("off")
        note = ax[0].get_xlabel().split("\n", 1)[1]  # the seeds and intervals, said once
        for a in ax[:5]:
            a.set_xlabel(a.get_xlabel().split("\n", 1)[0])
        fig.suptitle(note, fontsize=7)
        paths += plotting.save_figure(fig, out_dir, "frontier")
    dose = controls.dose_table(runs, ["greedy_acc", f"pass@{k}"])
    if len(dose) and dose.p.nunique() > 3:
        fig, ax = plotting.figure(ncols=2, width=plotting.DOUBLE)
        plotting.dose_response(ax[0], dose, "greedy_acc")
        plotting.dose_response(ax[1], dose, f"pass@{k}")
        paths += plotting.save_figure(fig, out_dir, "dose_response")
    return [str(p) for p in paths]


def _reading(c) -> str:
    """A claim's verdict in words: 'not resolved' names the interval's bound, 'equivalent',
    'not shown' and 'different' the margin (points; bits for strategy entropy)."""
    scale, unit = (1, " bits") if c["metric"] == "strategy_entropy" else (100, " points")
    v = c["verdict"]
    if v == "not resolved":
        word = "at most" if c["direction"] > 0 else "at least"
        return f"not resolved: the effect is {word} {scale * c['bound']:+.1f}{unit}"
    if c["direction"] == 0 and v != "one seed: mechanics only":
        return f"{v} (margin +-{scale * c['margin']:.0f}{unit})"
    return v


def _cell(c) -> str:
    """One claim's difference, interval and verdict, in points (bits for strategy entropy)."""
    scale, unit = (1, " bits") if c["metric"] == "strategy_entropy" else (100, "")
    return (f"{scale * c['diff']:+.1f}{unit} [{scale * c['ci_low']:+.1f}, {scale * c['ci_high']:+.1f}]"
            f": {_reading(c)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="narrowing")
    ap.add_argument("--runs-root", default="runs")
    ap.add_argument("--seeds", type=int, nargs="+", default=None,
                    help="default: the first seed set of thrlab.paper.controls.STUDY_SEED_SETS")
    ap.add_argument("--replicate", type=int, nargs="+", default=None, metavar="SEED",
                    help="a second seed set of the same study: claims on both and pooled")
    ap.add_argument("--figures", default=None, metavar="DIR",
                    help="also draw the study's frontier and dose-response figures into DIR")
    ap.add_argument("--json", action="store_true", help="(the JSON line is always printed last)")
    args = ap.parse_args()


    own = grid.preset_config(args.preset)
    seeds = args.seeds or list(controls.STUDY_SEED_SETS[0])
    runs = controls.study_runs(args.preset, args.runs_root, seeds)
    grpo = runs[runs.method == "grpo"]
    print(f"{len(runs)} runs: " + ", ".join(f"{m} x {n}" for m, n in
                                           runs.method.value_counts(sort=False).items()))
    ks = sorted(int(k.split("@")[1]) for k in read_json(Path(grpo.run_dir.iloc[0]) /
                                                         "eval_after.json")["mean"]
                if k.startswith("pass@"))
    gains = paired.gain_table(grpo, ["greedy_acc"] + [f"pass@{k}" for k in ks])
    print(f"GRPO after minus start ({len(seeds)} seeds; 95% intervals over seeds and problems):")
    print(gains[["metric", "before", "after", "diff", "ci_low", "ci_high", "problems"]]
          .round(4).to_string(index=False))
    out = {"preset": args.preset, "seeds": seeds,
           "grpo_gain": gains.drop(columns=["method"]).to_dict("records")}
    top_k = study.passk_top(ks[-1])  # the claims' Pass@K (thrlab.paper.study.CLAIMS)
    top = gains[gains.metric == f"pass@{top_k}"].iloc[0]
    greedy = gains[gains.metric == "greedy_acc"].iloc[0]
    out["greedy_rises"] = bool(greedy.ci_low > 0)
    out["passk_narrows"] = bool(top["diff"] <= 0)
    narrows = out["passk_narrows"]
    if own.arith_op == "mul_chain":

        div = grid.strategy_table(grpo)
        r = seed_difference(div.entropy_before, div.entropy_after)
        out["strategy_entropy"] = {"before": float(div.entropy_before.mean()),
                                   "after": float(div.entropy_after.mean()), "diff": r["mean"],
                                   "ci": [r["ci_low"], r["ci_high"]]}
        out["strategies_collapse"] = bool(r["ci_high"] < 0)
        narrows = narrows or out["strategies_collapse"]
        print(f"strategy entropy (bits) before {out['strategy_entropy']['before']:.3f}"
              f", after GRPO {out['strategy_entropy']['after']:.3f} (change {r['mean']:+.3f}, "
              f"95% interval over seeds [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}])")
    out["narrowing"] = bool(out["greedy_rises"] and narrows)
    claims = study.claims_table(runs)
    print(f"\nthe paper's claims (method minus baseline, {len(seeds)} seeds, paired by seed and "
          "problem; 95% interval; p two-sided, Holm-adjusted over the directional claims; "
          "comparable claims by equivalence, 90% interval inside the margin; MDE at 80% power):")
    print("| experiment | claim | metric | difference [95% interval] | p (Holm) | MDE | "
          "seeds x problems | verdict |")
    print("|---|---|---|---|---|---|---|---|")
    for c in claims.itertuples():
        if c.metric == "strategy_entropy":  # bits, one number per run
            cells = (f"{c.metric} (bits)", f"{c.diff:+.2f} [{c.ci_low:+.2f}, {c.ci_high:+.2f}]",
                     f"{c.mde:.2f}", f"{c.seeds} seeds")
        else:  # points
            cells = (c.metric, f"{100 * c.diff:+.1f} [{100 * c.ci_low:+.1f}, "
                     f"{100 * c.ci_high:+.1f}]", f"{100 * c.mde:.1f}", f"{c.seeds} x {c.problems}")
        p = "-" if c.direction == 0 or c.p_holm != c.p_holm else f"{c.p_holm:.3f}"  # NaN
        cells = (*cells[:2], p, *cells[2:])
        print(f"| {c.experiment} | {c.claim} | " + " | ".join(cells) + f" | "
              f"{_reading(c._asdict())} |")
    out["claims"] = claims.to_dict("records")
    out.update(controls_report(args.preset, args.runs_root, runs, top_k))
    if args.figures:
        out["figures"] = figures(runs, top_k, args.figures)
    own_runs = runs.drop_duplicates("run_dir")  # a ladder run that is also the control counts once
    cpu_s = float(own_runs.wall_s.sum())
    per_seed = cpu_s / len(seeds)
    out.update(runs=len(own_runs), cpu_s=cpu_s, cpu_s_per_seed=per_seed,
               seeds_per_cpu_hour=3600 / per_seed, mean_run_s=float(own_runs.wall_s.mean()),
               mean_train_s=float(own_runs.train_s.mean()))
    if args.replicate:
        again = study.claims_table(controls.study_runs(args.preset, args.runs_root, args.replicate))
        both = controls.study_runs(args.preset, args.runs_root, sorted(set(seeds) | set(args.replicate)))
        pooled = study.claims_table(both)
        print(f"\n== the controls study on both seed sets pooled, seeds "
              f"{sorted(set(seeds) | set(args.replicate))} ==")
        out["pooled_controls"] = controls_report(args.preset, args.runs_root, both, top_k)
        rep = study.replication(claims, again, pooled)
        out["replication"] = {"seeds": args.replicate, "claims": rep,
                              "same_verdict": sum(r["same_verdict"] for r in rep),
                              "confirmed": sum(r["confirmed"] for r in rep),
                              "inside": sum(r["inside"] for r in rep), "of": len(rep)}
        print(f"\nreplication: seeds {seeds} vs {args.replicate}, and pooled")
        print("| experiment | claim | metric | first set | second set | pooled | same verdict | "
              "each inside the other's interval |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rep:
            print(f"| {r['experiment']} | {r['claim']} | {r['metric']} | {_cell(r['first'])} | "
                  f"{_cell(r['second'])} | {_cell(r['pooled'])} | "
                  f"{'yes' if r['same_verdict'] else 'no'} | {'yes' if r['inside'] else 'no'} |")
        print(f"{out['replication']['confirmed']} of {len(rep)} claims confirmed on the second "
              "set (reproduced or equivalent on both); "
              f"{out['replication']['same_verdict']} of {len(rep)} claims keep their verdict; "
              f"{out['replication']['inside']} of {len(rep)} estimates lie inside each other's "
              "interval")
    print(f"\nnarrowing regime (greedy up; Pass@{top_k} at or below the start, or the "
          f"strategies collapse): {out['narrowing']}")
    print(f"{len(own_runs)} runs, {cpu_s / 60:.1f} CPU-minutes at one thread each (mean run "
          f"{out['mean_run_s']:.0f} s, of which training {out['mean_train_s']:.0f} s); one seed of "
          f"the grid costs {per_seed / 60:.1f} CPU-minutes: {out['seeds_per_cpu_hour']:.2f} seeds "
          "per CPU-hour")
    print(json.dumps(out, default=float))


if __name__ == "__main__":
    try:
        main()
    except DataError as err:  # no or ambiguous study runs: say so, no traceback
        sys.exit(f"testbed.py: {err}")
