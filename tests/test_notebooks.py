"""Every paper notebook executed by papermill through the reproduce command's own runner, with the
tiny preset and smoke budgets, in notebook order with one shared runs folder (so, as in a real
reproduction, later notebooks reuse earlier runs); asserts on each notebook's run folder, and
that its executed copy is what a user's "Run All" in JupyterLab shows: nothing on stderr (a red box
there), no warning text anywhere, progress bars as widgets (ipywidgets installed; without it tqdm
warns "IProgress not found" and falls back to text bars).

Smoke budgets are small but real: the shipped cold-started tiny model (~30% greedy, so groups have
mixed rewards and THR is non-zero), 3 GRPO steps of 2 prompts x 8 samples, 16 held-out problems.
"""
import ast
import json
import math
import re
from pathlib import Path

import nbformat
import pytest

from thrlab.paper import reproduce
from thrlab.train import packaged
from thrlab.train.presets import preset_config

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
# steps 3 and 2 x 8 samples: seconds per run; thr_save_every 1 so THR runs save token records;
# group_size 8 keeps Pass@K-mixed's K = 4 < G; 16 sequences split into KL-Cov's 4 mini-batches.
SMOKE = {"sft_control": False, "threads": 1, "steps": 3, "prompts_per_step": 2, "group_size": 8,
         "eval_limit": 16, "eval_samples": 4, "thr_save_every": 1, "save_every": 3}
EXTRA = {  # per-notebook smoke values of their own budget parameters
    "04_exploration": {"passk_samples": 16, "passk_limit": 8},
    # the Llama-architecture cold start at 200 steps (~20 s) instead of 600: plumbing only
    "06_llama": {"overrides": dict(SMOKE, sft_steps=200)},
    "09_thr_predictor": {"n_prompts": 4, "probe_prompts": 8, "probe_every": 1},
    # the strategies task with a 60-step cold start (a poor model, but every sample is labelled);
    # it answers nothing right, so the preset's likelihood probe (notebook 09's) has no probe set
    "10_strategy_diversity": {"overrides": dict(SMOKE, sft_steps=60, probe_every=0)},
    # the real model (its own preset, not tiny) on 3 batches of 4 prompts x 8 samples of <= 64
    # tokens, the tiny model beside it: 12 problems each, so that some group has mixed rewards
    # (2 x 3 problems at <= 48 tokens once drew none for one model on one machine)
    "11_real_model_thr": {"batches": 3, "overrides": dict(SMOKE, prompts_per_step=4,
                                                          max_new_tokens=64)},
}


WIDGET = "application/vnd.jupyter.widget-view+json"
WARNING = re.compile(r"\b\w*Warning\b|IProgress not found")  # TqdmWarning, FutureWarning, ...


def _noise_and_widgets(executed: Path) -> tuple[list[str], int]:
    """The stderr and warning-bearing outputs of an executed notebook ("cell [n]: text"), and
    how many outputs are widget views."""
    noise, widgets = [], 0
    for cell in nbformat.read(executed, as_version=4).cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            widgets += WIDGET in data
            texts = [out.get("text", "")] + [v for k, v in data.items() if k.startswith("text/")]
            if out.get("name") == "stderr" or any(WARNING.search(str(t)) for t in texts):
                noise.append(f"cell [{cell.get('execution_count')}]: {''.join(texts)[:300]}")
    return noise, widgets


def _in_unit(x):
    return isinstance(x, (int, float)) and 0.0 <= x <= 1.0


def _check_00(h):
    assert _in_unit(h["greedy_before"]) and _in_unit(h["greedy_after"])
    assert h["tokens_with_thr"] >= 0


def _check_01(h):
    assert h["tokens"] > 0 and math.isclose(h["frac_pos"] + h["frac_neg"], 1.0, abs_tol=0.05)
    assert 0.1 <= h["top10pct_share_of_abs_thr"] <= 1.0 and _in_unit(h["dominant_frac"])


def _check_02(h):
    assert all(_in_unit(h[k]) for k in ("greedy_acc_grpo", "greedy_acc_thr_p0", "pass@4_grpo"))
    for m in ("thr_p0", "thr_random_mask", "grpo_mass_matched"):  # one seed: no interval
        assert abs(h[f"greedy_acc_minus_grpo_{m}"]) <= 1
        assert math.isnan(h[f"greedy_acc_minus_grpo_ci_{m}"][0])
    assert h["seeds"] == 1 and h["problems"] == 16


def _check_03(h):
    assert all(_in_unit(h[f"greedy_{m}"]) for m in
               ("grpo", "thr_p0", "thr_explore", "thr_exploit", "before"))
    assert abs(h["greedy_acc_minus_p0_thr_exploit"]) <= 1
    assert "greedy_acc_minus_grpo_thr_random_mask" in h


def _check_04(h):
    assert h["k_max"] == 16
    for m in ("base", "grpo", "thr_p0", "thr_explore", "passk_mixed", "kl_cov"):
        assert _in_unit(h[f"pass@1_{m}"]) and h[f"pass@16_{m}"] >= h[f"pass@1_{m}"] - 1e-9
    assert abs(h["pass@16_minus_grpo_thr_explore"]) <= 1 and "pass@16_minus_start_grpo" in h


def _check_05(h):
    assert all(_in_unit(h[f"greedy_acc_{m}"]) for m in ("thr_p0", "gspo_token", "gspo_token_thr"))
    assert abs(h["greedy_acc_minus_gspo_gspo_token_thr"]) <= 1


def _check_06(h):
    assert h["arch"] == "llama" and _in_unit(h["greedy_acc_grpo"])
    assert abs(h["greedy_acc_minus_grpo_thr_explore"]) <= 1


def _check_07(h):
    assert _in_unit(h["overlap_at_0.2"]) and h["batches"] > 0


def _check_08(h):
    assert h["step_s_grpo"] > 0 and 0 < h["thr_share_thr_p0"] < 1


def _check_10(h):
    assert 0 <= h["entropy_before"] <= math.log2(5) + 1e-9  # 3 strategies, direct, other
    assert all(0 <= h[f"entropy_after_{m}"] <= math.log2(5) + 1e-9
               for m in ("grpo", "thr_explore", "thr_exploit"))


def _check_11(h):
    assert h["models"] == ["smollm2-135m", "tiny"] and h["batches"] == 3
    for m in h["models"]:  # THR concentrates: the top 10% of tokens carry more than 10% of |THR|
        assert h[f"tokens_{m}"] > 0 and 0.1 < h[f"top_share_{m}"] <= 1
        assert _in_unit(h[f"frac_kept_{m}"]) and _in_unit(h[f"reward_mean_{m}"])


def _check_09(h):
    # the unembedding-only step is where the first-order theory is exact
    assert h["spearman_unembedding"] > 0.95
    assert -1 <= h["spearman_lora"] <= 1 and h["probe_size"] > 0


CHECKS = {f"{nb.stem}": globals()[f"_check_{nb.stem[:2]}"] for nb in NOTEBOOKS}


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    return tmp_path_factory.mktemp("nb_runs")


def test_every_notebook_has_a_check():
    assert len(NOTEBOOKS) == 12 and set(CHECKS) == {nb.stem for nb in NOTEBOOKS}


def test_noise_check_sees_stderr_warnings_and_widgets(tmp_path):
    """The executed-notebook check flags what JupyterLab shows as noise, and counts widgets."""
    v4 = nbformat.v4
    book = v4.new_notebook(cells=[v4.new_code_cell(execution_count=1, outputs=[
        v4.new_output("stream", name="stderr", text="anything at all"),
        v4.new_output("stream", name="stdout", text="x.py:3: TqdmWarning: IProgress not found."),
        v4.new_output("display_data", data={"text/plain": "ok", WIDGET: {"model_id": "m"}}),
        v4.new_output("display_data", data={"text/html": "<b>FutureWarning</b>"}),
        v4.new_output("stream", name="stdout", text="greedy 0.30 -> 0.39")])])
    nbformat.write(book, tmp_path / "x.ipynb")
    noise, widgets = _noise_and_widgets(tmp_path / "x.ipynb")
    assert len(noise) == 3 and widgets == 1 and "TqdmWarning" in noise[1]


def _executed_copy(nb: Path = NOTEBOOKS[0]) -> nbformat.NotebookNode:
    """A paper notebook as JupyterLab holds it after "Run All": outputs, execution counts, the
    kernel's language_info, widget state, timing and scroll metadata."""
    v4 = nbformat.v4
    book = nbformat.read(nb, as_version=4)
    for i, cell in enumerate(c for c in book.cells if c.cell_type == "code"):
        cell.execution_count = i + 1
        cell.outputs = [v4.new_output("stream", name="stdout", text="greedy 0.30 -> 0.39"),
                        v4.new_output("display_data", data={WIDGET: {"model_id": "m"}})]
        cell.metadata.update(execution={"iopub.status.idle": "2026-01-01T00:00:00Z"},
                             scrolled=True)
    book.metadata.language_info = {"name": "python", "version": "3.11.7", "mimetype": "x"}
    book.metadata.widgets = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    return book


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_lab_save_hook_saves_a_paper_notebook_as_committed(nb):
    """`make lab` saves through thrlab.paper.lab.pre_save_hook: a paper notebook run in
    JupyterLab is written back as committed (the JSON nbformat writes for the committed file;
    nothing executing added survives), and what the user wrote (sources, tags) does."""
    from thrlab.paper import lab

    model = {"type": "notebook", "content": json.loads(nbformat.writes(_executed_copy(nb)))}
    lab.pre_save_hook(model=model, path=nb.name, contents_manager=None)
    saved = nbformat.from_dict(model["content"])
    assert nbformat.writes(saved) == nbformat.writes(nbformat.read(nb, as_version=4))
    assert any("parameters" in c.metadata.get("tags", []) for c in saved.cells)


def test_the_lab_save_hook_leaves_other_notebooks_and_files_alone():
    from thrlab.paper import lab

    for path in ("scratch.ipynb", "my_analysis/00x.ipynb.bak"):
        model = {"type": "notebook", "content": json.loads(nbformat.writes(_executed_copy()))}
        lab.pre_save_hook(model=model, path=path)
        assert any(c.get("outputs") for c in model["content"]["cells"]), path
    text = {"type": "file", "content": "x", "format": "text"}
    lab.pre_save_hook(model=text, path="00_notes.txt")
    assert text["content"] == "x"
    assert all(lab.is_paper_notebook(f"sub/{nb.name}") for nb in NOTEBOOKS)


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_thin_and_clean(nb):
    """Committed without outputs, kernelspec python3, a header, one literal parameters cell
    declaring out_dir and runs_root, no def/class, at most 12 code cells / 100 code lines."""
    book = nbformat.read(nb, as_version=4)
    assert book.metadata.kernelspec.name == "python3"
    assert book.cells[0].cell_type == "markdown" and "Expected time" in book.cells[0].source
    code = [c for c in book.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert len(code) <= 12 and sum(len(c.source.splitlines()) for c in code) <= 100
    for c in code:
        for node in ast.walk(ast.parse(c.source)):
            assert not isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.Lambda)), nb.stem
    params = reproduce.declared_parameters(nb)
    assert {"preset", "budget", "overrides", "runs_root", "out_dir"} <= set(params)
    assert not any(Path(str(v)).is_absolute() for v in params.values() if isinstance(v, str))


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_with_tiny_smoke_parameters(nb, runs_root):
    extra = EXTRA.get(nb.stem, {})
    params = [(None, "overrides", SMOKE)] + [(None, k, v) for k, v in extra.items()]
    if "seeds" in reproduce.declared_parameters(nb):
        params.append((None, "seeds", [0]))
    declared = reproduce.declared_parameters(nb)
    preset = "strategies" if declared.get("needs_strategies") else "tiny"
    if "compare_preset" in declared:  # the real-model notebook runs its own preset beside tiny
        why = packaged.missing(preset_config(declared["preset"]).model)
        if why:
            pytest.skip(why)
        preset = None
    [job] = reproduce.plan([nb], preset=preset, seeds=None, params=params, runs_root=runs_root)
    res = reproduce.run_job(job, runs_root)
    assert res["status"] == "ran", res["detail"]
    out = job["out_dir"]
    assert (out / "COMPLETE").exists() and (out / "executed.ipynb").exists()
    outputs = json.loads((out / "outputs.json").read_text())
    for fig in outputs["figures"]:
        assert (out / f"{fig}.png").stat().st_size > 5000 and (out / f"{fig}.pdf").exists()
    for r in outputs["run_ids"]:  # the experiment runs it read
        assert (runs_root / r / "COMPLETE").exists(), r
    CHECKS[nb.stem](outputs["headline"])
    noise, widgets = _noise_and_widgets(out / "executed.ipynb")
    assert not noise, "\n".join(noise[:5])  # the first few: a text progress bar repeats
    if nb.stem == "00_quickstart":  # it trains and evaluates in-kernel, with tqdm's bars
        assert widgets > 0, "no progress bar rendered as a widget (is ipywidgets installed?)"
