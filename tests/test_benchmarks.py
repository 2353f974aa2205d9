"""The benchmark scripts run on CPU with their smoke shapes (their numbers live in RESULTS.md)."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_script_runs_on_cpu_tiny_shape():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--shape",
                          "tiny", "--prompts", "2", "--group-size", "2", "--prompt-len", "4",
                          "--new-tokens", "4", "--steps", "1"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    step = res["steps"][0]
    assert res["batch"] == 4 and step["gen_tokens_per_s"] > 0
    assert abs(step["step"] - (step["generate"] + step["ref_logp"] + step["update"])) < 1e-6
