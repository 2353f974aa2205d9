"""Per-token THR records for the anatomy figures (E1, E7): question, token text, THR, entropy,
reward; saved by the trainer, read back as tables, and the overlap and mass-share measures the
figures draw.

Saved every `thr_save_every` steps and at the last step to
`runs/<id>/thr_tokens/step_XXXXXX.json`, bounded to `thr_save_rows` responses (whole groups, in
rollout order) of at most `thr_save_tokens` tokens each, so a long run's folder stays small.
Reading needs no torch.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .runs import write_json


def token_records(tok, tokens, mask, thr, entropy, rewards, adv, group_size: int,
                  max_rows: int, max_tokens: int, questions=None) -> dict:
    """Build the JSON-able record of the first whole groups; tensors are (B, T) / (B,),
    questions (B,) the question text of each row (None: not recorded)."""
    n_groups = max(1, max_rows // group_size)
    rows = []
    for b in range(min(len(tokens), n_groups * group_size)):
        m = mask[b].bool()
        ids = tokens[b][m][:max_tokens].tolist()
        rows.append({"group": b // group_size,
                     "question": None if questions is None else questions[b],
                     "reward": float(rewards[b]), "adv": float(adv[b]),
                     "tokens": tok.convert_ids_to_tokens(ids),
                     "text": tok.decode(ids, skip_special_tokens=True),
                     "thr": [round(float(x), 6) for x in thr[b][m][:max_tokens]],
                     "entropy": [round(float(x), 5) for x in entropy[b][m][:max_tokens]]})
    return {"group_size": group_size, "rows": rows}


def save_token_records(run_dir: str | Path, step: int, record: dict) -> Path:
    path = Path(run_dir) / "thr_tokens" / f"step_{step:06d}.json"
    write_json(path, dict(record, step=step))
    return path


def load_token_records(run_dir: str | Path) -> list[dict]:
    """All saved steps of a run, in step order."""
    return [json.loads(p.read_text(encoding="utf-8"))
            for p in sorted((Path(run_dir) / "thr_tokens").glob("step_*.json"))]


# -- per-token THR records (E1, E7) --------------------------------------------------------------
def token_rows(record: dict, method: str = "", seed: int = 0) -> list[dict]:
    """One dict per token of one saved step (thrlab.anatomy record): method, seed, step, group,
    row, pos, token, thr, entropy, reward, mixed (its group has both rewards: THR is defined)."""
    rewards = {}
    for resp in record["rows"]:
        rewards.setdefault(resp["group"], set()).add(resp["reward"])
    return [{"method": method, "seed": seed, "step": record.get("step", 0), "group": resp["group"],
             "row": i, "pos": k, "token": t, "thr": v, "entropy": e, "reward": resp["reward"],
             "mixed": len(rewards[resp["group"]]) > 1}
            for i, resp in enumerate(record["rows"])
            for k, (t, v, e) in enumerate(zip(resp["tokens"], resp["thr"], resp["entropy"]))]


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
