"""Where a training step's time goes, from the phase timers the trainer logs (runs.STEP_PHASES).

`phase_row(stats, batch)` reads one step's metrics row, `summarise(rows)` medians, means, shares,
generation tokens/s and THR's share over several; `peak_rss_mb()` the process's peak memory. Used
by benchmarks/step_breakdown.py, gpu_check.py and vs_trl.py. No torch import.
"""
from __future__ import annotations

import resource
import statistics

from .runs import STEP_PHASES

PHASES = (*STEP_PHASES, "other")  # "other": time/step minus the logged phases


def peak_rss_mb() -> float:
    """Peak resident memory of this process (ru_maxrss, KiB on Linux), in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def phase_row(stats: dict, batch: int) -> dict:
    """Per-phase seconds of one logged step (PHASES plus step), and its completion tokens."""
    row = {k: float(stats.get(f"time/{k}", 0.0)) for k in (*STEP_PHASES, "step")}
    row["other"] = row["step"] - sum(row[k] for k in STEP_PHASES)
    row["tokens"] = float(stats.get("train/completion_len", 0.0)) * batch
    return row


def summarise(rows: list[dict]) -> dict:
    """Medians, means and shares of phase_row rows; generation tokens/s; THR's share."""
    med = {k: statistics.median(r[k] for r in rows) for k in PHASES + ("step",)}
    mean = {k: statistics.fmean(r[k] for r in rows) for k in PHASES + ("step",)}
    gen = sum(r["generate"] for r in rows)
    return {"phases_s": med, "phases_mean_s": mean,
            "phase_frac": {k: mean[k] / mean["step"] for k in PHASES},
            "gen_tokens_per_s": sum(r["tokens"] for r in rows) / gen if gen else 0.0,
            "thr_overhead_frac": sum(r["thr"] for r in rows) / sum(r["step"] for r in rows),
            "thr_overhead_frac_median": statistics.median(r["thr"] / r["step"] for r in rows)}
