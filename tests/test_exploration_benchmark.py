"""The E4 exploration comparison script runs end to end in a smoke shape and reports pass@k curves
per method (the numbers themselves live in benchmarks/RESULTS.md)."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_exploration_baselines_smoke(tmp_path):
    env = dict(os.environ, THRLAB_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    # sft_steps=30: a cold start of seconds; steps=1 of 2 prompts x 8 keeps the run real but short
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "exploration_baselines.py"), "--seeds", "0",
         "--methods", "passk_mixed", "kl_cov", "--eval-limit", "6", "--eval-samples", "4",
         "--runs-root", str(tmp_path / "runs"), "--set", "steps=1", "--set", "sft_steps=30",
         "--set", "prompts_per_step=2"],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(res["curves"]) == {"passk_mixed", "kl_cov"} and res["eval_samples"] == 4
    for curve in res["curves"].values():
        means = [curve[f"pass@{k}"]["mean"] for k in (1, 2, 4)]
        assert means == sorted(means) and all(0 <= m <= 1 for m in means)  # pass@k rises with k
    kl = next(r for r in res["rows"] if r["method"] == "kl_cov")
    cfg = json.loads((tmp_path / "runs" / kl["run_id"] / "config.json").read_text())
    assert cfg["cov_mode"] == "kl_cov" and cfg["cov_ratio"] == 1e-2  # the tiny-scaled fraction
