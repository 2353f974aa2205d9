"""Where a training step's time goes, from the phase timers the trainer logs (runs.STEP_PHASES).

`phase_row(stats, batch)` reads one step's metrics row, `summarise(rows)` medians, means, shares,
generation tokens/s and THR's share over several; `peak_rss_mb()` the process's peak memory,
`reset_peak_rss` / `window_peak_rss_mb` a window's, and `phase_peaks(prof)` each phase's peak
tracked tensor bytes from a torch.profiler memory trace. Used by benchmarks/step_breakdown.py,
gpu_check.py, vs_trl.py and rehearse.py. No torch import.
"""
from __future__ import annotations

import bisect
import resource
import statistics

from thrlab.train.runs import STEP_PHASES

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


def reset_peak_rss() -> bool:
    """Start a new peak-RSS window (Linux: writes 5 to /proc/self/clear_refs); False elsewhere."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def window_peak_rss_mb() -> float:
    """Peak resident memory since the last reset_peak_rss (VmHWM), in MB; ru_maxrss if unknown."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return peak_rss_mb()


def phase_peaks(prof, device: str = "cpu", prefix: str = "thrlab/") -> dict[str, float]:
    """{phase: bytes} from a torch.profiler run with profile_memory=True: for each `prefix<phase>`
    range (step.Timers' phases), the peak of the tensor bytes allocated since profiling began and
    still live, within that range (a phase seen twice keeps its larger peak). Add the bytes live
    before profiling (e.g. the weights) for absolute peaks."""
    events = prof.profiler.kineto_results.events()
    mem = sorted((e.start_ns(), e.nbytes()) for e in events
                 if e.name() == "[memory]" and str(e.device_type()).lower().endswith(device))
    ranges = [(e.name()[len(prefix):], e.start_ns(), e.start_ns() + e.duration_ns())
              for e in events if e.name().startswith(prefix)]
    times, live, run = [], [], 0
    for t, nbytes in mem:
        run += nbytes
        times.append(t)
        live.append(run)
    out: dict[str, float] = {}
    for name, t0, t1 in ranges:
        i, j = bisect.bisect_left(times, t0), bisect.bisect_right(times, t1)
        before = live[i - 1] if i > 0 else 0
        peak = max(live[i:j], default=before)
        out[name] = max(out.get(name, 0.0), float(max(peak, before)))
    return out
