"""Batch reproduction: run the paper notebooks with papermill, reuse finished ones, collect figures.

    python -m thrlab.paper.reproduce [--preset tiny|NAME] [--seeds N] [-p [NOTEBOOK:]KEY=VALUE ...]
                               [--runs-root runs] [--update-figures | --figures-dir DIR]
                               [--force] [NOTEBOOK ...]

Every parameter is checked against the parameters cell of every selected notebook before anything
runs (unknown names and values of the wrong type stop the command). `--preset` sets `preset`, and
for a testbed preset (narrowing, strategies) its study budget (`thrlab.paper.study.STUDY_BUDGETS`:
seeds, overrides, workers, the runs' own Pass@K samples); a notebook that declares
`needs_strategies` runs only on presets whose task labels strategies;
`--seeds N` sets `seeds = [0, ..., N-1]` where a notebook declares `seeds`; `-p key=value` sets a
parameter of every selected notebook that declares it (an error if none does; values are Python
literals: 3, 1e-2, [0, 1], {"steps": 3}; anything else is a string) and `-p 04_exploration:key=value`
of one notebook (an error if that notebook does not declare it). Each notebook runs
in `<runs-root>/notebooks/<name>-<hash of source and parameters>/` (executed copy
`executed.ipynb`, its figures, `outputs.json`, `COMPLETE` last), so a rerun with the same
parameters is reused; each one's start and end (with its seconds) are printed as it goes.

Figures are copied to `<runs-root>/figures/<preset>/` by default, with a `MANIFEST.json` there
that maps each figure to its notebook, parameters, run ids, git revision and date: a reproduction
leaves every tracked file as it was. `--update-figures` writes the committed figures instead
(`paper_figures/` for tiny, `paper_figures/<preset>/` otherwise; then commit them), and
`--figures-dir DIR` any folder. A table of results is printed; the exit status is 1 if any
notebook failed, 2 for bad parameters.
"""
from __future__ import annotations

import argparse
import ast
import datetime as dt
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

from thrlab.core.errors import ConfigError
from thrlab.tasks.task import task_of
from thrlab.train import packaged
from thrlab.train.presets import preset_config
from thrlab.train.runs import RunDir, cache_root, git_sha, read_json, write_json

from .lab import PAPER_NOTEBOOKS
from .study import STUDY_BUDGETS

RESERVED = ("out_dir", "runs_root")  # set by this command, never by -p
# The kernel's own log (not the notebook's output), silenced: per notebook it printed a warning
# that the kernel talks over TCP without encryption (a local kernel on the loopback; nothing to
# act on) and, at random, "KeyboardInterrupt caught in kernel" (jupyter_client interrupts the
# kernel before shutting it down, and the interrupt can land inside the kernel_info request
# papermill sends after the last cell). Failures still show: a cell's error is in the table and
# executed.ipynb, a dead kernel is a FAILED row, a crash's traceback is Python's, not this log's.
KERNEL_ARGS = ["--IPKernelApp.log_level=CRITICAL"]
_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "list": (list,),
          "dict": (dict,), "tuple": (tuple, list)}


class ParameterError(ValueError):
    pass


def find_notebooks(notebooks_dir: Path, names: list[str]) -> list[Path]:
    """The numbered notebooks (NN_*.ipynb) in order, or those named (by stem, number or path)."""
    all_nbs = sorted(notebooks_dir.glob(PAPER_NOTEBOOKS))
    if not names:
        return all_nbs
    out = []
    for n in names:
        hits = [p for p in all_nbs if n in (p.stem, p.name, p.stem[:2])] or \
            ([Path(n)] if Path(n).suffix == ".ipynb" and Path(n).exists() else [])
        if not hits:
            raise ParameterError(f"no notebook {n!r} in {notebooks_dir} "
                                 f"(have: {', '.join(p.stem for p in all_nbs)})")
        out += hits
    return out


def declared_parameters(path: Path) -> dict:
    """{name: default} of the notebook's cell tagged `parameters`, which must hold only
    assignments of literals (`name = literal`), as STYLE.md asks; anything else is an error."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(tagged) != 1:
        raise ParameterError(f"{path.name} needs exactly one cell tagged 'parameters', "
                             f"has {len(tagged)}")
    out = {}
    for node in ast.parse("".join(tagged[0]["source"])).body:
        ok = isinstance(node, ast.Assign) and len(node.targets) == 1 and \
            isinstance(node.targets[0], ast.Name)
        try:
            value = ast.literal_eval(node.value) if ok else None
        except ValueError:
            ok = False
        if not ok:
            raise ParameterError(f"{path.name}: line {node.lineno} of the parameters cell is not "
                                 "`name = literal` (the parameters cell holds literals only)")
        out[node.targets[0].id] = value
    return out


def parse_value(text: str):
    """A Python literal if the text is one (3, 1e-2, [0, 1], {'a': 1}, True), else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_params(items: list[str]) -> list[tuple[str | None, str, object]]:
    """-p items -> (notebook scope or None, key, value)."""
    out = []
    for item in items:
        if "=" not in item:
            raise ParameterError(f"-p {item!r} is not KEY=VALUE (or NOTEBOOK:KEY=VALUE)")
        key, value = item.split("=", 1)
        scope, _, key = key.strip().rpartition(":")
        out.append((scope or None, key, parse_value(value.strip())))
    return out


def _check_type(nb: Path, key: str, value, default) -> None:
    kind = type(default).__name__
    ok = _TYPES.get(kind, (object,))
    bool_as_number = isinstance(value, bool) and kind != "bool"
    if default is None or isinstance(value, ok) and not bool_as_number:
        return
    raise ParameterError(f"{nb.stem}: parameter {key} expects {kind} (default {default!r}), got "
                         f"{type(value).__name__} {value!r}")


def plan(notebooks: list[Path], *, preset: str | None, seeds: int | None, params: list,
         runs_root: Path) -> list[dict]:
    """Resolve and validate every notebook's parameters; one job dict per notebook."""
    errors, jobs, declared_by = [], [], {}
    budget = study_budget(preset)
    for nb in notebooks:
        declared = declared_by[nb] = declared_parameters(nb)
        if declared.get("needs_strategies") and not has_strategies(preset or declared["preset"]):
            continue  # e.g. the strategy-diversity notebook on a task without strategy labels
        why = packaged.missing(preset_config(preset or declared.get("preset", "tiny")).model)
        if why:
            print(f"skipping {nb.stem}: {why}")
            continue
        if nb.stem in budget.get("skip", {}):
            print(f"skipping {nb.stem} at --preset {preset}: {budget['skip'][nb.stem]}")
            continue
        own = {**budget.get("params", {}), **budget.get("notebooks", {}).get(nb.stem, {})}
        given = {k: v for k, v in own.items() if k in declared}
        if preset is not None:
            given["preset"] = preset
        if seeds is not None and "seeds" in declared:
            given["seeds"] = list(range(seeds))
        for scope, key, value in params:
            if scope in (nb.stem, nb.stem[:2], nb.name) or scope is None and key in declared:
                given[key] = value
        for key, value in given.items():
            if key in RESERVED:
                errors.append(f"{nb.stem}: {key} is set by the reproduce command (--runs-root)")
            elif key not in declared:
                errors.append(f"{nb.stem}: unknown parameter {key!r}; declared: "
                              f"{', '.join(k for k in declared if k not in RESERVED)}")
            else:
                try:
                    _check_type(nb, key, value, declared[key])
                except ParameterError as err:
                    errors.append(str(err))
        missing = [k for k in RESERVED if k not in declared]
        if missing:
            errors.append(f"{nb.stem}: the parameters cell must declare {missing}")
        key = hashlib.sha256((json.dumps(given, sort_keys=True) + _source(nb)).encode())
        out_dir = (runs_root / "notebooks" / f"{nb.stem}-{key.hexdigest()[:10]}").resolve()
        jobs.append({"notebook": nb, "params": given, "out_dir": out_dir,
                     "effective": {**{k: v for k, v in declared.items() if k not in RESERVED},
                                   **given}})
    for scope, key, _ in params:
        if scope is not None and not any(scope in (nb.stem, nb.stem[:2], nb.name)
                                         for nb in notebooks):
            errors.append(f"-p {scope}:{key}: no selected notebook is called {scope!r}")
        elif scope is None and not any(key in d for d in declared_by.values()):
            errors.append(f"-p {key}: unknown parameter {key!r}: no selected notebook declares it")
    if errors:
        raise ParameterError("\n".join(errors))
    return jobs


def study_budget(preset: str | None) -> dict:
    """A testbed preset's study (thrlab.paper.study.STUDY_BUDGETS; {} for other presets): "params"
    for every notebook that declares them, "notebooks" per-notebook ones, "skip" notebooks
    left out with the reason; --seeds and -p override the parameters."""

    return dict(STUDY_BUDGETS.get(preset or "", {}))


def has_strategies(preset: str) -> bool:
    """Whether the preset's Task labels each completion's strategy (the strategies task)."""
    return task_of(preset_config(preset)).label is not None


def _source(nb: Path) -> str:
    """The notebook's code (outputs and metadata excluded), for the run folder's hash."""
    cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")


def run_job(job: dict, runs_root: Path, *, kernel: str = "python3", force: bool = False,
            progress: bool = False) -> dict:
    """Execute one notebook into its run folder (or reuse it); return status, seconds, detail.
    progress: papermill's bar of executed cells on stderr (for a terminal)."""
    import papermill

    run = RunDir(job["out_dir"])
    if run.complete and not force:
        return {"status": "reused", "seconds": 0.0, "detail": str(run.path)}
    if run.path.exists():
        shutil.rmtree(run.path)  # an unfinished or forced notebook run starts clean
    run.path.mkdir(parents=True)
    t0 = time.time()
    params = dict(job["params"], out_dir=str(run.path), runs_root=str(Path(runs_root).resolve()))
    write_json(run / "job.json", {"notebook": str(job["notebook"]), "parameters":
                                  job["effective"], "git_rev": git_sha(),
                                  "date": dt.datetime.now().astimezone().isoformat("T", "seconds")})
    try:
        papermill.execute_notebook(str(job["notebook"]), str(run / "executed.ipynb"),
                                   parameters=params, cwd=str(job["notebook"].parent),
                                   kernel_name=kernel, progress_bar=progress, log_output=False,
                                   extra_arguments=KERNEL_ARGS)
        if not (run / "outputs.json").exists():
            raise RuntimeError("the notebook wrote no outputs.json (thrlab.paper.grid.write_outputs)")
    except Exception as err:  # noqa: BLE001 - every failure becomes a row of the table
        cell = getattr(err, "exec_count", None)
        what = (f"{err.ename}: {err.evalue}" if hasattr(err, "ename")
                else f"{type(err).__name__}: {err}")
        where = f"cell [{cell}] " if cell else ""
        return {"status": "FAILED", "seconds": time.time() - t0,
                "detail": f"{where}{what.splitlines()[0][:160] if what else ''} "
                          f"(see {run / 'executed.ipynb'})"}
    run.mark_complete()
    return {"status": "ran", "seconds": time.time() - t0, "detail": str(run.path)}


def publish(job: dict, figures_dir: Path) -> list[str]:
    """Copy a finished notebook's figures to figures_dir and record them in MANIFEST.json."""
    out = read_json(job["out_dir"] / "outputs.json")
    meta = read_json(job["out_dir"] / "job.json")
    figures_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = figures_dir / "MANIFEST.json"
    manifest = read_json(manifest_path) if manifest_path.exists() else {"figures": {}}
    for name in out["figures"]:
        prev = manifest["figures"].get(name)
        if prev and Path(prev["notebook"]).stem != job["notebook"].stem:
            raise ParameterError(f"figure {name!r} of {job['notebook'].stem} is also written by "
                                 f"{prev['notebook']}")
        for ext in ("png", "pdf"):
            shutil.copyfile(job["out_dir"] / f"{name}.{ext}", figures_dir / f"{name}.{ext}")
        manifest["figures"][name] = {
            "notebook": _rel(job["notebook"]), "parameters": meta["parameters"],
            "run_ids": out["run_ids"], "git_rev": meta["git_rev"], "date": meta["date"],
            "executed": _rel(job["out_dir"] / "executed.ipynb"),
            "files": [f"{name}.png", f"{name}.pdf"], "headline": out["headline"]}
    manifest["figures"] = dict(sorted(manifest["figures"].items()))
    write_json(manifest_path, manifest)
    return out["figures"]


def _rel(p: Path) -> str:
    try:
        return str(Path(p).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def format_table(results: list[tuple[str, dict]]) -> str:
    lines = [f"{'notebook':<24} {'status':<8} {'time':>7}  detail"]
    for name, r in results:
        lines.append(f"{name:<24} {r['status']:<8} {r['seconds']:>6.0f}s  {r['detail']}")
    return "\n".join(lines)


def figures_folder(preset: str, runs_root: Path, update: bool) -> Path:
    """Where the figures go: the committed paper_figures/ (tiny) or paper_figures/<preset>/ when
    update, else <runs_root>/figures/<preset>/, which no commit tracks."""
    if update:
        return Path("paper_figures" if preset == "tiny" else f"paper_figures/{preset}")
    return runs_root / "figures" / preset


def _clock() -> str:
    return dt.datetime.now().strftime("%H:%M:%S")


def run_all(jobs: list[dict], runs_root: Path, figures_dir: Path, *, kernel: str, force: bool,
            progress: bool) -> list[tuple[str, dict]]:
    """Run (or reuse) each job and publish its figures, printing each notebook's start and end."""
    results = []
    for i, job in enumerate(jobs, 1):
        tag = f"[{i}/{len(jobs)}] {job['notebook'].stem}"
        print(f"{tag}: started at {_clock()}", flush=True)
        res = run_job(job, runs_root, kernel=kernel, force=force, progress=progress)
        if res["status"] != "FAILED":
            try:
                publish(job, figures_dir)
            except (OSError, KeyError, ParameterError) as err:
                res = dict(res, status="FAILED", detail=f"publishing figures: {err}")
        done = ("reused (finished earlier with these parameters)" if res["status"] == "reused"
                else f"{res['status']} in {res['seconds']:.0f} s")
        print(f"{tag}: {done}, at {_clock()}", flush=True)
        results.append((job["notebook"].stem, res))
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m thrlab.paper.reproduce", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebooks", nargs="*", help="notebooks to run (stem, number or path; "
                    "default: all numbered notebooks)")
    ap.add_argument("--preset", default=None, help="sets every notebook's `preset` parameter")
    ap.add_argument("--seeds", type=int, default=None, help="sets `seeds = [0..N-1]`")
    ap.add_argument("-p", "--param", action="append", default=[], metavar="[NB:]KEY=VALUE",
                    help="set a declared notebook parameter (repeatable)")
    ap.add_argument("--notebooks-dir", default=None, help="default: ./notebooks")
    ap.add_argument("--runs-root", default="runs", help="experiment and notebook run folders")
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--update-figures", action="store_true",
                       help="write the committed figures: paper_figures/ (tiny) or "
                            "paper_figures/<preset>/ (default: <runs-root>/figures/<preset>/)")
    where.add_argument("--figures-dir", default=None, help="write the figures to this folder")
    ap.add_argument("--kernel", default="python3", help="Jupyter kernel name")
    ap.add_argument("--force", action="store_true", help="re-execute finished notebooks")
    ap.add_argument("--list", action="store_true", help="list notebooks and their parameters")
    args = ap.parse_args(argv)
    nb_dir = Path(args.notebooks_dir or "notebooks")
    runs_root = Path(args.runs_root)
    try:
        notebooks = find_notebooks(nb_dir, args.notebooks)
        if not notebooks:
            raise ParameterError(f"no notebooks (NN_*.ipynb) in {nb_dir.resolve()}")
        if args.list:
            for nb in notebooks:
                print(f"{nb.stem}: " + ", ".join(f"{k}={v!r}" for k, v in
                                                   declared_parameters(nb).items()))
            return 0
        if args.preset is not None:
            preset_config(args.preset)  # an unknown preset stops here, not in every notebook
        jobs = plan(notebooks, preset=args.preset, seeds=args.seeds,
                    params=parse_params(args.param), runs_root=runs_root)
    except (ParameterError, ConfigError) as err:
        print(f"reproduce: error: {err}", file=sys.stderr)
        return 2
    preset = args.preset or "tiny"
    figures_dir = Path(args.figures_dir) if args.figures_dir else \
        figures_folder(preset, runs_root, args.update_figures)
    print(f"reproducing {len(jobs)} notebook(s) at --preset {preset}\n"
          f"  run folders: {runs_root}/notebooks/ (finished ones are reused)\n"
          f"  figures:     {figures_dir}/"
          + ("" if args.update_figures or args.figures_dir else
             " (paper_figures/ is left as committed; --update-figures writes it)"), flush=True)
    if preset_config(preset).model == "tiny":
        print(f"  tiny model:  its cold start is cached once per machine in {cache_root()} "
              "($THRLAB_CACHE)", flush=True)
    t0 = time.time()
    results = run_all(jobs, runs_root, figures_dir, kernel=args.kernel, force=args.force,
                      progress=sys.stderr.isatty())
    print(format_table(results))
    failed = [n for n, r in results if r["status"] == "FAILED"]
    print(f"{len(results) - len(failed)} of {len(results)} notebooks ok, {len(failed)} failed; "
          f"{time.time() - t0:.0f} s; figures in {figures_dir}/")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
