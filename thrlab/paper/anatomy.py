"""The anatomy figures' measures (E1, E7) over per-token THR records (thrlab.train.records):
token tables, the overlap of top-|THR| and top-entropy tokens, the share of |THR| mass the top
tokens carry, an example group to colour, and the same measures per group (one problem's
samples) with intervals over problems. Reading needs no torch.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from thrlab.core.stats import problem_mean
from thrlab.train.records import load_token_records, token_rows


def token_table(runs: pd.DataFrame) -> pd.DataFrame:
    """token_rows of every saved step of every run (thr_tokens/ of THR runs)."""
    rows = [row for r in runs.itertuples() for rec in load_token_records(r.run_dir)
            for row in token_rows(rec, r.method, r.seed)]
    if not rows:
        raise ValueError("no THR token records in these runs: they are saved by THR runs "
                         "(thr_mode != off) every thr_save_every steps")
    return pd.DataFrame(rows)


def records_table(records: list[dict], method: str, seed: int = 0) -> pd.DataFrame:
    """token_rows of token records held in memory (e.g. thrlab.train.snapshot.thr_snapshot's)."""
    return pd.DataFrame([row for rec in records for row in token_rows(rec, method, seed)])


GROUP = ["method", "seed", "step", "group"]  # one group = one problem's samples


def group_measures(tokens: pd.DataFrame, top_frac: float = 0.1,
                   overlap_frac: float = 0.2) -> pd.DataFrame:
    """One row per mixed group (a problem whose samples have both rewards): the share of its
    |THR| its top `top_frac` tokens carry, its fractions of positive and negative THR, the
    overlap of its top-`overlap_frac` tokens by |THR| and by entropy, and its mean THR on
    correct and on wrong responses."""
    rows = []
    for key, d in tokens[tokens.mixed].groupby(GROUP):
        thr = d.thr.to_numpy()
        rows.append(dict(zip(GROUP, key), tokens=len(d), top_share=mass_share(thr, top_frac),
                         frac_pos=float((thr > 0).mean()), frac_neg=float((thr < 0).mean()),
                         overlap=top_overlap(np.abs(thr), d.entropy, overlap_frac),
                         thr_correct=float(d.thr[d.reward == 1].mean()),
                         thr_wrong=float(d.thr[d.reward == 0].mean())))
    return pd.DataFrame(rows)


MEASURES = ["top_share", "frac_pos", "frac_neg", "overlap", "thr_correct", "thr_wrong"]


def intervals(measures: dict[str, pd.DataFrame], columns: list[str] = MEASURES) -> pd.DataFrame:
    """{label: group_measures table} -> one row per label and column: the mean and 95%
    t-interval over problems (NaN with fewer than 2), a description of these samples, not a
    claim over training seeds."""
    rows = []
    for label, m in measures.items():
        for c in columns:
            x = m[c].dropna() if c in m else []
            ci = (problem_mean(x) if len(x) > 1 else
                  {"mean": float(np.mean(x)) if len(x) else np.nan, "ci_low": np.nan,
                   "ci_high": np.nan, "problems": len(x)})
            rows.append({"model": label, "measure": c, "mean": ci["mean"],
                         "ci_low": ci["ci_low"], "ci_high": ci["ci_high"],
                         "problems": ci["problems"]})
    return pd.DataFrame(rows)


def top_overlap(score_a, score_b, frac: float) -> float:
    """Fraction of the top-`frac` tokens by score_a that are also top-`frac` by score_b
    (n = max(1, round(frac * N)) tokens each; ties broken by position)."""
    a = np.asarray(score_a, float)
    return top_k_overlap(a, np.asarray(score_b, float), max(1, int(round(frac * len(a)))))


def top_k_overlap(a, b, k: int) -> float:
    """Fraction of the k largest entries of b that are among the k largest of a (ties broken
    by position). Random ranking expects k / n."""
    top_a = np.argsort(-np.asarray(a, float), kind="stable")[:k]
    top_b = np.argsort(-np.asarray(b, float), kind="stable")[:k]
    return len(set(top_a) & set(top_b)) / k


def overlap_curve(tokens: pd.DataFrame, fracs: list[float],
                  by: tuple[str, ...] = ("method", "seed", "step")) -> pd.DataFrame:
    """Overlap of top-|THR| with top-entropy tokens per selection fraction, over the saved
    batches (one per run and step; tokens of mixed groups only), or over whatever `by` names
    (GROUP: per problem): mean, std, n, and the 95% t-interval's half width."""
    tok = tokens[tokens.mixed]
    rows = []
    for f in fracs:
        vals = [top_overlap(d.thr.abs(), d.entropy, f) for _, d in tok.groupby(list(by)) if len(d)]
        ci = problem_mean(vals) if len(vals) > 1 else {"mean": np.nan, "ci_high": np.nan}
        rows.append({"frac": f, "overlap": float(np.mean(vals)) if vals else float("nan"),
                     "std": float(np.std(vals)) if vals else float("nan"), "n": len(vals),
                     "half_ci": ci["ci_high"] - ci["mean"]})
    return pd.DataFrame(rows)


def mass_share(values, top_frac: float) -> float:
    """Share of sum(|values|) held by the top `top_frac` of entries by |value|."""
    v = np.sort(np.abs(np.asarray(values, float)))[::-1]
    if not len(v) or v.sum() == 0:
        return float("nan")
    return float(v[:max(1, int(round(top_frac * len(v))))].sum() / v.sum())


def example_group(tokens: pd.DataFrame) -> list[tuple[str, list[str], list[float]]]:
    """The saved mixed group with the largest |THR| (ties: first), as (title, tokens, thr) rows."""
    tok = tokens[tokens.mixed]
    if tok.empty:
        return []
    best = tok.loc[tok.thr.abs().idxmax()]
    g = tok[(tok.method == best.method) & (tok.seed == best.seed) & (tok.step == best.step)
            & (tok.group == best.group)]
    return [(f"{'correct' if d.reward.iloc[0] == 1 else 'wrong'}", d.token.tolist(),
             d.thr.tolist()) for _, d in g.groupby("row", sort=True)]
