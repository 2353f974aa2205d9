"""Packaging stays consistent: environment.yml mirrors pyproject, the lock pins what it declares,
and each Makefile target installs and runs what it promises (read with `make -n`)."""
import re
from pathlib import Path

import pytest
import yaml

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")

ROOT = Path(__file__).resolve().parents[1]


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_environment_yml_pip_section_matches_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["name"] == "thrlab" and "conda-forge" in env["channels"]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert sorted(pip) == sorted(_pyproject()["project"]["dependencies"])


def test_environment_yml_conda_specs_parse():
    rattler = pytest.importorskip("rattler", reason="py-rattler (the dev extra) validates specs")
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    specs = [d for d in env["dependencies"] if isinstance(d, str)]
    assert any(s.startswith("python") for s in specs)
    for s in specs:
        rattler.MatchSpec(s)  # raises on a malformed conda spec
    with pytest.raises(Exception):
        rattler.MatchSpec("python>=>3")  # and the validator does reject bad specs


def test_lock_pins_only_declared_packages_within_their_ranges():
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    proj = _pyproject()["project"]
    declared = {canonicalize_name(Requirement(r).name): Requirement(r)
                for r in proj["dependencies"] + sum(proj["optional-dependencies"].values(), [])}
    for line in (ROOT / "requirements-lock.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        pin = Requirement(line)
        name = canonicalize_name(pin.name)
        version = next(iter(pin.specifier)).version
        if name in declared:
            assert declared[name].specifier.contains(version), f"{line} outside {declared[name]}"


def test_python_floor_matches_readme_promise():
    assert _pyproject()["project"]["requires-python"] == ">=3.10"
    assert "torch==2.13.0" in (ROOT / "Makefile").read_text()


def _make_n(target: str, *args: str) -> str:
    """The commands `make TARGET` would run from a fresh clone (-B: every stamp out of date;
    -n: print, run nothing)."""
    import shutil
    import subprocess

    if not shutil.which("make"):
        pytest.skip("make is not installed (.ci/run installs it)")
    out = subprocess.run(["make", "-n", "-B", "-C", str(ROOT), target, *args],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_make_demo_passes_args_and_installs_only_the_base_package():
    """`make demo ARGS=...` reaches `thrlab train --preset tiny`, and the demo's install is the
    base package (no dev extra: wandb, trl and tensorboard took minutes), announced first."""
    cmds = _make_n("demo", "ARGS=--set threads=1")
    assert "thrlab train --preset tiny --set threads=1" in cmds
    assert "[dev]" not in cmds and "-c requirements-lock.txt -e ." in cmds
    lines = cmds.splitlines()
    first_pip = next(i for i, line in enumerate(lines) if "pip install" in line)
    assert lines[first_pip - 1].startswith("echo ") and "min" in lines[first_pip - 1]


def test_make_test_installs_the_dev_extra_on_top_and_keeps_every_cache_in_the_repo():
    cmds = _make_n("test")
    assert '-e ".[dev]"' in cmds and "-m pytest" in cmds
    assert f"THRLAB_CACHE={ROOT}/.cache/thrlab" in cmds and "HF_HUB_OFFLINE=1" in cmds
    assert "make test" in (ROOT / ".ci" / "run").read_text()  # what CI runs


def test_make_reproduce_uses_the_users_cache_and_leaves_the_committed_figures_alone():
    """The tiny model's cold start is cached once per machine (~/.cache/thrlab or the user's
    $THRLAB_CACHE), not per clone; ARGS reaches the command."""
    cmds = _make_n("reproduce", "ARGS=--update-figures")
    [run] = [line for line in cmds.splitlines() if "thrlab.paper.reproduce" in line]
    assert "THRLAB_CACHE" not in run and "HF_HUB_OFFLINE" not in run
    assert run.endswith("--update-figures") and "[dev]" not in cmds


def test_make_lab_saves_through_the_output_stripping_hook():
    """The hook is a command-line option (the user's ~/.jupyter is not touched) naming a
    function that exists."""
    from traitlets.utils.importstring import import_item

    from thrlab.paper import lab

    cmds = _make_n("lab")
    hook = re.search(r"--ContentsManager\.pre_save_hook=(\S+)", cmds)
    assert hook and import_item(hook[1]) is lab.pre_save_hook
    assert "--config" not in cmds and "JUPYTER_CONFIG_DIR" not in cmds
