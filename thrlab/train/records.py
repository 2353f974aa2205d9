"""Per-token THR records: question, token text, THR, entropy and reward of the first whole groups
of a step's rollout, written by the trainer and read back by the anatomy figures (E1, E7).

Saved every `thr_save_every` steps and at the last step to
`runs/<id>/thr_tokens/step_XXXXXX.json`, bounded to `thr_save_rows` responses (whole groups, in
rollout order) of at most `thr_save_tokens` tokens each, so a long run's folder stays small.
Reading needs no torch.
"""
from __future__ import annotations

import json
from pathlib import Path

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


def token_rows(record: dict, method: str = "", seed: int = 0) -> list[dict]:
    """One dict per token of one saved step (a token record): method, seed, step, group,
    row, pos, token, thr, entropy, reward, mixed (its group has both rewards: THR is defined)."""
    rewards = {}
    for resp in record["rows"]:
        rewards.setdefault(resp["group"], set()).add(resp["reward"])
    return [{"method": method, "seed": seed, "step": record.get("step", 0), "group": resp["group"],
             "row": i, "pos": k, "token": t, "thr": v, "entropy": e, "reward": resp["reward"],
             "mixed": len(rewards[resp["group"]]) > 1}
            for i, resp in enumerate(record["rows"])
            for k, (t, v, e) in enumerate(zip(resp["tokens"], resp["thr"], resp["entropy"]))]
