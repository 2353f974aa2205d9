"""The benchmark scripts run end to end in their smoke shapes and print the documented JSON (their
numbers live in benchmarks/RESULTS.md; speed is never asserted here)."""
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures import limits
from thrlab.train.runs import STEP_PHASES

ROOT = Path(__file__).resolve().parents[1]
PHASES = {*STEP_PHASES, "other"}


def run_script(name: str, *args: str) -> dict:
    """Run benchmarks/<name> with args on one thread; return the JSON of its last line."""
    env = dict(os.environ, OMP_NUM_THREADS="1")  # smoke runs: no thread oversubscription
    out = limits.run([sys.executable, str(ROOT / "benchmarks" / name), *args],
                     capture_output=True, text=True, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_gpu_check_script_runs_on_cpu_tiny_shape():
    res = run_script("gpu_check.py", "--shape", "tiny", "--prompts", "2", "--group-size", "2",
                     "--prompt-len", "8", "--new-tokens", "4", "--steps", "1", "--warmup", "0",
                     "--no-before-after")
    step = res["rows"][0]
    assert res["batch"] == 4 and res["device"] == "cpu" and res["gen_tokens_per_s"] > 0
    assert set(res["phases_s"]) == PHASES | {"step"}
    assert step["old_logp"] > 0 and step["thr"] > 0  # 2 mini-batches: old pass; THR on
    assert abs(step["step"] - sum(step[k] for k in PHASES)) < 1e-9
    assert 0 < res["thr_overhead_frac"] < 1 and res["generation"]["weight_gb"] > 0


def test_step_breakdown_quick_json():
    res = run_script("step_breakdown.py", "--quick", "--json")
    assert set(res["phases_s"]) == PHASES | {"step"} and res["steps"] == 2
    assert res["gen_tokens_per_s"] > 0 and res["peak_rss_mb"] > 0
    assert 0 < res["thr_overhead_frac"] < 1 and 0 < res["thr_overhead_frac_median"] < 1
    assert res["phases_s"]["old_logp"] == 0  # tiny preset is on-policy: THR reads the update


def test_vs_trl_quick_json():
    pytest.importorskip("trl")
    res = run_script("vs_trl.py", "--quick", "--json")
    for name in ("thrlab", "thrlab_thr", "trl"):
        assert res[name]["step_s_median"] > 0 and res[name]["steps_counted"] == 1
        assert set(res[name]["phases_s_median"]) == PHASES
    assert res["speedup_vs_trl"] > 0 and res["speedup_vs_trl_thr"] > 0


def test_thr_scaling_quick_json():
    res = run_script("thr_scaling.py", "--quick", "--with-logits", "--json")
    routes = {"naive", "factorised", "gram"}
    assert {r["route"] for r in res["n_sweep"]} == routes
    assert {r["route"] for r in res["v_sweep"]} == routes | {"factorised+logits", "gram+logits"}
    for sweep in ("n_sweep", "v_sweep"):
        for r in res[sweep]:
            assert r["wall_s"] >= 0 and r["madds_est"] > 0
            assert r["route"] == "naive" or r["max_err_vs_naive"] < 1e-4
    assert set(res["slope_time_vs_N"]) == {"naive", "factorised", "gram"}


def test_stats_coverage_quick_json():
    res = run_script("stats_coverage.py", "--sims", "40", "--seeds", "3", "--problems", "60")
    assert [r["sd_seed"] for r in res["rows"]] == [0.0, 0.1, 0.2]
    for r in res["rows"]:
        assert 0 <= r["coverage"] <= 1 and 0 <= r["power_at_mde"] <= 1 and r["mde"] > 0
        assert 0 < r["true_diff"] < 0.1  # a logit shift of 0.1 moves accuracy by ~2 points


def test_fingerprint_is_reproducible_and_catches_a_change(tmp_path):
    """Two runs of one case hash the same (the refactoring safety net is deterministic), and a
    fingerprint that differs in any part makes --compare fail."""
    first = tmp_path / "a.json"
    run_script("fingerprint.py", "--only", "tiny/grpo", "--out", str(first), "--runs-root",
               str(tmp_path / "a"))
    again = run_script("fingerprint.py", "--only", "tiny/grpo", "--compare", str(first),
                       "--runs-root", str(tmp_path / "b"))
    assert again == {k: v["all"] for k, v in json.loads(first.read_text()).items()}
    tampered = json.loads(first.read_text())
    tampered["tiny/grpo"]["metrics"] = "0" * 64
    first.write_text(json.dumps(tampered))
    out = limits.run([sys.executable, str(ROOT / "benchmarks" / "fingerprint.py"), "--only",
                      "tiny/grpo", "--compare", str(first), "--runs-root",
                      str(tmp_path / "c")], capture_output=True, text=True, cwd=ROOT,
                     env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 1 and "DIFFERS tiny/grpo: metrics" in out.stdout

    def same_runs():
        return limits.run([sys.executable, str(ROOT / "benchmarks" / "fingerprint.py"),
                           "--same-runs", str(tmp_path / "a"), str(tmp_path / "b")],
                          capture_output=True, text=True, cwd=ROOT)

    done = sorted(d for d in (tmp_path / "b").iterdir() if (d / "COMPLETE").exists())
    ok = same_runs()  # the two run roots above hold the same runs, folder by folder
    assert ok.returncode == 0 and f"{len(done)} of {len(done)} run folders" in ok.stdout
    run = next(d for d in done if (d / "metrics.jsonl").exists())
    rows = (run / "metrics.jsonl").read_text().splitlines()
    first_row = json.loads(rows[0])
    first_row["time/step"] = 1e9  # wall times are not behaviour
    (run / "metrics.jsonl").write_text("\n".join([json.dumps(first_row), *rows[1:]]) + "\n")
    assert same_runs().returncode == 0
    first_row["train/loss"] = 123.0
    (run / "metrics.jsonl").write_text("\n".join([json.dumps(first_row), *rows[1:]]) + "\n")
    bad = same_runs()
    assert bad.returncode == 1 and f"DIFFERS {run.name}: metrics" in bad.stdout


@pytest.mark.parametrize("onednn", [True, False], ids=["onednn", "no-onednn"])
def test_unembed_copy_script_reports_what_the_kernels_do(onednn):
    """F.linear copies the unembedding per row where oneDNN's bf16 bmm runs (an Intel with
    AVX512-BF16) and not with torch's own kernels (a CPU without AVX512, or --no-onednn): the
    script says which it saw, and on either unembed holds no more than F.linear (up to one row's
    logits of GEMM scratch, see test_exact_speedups)."""
    rows, tokens, hidden, vocab = 4, 3, 64, 4096
    res = run_script("unembed_copy.py", "--rows", str(rows), "--tokens", str(tokens), "--hidden",
                     str(hidden), "--vocab", str(vocab), "--repeats", "1", "--threads", "1",
                     *([] if onednn else ["--no-onednn"]))
    assert set(res["median_s"]) == {"F.linear", "unembed"}
    peak = res["peak_bytes"]
    assert res["f_linear_copies"] == (peak["F.linear"] >= rows * hidden * vocab * 2)
    if not onednn:
        assert not res["f_linear_copies"]  # torch's own bmm reads the expanded weight in place
    print(f"oneDNN {'on' if onednn else 'off'}, {res['cpu_capability']}: F.linear copies: "
          f"{res['f_linear_copies']}; peak F.linear {peak['F.linear']:.0f} B, unembed "
          f"{peak['unembed']:.0f} B")
    assert peak["unembed"] <= peak["F.linear"] + tokens * vocab * 2


def test_mechanics_script_separates_a_loss_scale_from_a_smaller_lr():
    from thrlab.train.presets import from_preset

    res = run_script("mechanics.py", "--preset", "tiny", "--steps", "2", "--probe-prompts", "4",
                     "--methods", "grpo_mass_matched", "thr_entropy_mask", "--match", "grpo@lr/4")
    runs = {r["method"]: r for r in res["runs"]}
    assert set(runs) == {"grpo", "grpo_mass_matched", "grpo@lr/0.5", "grpo@lr/2", "grpo@lr/4",
                         "grpo@lr/8", "thr_entropy_mask"}
    # a rung of the ladder matches itself: the lr it ran at
    for key in ("distance", "kl_start"):
        got = res["matched_lr"]["grpo@lr/4"][key]
        assert got["lr"] == pytest.approx(from_preset("tiny").lr / 4)
    grpo = runs["grpo"]["update_norm_first"]  # the same start and first batch for every method
    assert runs["grpo_mass_matched"]["update_norm_first"] == pytest.approx(grpo, rel=1e-2)
    assert runs["grpo@lr/4"]["update_norm_first"] == pytest.approx(grpo / 4, rel=1e-3)
    assert 0 <= runs["thr_entropy_mask"]["control_overlap"] <= 1
    assert runs["grpo"]["control_overlap"] is None and runs["grpo"]["kl_start"] > 0


def test_run_study_and_testbed_read_back_the_controls_study(tmp_path):
    """The controls study end to end at a smoke budget: the frontier ladder of GRPO and THR
    p = 0 on the first seed set, the step-size control at the lr measured from it, and
    testbed.py reading them back: the matched run is labelled as the control, its distance is
    THR's (the control matches THR's step) and the mechanism metrics are each run's own."""
    smoke = ["--set", "steps=2", "frontier_every=1", "frontier_limit=4", "eval_limit=8",
             "eval_passk_limit=4", "eval_samples=4"]
    out = limits.run([sys.executable, str(ROOT / "benchmarks" / "run_study.py"), "--preset",
                      "tiny", "--runs-root", str(tmp_path), "--parts", "frontier", "matched",
                      "--seeds", "0", "1", "2", "--only", "grpo", "grpo@0.5lr", "grpo@2lr",
                      "thr_p0", *smoke], capture_output=True, text=True, cwd=ROOT,
                     env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "matched lr" in out.stdout
    res = run_script("testbed.py", "--preset", "tiny", "--runs-root", str(tmp_path),
                     "--seeds", "0", "1", "2", "--figures", str(tmp_path / "figs"))
    from thrlab.paper import controls

    mech = {(r["method"], r["seed"]): r for r in res["mechanics"]}
    assert {m for m, _ in mech} == {"thr_p0", controls.MATCHED, *controls.ladder_labels()}
    ladder = res["matched"]["ladder"]
    assert len(ladder) == 3 and res["matched"]["target"] == pytest.approx(
        np.mean([mech[("thr_p0", s)]["distance"] for s in range(3)]))
    lr = res["matched"]["lr"]
    assert all(mech[(controls.MATCHED, s)]["lr"] == lr for s in range(3))
    d = res["matched"]["distance_grpo@matched_minus_thr_p0"]
    assert abs(d["mean"]) < 0.1 * res["matched"]["target"]  # the control travels THR's distance
    assert all(0 < mech[("thr_p0", s)]["frac_kept"] < 1 for s in range(3))  # THR keeps a part
    assert {Path(p).name for p in res["figures"]} == {"frontier.png", "frontier.pdf"}


def test_decode_speed_quick_times_every_engine_and_exact_is_generate():
    res = run_script("decode_speed.py", "--quick")
    engines = res["cases"][0]["engines"]
    assert set(engines) == {"generate", "static", "exact", "fast"}
    assert engines["static"]["tokens_equal_generate"] and engines["exact"]["tokens_equal_generate"]
    assert all(e["wall_s"] > 0 and e["steps"] >= 1 for e in engines.values())
    assert res["bandwidth_gbs"] > 0 and res["cases"][0]["bounds"]["bandwidth_ms"] > 0


def test_gpu_decode_script_runs_on_cpu_and_projects_an_evaluation():
    """The script a lent GPU runs first must not first fail there: its CPU smoke shape (one layer
    of a paper preset's real width, two prompts) runs every part of it."""
    res = run_script("gpu_decode.py", "--quick")
    (preset, out), = res["presets"].items()
    assert {"train", "eval_sampled", "eval_greedy"} <= set(out)
    assert out["train"]["engines"]["exact"]["tokens_equal_generate"]
    proj = out["evaluation_projection"]
    assert proj["calls"] == 773 and proj["fast"]["to_the_cap_h"] > proj["fast"]["mean_steps_h"]
    assert res["dequantized_4bit"].get("bit_identical", True)
