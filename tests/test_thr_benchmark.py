"""benchmarks/thr_speed.py runs end to end in its --quick shape (its numbers live in RESULTS.md)."""
import json
import sys
from pathlib import Path
from tests.fixtures import limits

ROOT = Path(__file__).resolve().parents[1]


def test_thr_speed_quick_runs_and_routes_agree():
    out = limits.run([sys.executable, str(ROOT / "benchmarks" / "thr_speed.py"), "--quick"],
                     capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["shape"]["T"] == 32 and res["paper"]["auto_route"] in ("factorised", "gram")
    for m in ("factorised", "gram", "auto"):
        r = res["naive_vs_chunked"][m]
        assert "error" not in r and r["wall_s"] > 0
        assert r["max_err_vs_naive"] < 1e-3  # the chunked routes compute the pairwise sum
    assert "error" not in res["naive_vs_chunked"]["naive"]
    assert res["paper"]["gram_vs_factorised_max_err"] < 1e-3
    gv = res["group_vocab"]
    assert 0 <= gv["sign_flip_frac"] <= 1 and -1 <= gv["spearman"] <= 1
    tg = res["tiny_grpo"]
    assert tg["steps"] == 3 and 0 < tg["thr_overhead_frac"] < 1
