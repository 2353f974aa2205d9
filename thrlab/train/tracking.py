"""Experiment trackers (config `report_to`): TensorBoard or Weights & Biases mirror metrics.jsonl.

metrics.jsonl stays the source of truth; a tracker is a mirror written after it, with the same
namespaced keys (train/..., thr/..., time/...) at step = the training step, plus the THR token
records (thrlab.paper.anatomy) of the steps that save them. Where the logs go:
  tensorboard  <run>/tensorboard/ event files, rebuilt from metrics.jsonl and thr_tokens/ when
               a run resumes, so each step is there once (a kill's extra steps are dropped)
  wandb        <run>/wandb/, mode WANDB_MODE (default offline: a run never needs the network;
               `wandb sync <run>/wandb/offline-run-*` uploads); the run id is kept in
               <run>/wandb_id so a resumed run continues the same W&B run (a step that a
               killed run logged past its checkpoint keeps its first values there: W&B
               drops the repeated step)
A tracker is opened before the first step: a missing package or unwritable folder fails there,
naming the pip extra, not hours in. Scalars are stored as float32 (TensorBoard's and W&B's
charts); the values to compare with are metrics.jsonl's.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path

from thrlab.core.errors import SetupError

from .presets import run_id
from .records import load_token_records, token_rows
from .runs import RunDir

# report_to -> (module the backend needs, the pip extra that installs it)
NEEDS = {"tensorboard": ("tensorboard", "track"), "wandb": ("wandb", "wandb")}


def check_tracker(report_to: str) -> None:
    """Refuse a tracker whose package does not import, naming the pip extra that installs it."""
    if report_to == "none":
        return
    import importlib

    module, extra = NEEDS[report_to]
    try:
        importlib.import_module(module)
    except ImportError as err:
        raise SetupError(f"report_to={report_to} needs the {module} package, which is not "
                         f"installed: pip install 'thrlab[{extra}]' (or set report_to=none)"
                         ) from err


def scalars(row: dict) -> dict[str, float]:
    """The metrics row's numeric keys (all but `step`), as the trackers log them."""
    return {k: float(v) for k, v in row.items()
            if k != "step" and isinstance(v, (int, float))}


class Tracker:
    """report_to=none, and the interface: log a metrics row, log a token record, close."""

    def log(self, row: dict, step: int) -> None:
        pass

    def log_tokens(self, record: dict, step: int) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardTracker(Tracker):
    """Scalars under the metrics' names; token records as one markdown text summary per step
    (`thr/tokens`: a row per response, each token with its THR), which TensorBoard's Text tab
    renders as a table.

    Opening rebuilds <run>/tensorboard/ from metrics.jsonl and thr_tokens/ up to start_step:
    a resumed run's event files then hold each step once. (purge_step would hide the steps a
    killed run logged past its checkpoint from scalars only: TensorBoard's reader keeps the
    text summaries of both attempts.)
    """

    def __init__(self, run_dir: Path, cfg, start_step: int):
        import shutil

        from torch.utils.tensorboard import SummaryWriter


        log_dir = run_dir / "tensorboard"
        if log_dir.is_dir():
            shutil.rmtree(log_dir)
        self.writer = SummaryWriter(log_dir=str(log_dir))
        for row in RunDir(run_dir).metrics(start_step):  # already truncated to the checkpoint
            self.log(row, row["step"])
        for rec in load_token_records(run_dir):
            if rec["step"] <= start_step:
                self.log_tokens(rec, rec["step"])

    def log(self, row: dict, step: int) -> None:
        for k, v in scalars(row).items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def log_tokens(self, record: dict, step: int) -> None:
        self.writer.add_text("thr/tokens", tokens_markdown(record), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker(Tracker):
    """wandb.log of the scalars; token records as a wandb.Table (`thr/tokens`, one row per
    token: records.token_rows' columns)."""

    def __init__(self, run_dir: Path, cfg, start_step: int):
        import wandb

        id_file = run_dir / "wandb_id"
        if not id_file.exists():  # one W&B run per run folder, kept across resumes
            id_file.write_text(f"{run_id(cfg)}-{uuid.uuid4().hex[:8]}\n")
        self.wandb = wandb
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "thrlab"),
                              name=run_id(cfg), id=id_file.read_text().strip(), resume="allow",
                              dir=str(run_dir), config=cfg.to_dict(),
                              mode=os.environ.get("WANDB_MODE", "offline"))

    def log(self, row: dict, step: int) -> None:
        self.run.log(scalars(row), step=step)

    def log_tokens(self, record: dict, step: int) -> None:
        rows = token_rows(record)
        cols = list(rows[0]) if rows else ["step", "group", "row", "pos", "token", "thr"]
        self.run.log({"thr/tokens": self.wandb.Table(
            columns=cols, data=[[r[c] for c in cols] for r in rows])}, step=step)

    def close(self) -> None:
        self.run.finish()


TRACKERS = {"none": Tracker, "tensorboard": TensorBoardTracker, "wandb": WandbTracker}


def open_tracker(run_dir: str | Path, cfg, start_step: int) -> Tracker:
    """The tracker cfg.report_to names, for a run resuming after start_step (0 = fresh)."""
    if cfg.report_to == "none":
        return Tracker()
    check_tracker(cfg.report_to)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        return TRACKERS[cfg.report_to](run_dir, cfg, start_step)
    except Exception as err:  # an unwritable folder, a broken install, W&B refusing to start
        raise SetupError(f"report_to={cfg.report_to} cannot start in {run_dir}: {err}") from err


def tokens_markdown(record: dict) -> str:
    """A markdown table of a token record: one row per response, tokens as `token` (THR)."""
    def cell(s: str) -> str:
        return s.replace("\\", "\\\\").replace("|", "\\|").replace("`", "'").replace("\n", "\\n")

    lines = ["| group | reward | adv | tokens (THR) |", "|---|---|---|---|"]
    for r in record["rows"]:
        toks = " ".join(f"`{cell(t)}` ({v:+.3g})" for t, v in zip(r["tokens"], r["thr"]))
        lines.append(f"| {r['group']} | {r['reward']:g} | {r['adv']:+.3g} | {toks} |")
    return "\n".join(lines)
