"""The anatomy figures' measures (E1, E7) over per-token THR records (thrlab.train.records):
token tables, the overlap of top-|THR| and top-entropy tokens, the share of |THR| mass the top
tokens carry, an example group to colour. Reading needs no torch.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from thrlab.train.records import load_token_records, token_rows


def token_table(runs: pd.DataFrame) -> pd.DataFrame:
    """token_rows of every saved step of every run (thr_tokens/ of THR runs)."""
    rows = [row for r in runs.itertuples() for rec in load_token_records(r.run_dir)
            for row in token_rows(rec, r.method, r.seed)]
    if not rows:
        raise ValueError("no THR token records in these runs: they are saved by THR runs "
                         "(thr_mode != off) every thr_save_every steps")
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


def overlap_curve(tokens: pd.DataFrame, fracs: list[float]) -> pd.DataFrame:
    """Overlap of top-|THR| with top-entropy tokens per selection fraction, over the saved
    batches (one per run and step; tokens of mixed groups only): mean, std, n batches."""
    tok = tokens[tokens.mixed]
    rows = []
    for f in fracs:
        vals = [top_overlap(d.thr.abs(), d.entropy, f)
                for _, d in tok.groupby(["method", "seed", "step"]) if len(d)]
        rows.append({"frac": f, "overlap": float(np.mean(vals)) if vals else float("nan"),
                     "std": float(np.std(vals)) if vals else float("nan"), "n": len(vals)})
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
