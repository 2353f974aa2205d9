"""Packaging stays consistent: environment.yml mirrors pyproject, the lock pins what it declares."""
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
