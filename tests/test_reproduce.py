"""The reproduce command on throwaway notebooks: parameters validated before anything runs
(unknown names, wrong types, non-literal cells), a failing notebook reported in the table with a
non-zero exit while the others still run, each notebook's start and end printed as it goes with
nothing from the kernel's own log, finished notebooks reused, figures published with a MANIFEST
entry into the run folder (the committed paper_figures/ only with --update-figures)."""
import json
import re
import sys
from pathlib import Path

import nbformat
import pytest

from thrlab.paper import reproduce
from tests.fixtures import limits

ROOT = Path(__file__).resolve().parents[1]

PARAMS = '''preset = "tiny"
seeds = [0]
x = 1
overrides = {}
runs_root = "runs"
out_dir = "out"'''
OK = '''from thrlab.paper import grid; from thrlab.paper import plotting
fig, ax = plotting.figure()
ax[0].plot(seeds, [x] * len(seeds))
plotting.save_figure(fig, out_dir, "toy_fig")
grid.write_outputs(out_dir, figures=["toy_fig"], run_ids=[f"{preset}-toy"],
                    headline={"x": x, "seeds": seeds})'''
RAISES = 'raise ValueError(f"boom {x}")'


def _notebook(path: Path, params: str, code: str) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    cell = nbformat.v4.new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# toy"), cell, nbformat.v4.new_code_cell(code)]
    nbformat.write(nb, path)


@pytest.fixture()
def books(tmp_path):
    d = tmp_path / "nbs"
    d.mkdir()
    _notebook(d / "01_ok.ipynb", PARAMS, OK)
    _notebook(d / "02_raises.ipynb", PARAMS, RAISES)
    return d


def _run(tmp_path, books, *args):
    cmd = [sys.executable, "-m", "thrlab.paper.reproduce", "--notebooks-dir", str(books),
           "--runs-root", str(tmp_path / "runs"), "--figures-dir", str(tmp_path / "figs"), *args]
    return limits.run(cmd, capture_output=True, text=True, cwd=tmp_path)


def test_failure_is_tabled_others_run_and_reruns_reuse(tmp_path, books):
    out = _run(tmp_path, books, "--seeds", "2", "-p", "01_ok:x=5")
    assert out.returncode == 1, out.stdout + out.stderr
    # progress as it goes: which notebook, when it started, how it ended and in how long
    assert re.search(r"^\[1/2\] 01_ok: started at \d\d:\d\d:\d\d$", out.stdout, re.M)
    assert re.search(r"^\[1/2\] 01_ok: ran in \d+ s, at ", out.stdout, re.M)
    assert re.search(r"^\[2/2\] 02_raises: FAILED in \d+ s, at ", out.stdout, re.M)
    # the kernel's own log stays out of the terminal (it warned about TCP without encryption
    # for every notebook, and "KeyboardInterrupt caught in kernel" at random on shutdown)
    assert "IPKernelApp" not in out.stderr and "Kernel is running over TCP" not in out.stderr
    table = out.stdout[out.stdout.index("notebook "):]
    assert "01_ok" in table and " ran " in table
    assert "02_raises" in table and "FAILED" in table and "ValueError: boom 1" in table
    assert "1 of 2 notebooks ok, 1 failed" in out.stdout
    manifest = json.loads((tmp_path / "figs" / "MANIFEST.json").read_text())
    entry = manifest["figures"]["toy_fig"]
    assert entry["parameters"]["seeds"] == [0, 1] and entry["parameters"]["x"] == 5
    assert entry["parameters"]["preset"] == "tiny" and entry["run_ids"] == ["tiny-toy"]
    assert entry["notebook"].endswith("01_ok.ipynb") and entry["git_rev"] and entry["date"]
    assert entry["headline"] == {"x": 5, "seeds": [0, 1]}
    for ext in ("png", "pdf"):
        assert (tmp_path / "figs" / f"toy_fig.{ext}").stat().st_size > 1000
    [run] = (tmp_path / "runs" / "notebooks").glob("01_ok-*")
    assert (run / "COMPLETE").exists() and (run / "executed.ipynb").exists()
    executed = nbformat.read(run / "executed.ipynb", as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)
    [failed] = (tmp_path / "runs" / "notebooks").glob("02_raises-*")
    assert not (failed / "COMPLETE").exists() and (failed / "executed.ipynb").exists()

    again = _run(tmp_path, books, "--seeds", "2", "-p", "01_ok:x=5")
    assert again.returncode == 1
    [row] = [line for line in again.stdout.splitlines() if line.startswith("01_ok ")]
    assert row.split()[1] == "reused"
    assert "[1/2] 01_ok: reused (finished earlier with these parameters)" in again.stdout
    # different parameters: a different run folder
    ok_only = _run(tmp_path, books, "01_ok")
    assert ok_only.returncode == 0 and " ran " in ok_only.stdout
    assert len(list((tmp_path / "runs" / "notebooks").glob("01_ok-*"))) == 2


def test_a_reproduction_leaves_the_committed_figures_alone_unless_asked(tmp_path, books):
    """By default figures and MANIFEST.json go to <runs-root>/figures/<preset>/ (no tracked file
    changes: the MANIFEST's date and git revision, and the figures' bytes, change every run);
    --update-figures writes the committed paper_figures/, and conflicts with --figures-dir."""
    cmd = [sys.executable, "-m", "thrlab.paper.reproduce", "--notebooks-dir", str(books), "01_ok"]
    out = limits.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    own = tmp_path / "runs" / "figures" / "tiny"
    assert (own / "MANIFEST.json").exists() and (own / "toy_fig.png").exists()
    assert not (tmp_path / "paper_figures").exists()
    assert "paper_figures/ is left as committed; --update-figures writes it" in out.stdout
    assert f"figures in {Path('runs/figures/tiny')}/" in out.stdout
    upd = limits.run(cmd + ["--update-figures"], capture_output=True, text=True, cwd=tmp_path)
    assert upd.returncode == 0, upd.stdout + upd.stderr
    assert "reused" in upd.stdout  # the same run folder: only the figures' destination moved
    manifest = json.loads((tmp_path / "paper_figures" / "MANIFEST.json").read_text())
    assert manifest["figures"]["toy_fig"]["notebook"].endswith("01_ok.ipynb")
    both = limits.run(cmd + ["--update-figures", "--figures-dir", "x"], capture_output=True,
                      text=True, cwd=tmp_path)
    assert both.returncode == 2 and "not allowed with argument" in both.stderr


@pytest.mark.parametrize("args, message", [
    (["-p", "nope=1"], "unknown parameter 'nope'"),
    (["-p", "x=abc"], "parameter x expects int"),
    (["-p", "x=True"], "parameter x expects int"),
    (["-p", "out_dir=/tmp/x"], "out_dir is set by the reproduce command"),
    (["-p", "03_missing:x=1"], "no selected notebook is called '03_missing'"),
    (["-p", "x"], "is not KEY=VALUE"),
    (["99_missing"], "no notebook '99_missing'"),
    (["--preset", "tinny"], "unknown preset 'tinny' (did you mean 'tiny'?)"),
])
def test_bad_parameters_stop_before_anything_runs(tmp_path, books, args, message):
    out = _run(tmp_path, books, *args)
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert not (tmp_path / "runs").exists()


def test_non_literal_parameters_cell_is_rejected(tmp_path, books):
    _notebook(books / "03_bad.ipynb", PARAMS + "\ny = x + 1", OK)
    out = _run(tmp_path, books, "03_bad")
    assert out.returncode == 2 and "not `name = literal`" in out.stderr


def test_parse_and_plan_units(tmp_path, books):
    assert reproduce.parse_value("[0, 1]") == [0, 1]
    assert reproduce.parse_value("{'steps': 3}") == {"steps": 3}
    assert reproduce.parse_value("1e-2") == 0.01 and reproduce.parse_value("tiny") == "tiny"
    assert reproduce.parse_params(["04_x:k=1", "k=v"]) == [("04_x", "k", 1), (None, "k", "v")]
    nbs = reproduce.find_notebooks(books, [])
    assert [p.stem for p in nbs] == ["01_ok", "02_raises"]
    assert reproduce.find_notebooks(books, ["02"]) == [books / "02_raises.ipynb"]
    jobs = reproduce.plan(nbs, preset="tiny", seeds=3, params=[(None, "x", 2)],
                          runs_root=tmp_path)
    assert jobs[0]["params"] == {"preset": "tiny", "seeds": [0, 1, 2], "x": 2}
    assert jobs[0]["effective"]["overrides"] == {}
    assert jobs[0]["out_dir"] != jobs[1]["out_dir"]


def test_an_unscoped_parameter_goes_to_the_notebooks_that_declare_it(tmp_path, books):
    """`-p seeds=[5, 6]` reaches every notebook with a `seeds` parameter and leaves the others
    alone (a notebook of one seed declares `seed`); a scoped `-p` stays strict."""
    _notebook(books / "03_one.ipynb", PARAMS.replace("seeds = [0]", "seed = 0"), OK)
    nbs = reproduce.find_notebooks(books, [])
    jobs = reproduce.plan(nbs, preset=None, seeds=None, params=[(None, "seeds", [5, 6])],
                          runs_root=tmp_path)
    assert [j["params"].get("seeds") for j in jobs] == [[5, 6], [5, 6], None]
    assert jobs[2]["effective"]["seed"] == 0
    with pytest.raises(reproduce.ParameterError, match="03_one: unknown parameter 'seeds'"):
        reproduce.plan(nbs, preset=None, seeds=None, params=[("03", "seeds", [5])],
                       runs_root=tmp_path)


def test_repo_notebooks_declare_valid_parameters():
    nbs = reproduce.find_notebooks(ROOT / "notebooks", [])
    jobs = reproduce.plan(nbs, preset="tiny", seeds=2, params=[], runs_root=Path("runs"))
    assert len(jobs) == 11 and all(j["params"]["preset"] == "tiny" for j in jobs)


def test_testbed_presets_inject_their_study_budget_and_skip_what_needs_strategies(tmp_path):
    """--preset narrowing gives every notebook the study's seeds, overrides and workers (the
    user's --seeds / -p still win); a notebook declaring needs_strategies runs only on presets
    whose task labels strategies."""
    from thrlab.paper.study import STUDY_BUDGETS

    d = tmp_path / "nbs"
    d.mkdir()
    _notebook(d / "01_ok.ipynb", PARAMS + "\nworkers = 1", OK)
    _notebook(d / "02_div.ipynb", PARAMS + "\nworkers = 1\nneeds_strategies = True", OK)
    books = reproduce.find_notebooks(d, [])
    jobs = reproduce.plan(books, preset="narrowing", seeds=None, params=[], runs_root=tmp_path)
    assert [j["notebook"].stem for j in jobs] == ["01_ok"]  # no strategy labels on a*b
    budget = STUDY_BUDGETS["narrowing"]["params"]
    assert jobs[0]["params"] == {"preset": "narrowing", "seeds": budget["seeds"],
                                 "overrides": budget["overrides"], "workers": budget["workers"]}
    jobs = reproduce.plan(books, preset="strategies", seeds=2, params=[(None, "workers", 1)],
                          runs_root=tmp_path)
    assert [j["notebook"].stem for j in jobs] == ["01_ok", "02_div"]
    assert jobs[0]["params"]["seeds"] == [0, 1] and jobs[0]["params"]["workers"] == 1
    assert reproduce.plan(books, preset="tiny", seeds=None, params=[],
                          runs_root=tmp_path)[0]["params"] == {"preset": "tiny"}  # no budget


def test_a_study_budget_narrows_a_notebook_or_skips_it(tmp_path):
    from thrlab.paper import study

    d = tmp_path / "nbs"
    d.mkdir()
    _notebook(d / "04_exploration.ipynb", PARAMS + '\nmethods = ["grpo", "kl_cov"]', OK)
    _notebook(d / "05_gspo_token.ipynb", PARAMS, OK)
    jobs = reproduce.plan(reproduce.find_notebooks(d, []), preset="strategies", seeds=None,
                          params=[], runs_root=tmp_path)
    assert [j["notebook"].stem for j in jobs] == ["04_exploration"]
    want = study.STUDY_BUDGETS["strategies"]["notebooks"]["04_exploration"]["methods"]
    assert jobs[0]["params"]["methods"] == want


@pytest.mark.parametrize("preset", ["narrowing", "strategies"])
def test_the_study_keeps_every_run_on_its_presets_schedule(preset):
    """Planned at a testbed preset, no repo notebook passes a config field that differs from the
    preset's own (e.g. notebook 09's tiny probe cadence), so every notebook's runs are the
    study's grid and are shared: a notebook that did would silently train a second grid."""
    from thrlab.paper import grid
    from thrlab.train.presets import preset_config

    own = preset_config(preset)
    nbs = reproduce.find_notebooks(ROOT / "notebooks", [])
    for job in reproduce.plan(nbs, preset=preset, seeds=None, params=[], runs_root=Path("runs")):
        p = {**reproduce.declared_parameters(job["notebook"]), **job["params"]}
        fields = grid.with_budget(p["budget"], p["overrides"]) if "budget" in p else {}
        fields.update({k: p[k] for k in ("probe_every", "probe_prompts", "mini_batches") if k in p})
        moved = {k: v for k, v in fields.items()
                 if k != "threads" and getattr(own, k) != v}  # threads is not in the run id
        assert not moved, f"{job['notebook'].stem} at --preset {preset} changes {moved}"
