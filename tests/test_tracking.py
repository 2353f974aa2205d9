"""report_to: TensorBoard and offline W&B mirror metrics.jsonl (names, steps, values) and the THR
token records of a few real steps; a resumed run continues the same tracker run; a missing
package fails before training with the pip extra to install."""
import json
import struct
import sys

import numpy as np
import pytest
import torch

from thrlab.train.records import load_token_records
from thrlab.tasks.arithmetic import arithmetic_problems
from thrlab.core.errors import SetupError
from thrlab.train.model import load_policy
from thrlab.train.presets import from_preset
from thrlab.train.runs import RunDir
from thrlab.train.trainer import GRPOTrainer

from test_trainer import ParityGrade
from tests.fixtures import limits

# THR on with thr_save_every=1: every step saves a token record, so tables are mirrored too
THR = dict(thr_mode="thr", thr_p=0.1, thr_save_every=1, thr_save_rows=4)


def _trainer(tiny_model_dir, run_dir, grade=None, **over):
    # 4 x 4 rows, 6 tokens: the test_trainer budget, a few seconds a step on one thread
    base = dict(steps=2, prompts_per_step=4, group_size=4, max_new_tokens=6, lr=1e-2,
                save_every=1, threads=1, **THR)
    cfg = from_preset("tiny", **dict(base, **over))
    model, tok = load_policy(cfg, str(tiny_model_dir), torch.device("cpu"))
    return GRPOTrainer(cfg, model, tok, arithmetic_problems(64, "train", seed=0),
                       RunDir(run_dir), grade or ParityGrade())


def _expected(rows):
    """{key: [(step, value)]} of metrics.jsonl's numeric keys, in step order."""
    out = {}
    for r in rows:
        for k, v in r.items():
            if k != "step":
                assert isinstance(v, (int, float)), (k, v)  # every key is a scalar to mirror
                out.setdefault(k, []).append((r["step"], float(v)))
    return out


def _tensorboard(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    ea.Reload()
    return ea


class Killed(Exception):
    """Stands in for a kill in the middle of a step."""


class GradeThenDie(ParityGrade):
    def __init__(self, calls: int):
        self.left = calls

    def __call__(self, texts, golds):
        self.left -= 1
        if self.left < 0:
            raise Killed
        return super().__call__(texts, golds)


def test_tensorboard_mirrors_metrics_and_token_tables_and_resumes(tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    # steps 1-3 logged, checkpoints at 2 only (save_every=2), then killed inside step 4: the
    # resumed run redoes step 3 and the reader must see it once
    tr = _trainer(tiny_model_dir, run, GradeThenDie(3), steps=4, save_every=2,
                  report_to="tensorboard")
    with pytest.raises(Killed):
        tr.train(progress=False)
    assert [r["step"] for r in tr.run.metrics()] == [1, 2, 3]
    tr = _trainer(tiny_model_dir, run, steps=4, save_every=2, report_to="tensorboard")
    rows = tr.train(progress=False)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]

    assert not [p for p in (run / "tensorboard").iterdir() if p.is_dir()]  # one TB run
    ea = _tensorboard(run / "tensorboard")
    want = _expected(rows)
    assert set(ea.Tags()["scalars"]) == set(want)
    assert "train/reward_mean" in want and "time/update" in want and "thr/frac_kept" in want
    for key, pairs in want.items():
        got = [(e.step, e.value) for e in ea.Scalars(key)]
        # TensorBoard stores float32
        assert got == [(s, float(np.float32(v))) for s, v in pairs], key

    records = load_token_records(run)
    texts = ea.Tensors("thr/tokens/text_summary")
    assert [t.step for t in texts] == [r["step"] for r in records] == [1, 2, 3, 4]
    for t, rec in zip(texts, records):
        table = t.tensor_proto.string_val[0].decode().splitlines()
        assert table[0].startswith("| group | reward |") and len(table) == 2 + len(rec["rows"])
        first = rec["rows"][0]
        assert table[2].startswith(f"| {first['group']} | {first['reward']:g} |")
        assert table[2].count("` (") == len(first["tokens"])  # every saved token, with its THR


def _wandb_records(path):
    """Records of an offline .wandb file: leveldb-log framing (7-byte ':W&B' header, 32 KiB
    blocks of chunks with a (crc u32, length u16, type u8) header) around protobuf Records."""
    from wandb.proto import wandb_internal_pb2 as pb

    raw, block, pos, buf = path.read_bytes(), 32768, 7, b""
    assert raw[:4] == b":W&B"
    while pos + 7 <= len(raw):
        left = block - pos % block
        _, n, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        if left < 7 or (n == 0 and kind == 0):  # block trailer / zero padding
            pos += left
            continue
        buf, pos = buf + raw[pos + 7:pos + 7 + n], pos + 7 + n
        if kind in (1, 4):  # FULL, LAST: a whole record
            rec = pb.Record()
            rec.ParseFromString(buf)
            buf = b""
            yield rec


def _wandb_history(run_file):
    """(run id, {step: {key: value}}) of one offline W&B run file."""
    run_id, hist = None, {}
    for rec in _wandb_records(run_file):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            run_id = rec.run.run_id
        elif kind == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json)
                     for i in rec.history.item}
            hist.setdefault(items["_step"], {}).update(items)
    return run_id, hist


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is in the dev extra")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home" / var.lower()))  # nothing in ~


def test_wandb_offline_mirrors_metrics_and_token_tables_and_resumes(tiny_model_dir, tmp_path,
                                                                   wandb_offline):
    run = tmp_path / "run"
    _trainer(tiny_model_dir, run, steps=1, report_to="wandb").train(progress=False)
    rows = _trainer(tiny_model_dir, run, steps=2, report_to="wandb").train(progress=False)
    # one offline segment per trainer; names need not sort by time (a second segment started
    # within the same second is offline-run-<time>-<id>-1)
    files = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2
    # run.finish() can return before W&B's service process has written a segment out (seen
    # twice on a loaded machine: a segment without its run record); wait until both hold their
    # run and their step (a record caught half-written reads as corrupt: not yet)
    from google.protobuf.message import DecodeError

    seen = []

    def written():
        try:
            got = [_wandb_history(f) for f in files]
        except DecodeError:  # the service is still appending a record: read again
            return False
        seen[:] = got  # the read that passed (a later one may catch another record half-written)
        return all(i for i, _ in got) and sorted(sorted(h) for _, h in got) == [[1], [2]]

    limits.wait_for(written, "W&B's service writing both offline segments", limit_s=120,
                    poll_s=0.5)
    segments = [(*got, f.parent) for got, f in zip(seen, files)]
    assert {i for i, _, _ in segments} == {(run / "wandb_id").read_text().strip()}  # one W&B run
    assert sorted(sorted(h) for _, h, _ in segments) == [[1], [2]]
    hist = {step: (row, seg) for _, h, seg in segments for step, row in h.items()}
    records = load_token_records(run)
    assert [r["step"] for r in rows] == [rec["step"] for rec in records] == [1, 2]
    for r, rec in zip(rows, records):
        logged, seg = hist[r["step"]]
        want = {k: float(v) for k, v in r.items() if k != "step"}
        assert {k: logged[k] for k in want} == want  # JSON: the float64 values themselves
        assert not {k for k in logged if not k.startswith(("_", "thr/tokens/"))} - set(want)
        assert logged["thr/tokens/_type"] == "table-file"
        table = json.loads((seg / "files" / logged["thr/tokens/path"]).read_text())
        n_tokens = sum(len(resp["tokens"]) for resp in rec["rows"])
        assert len(table["data"]) == logged["thr/tokens/nrows"] == n_tokens
        cols = table["columns"]
        first = dict(zip(cols, table["data"][0]))
        assert first["token"] == rec["rows"][0]["tokens"][0]
        assert first["thr"] == pytest.approx(rec["rows"][0]["thr"][0])
        assert first["step"] == r["step"]


@pytest.mark.parametrize("report_to, extra", [("wandb", "wandb"), ("tensorboard", "track")])
def test_missing_tracker_package_fails_before_training_naming_the_extra(
        tiny_model_dir, tmp_path, monkeypatch, report_to, extra):
    from thrlab.train.experiment import check_inputs

    monkeypatch.setitem(sys.modules, report_to, None)  # the package is not installed
    cfg = from_preset("tiny", report_to=report_to)
    with pytest.raises(SetupError, match=rf"pip install 'thrlab\[{extra}\]'"):
        check_inputs(cfg)
    tr = _trainer(tiny_model_dir, tmp_path / "run", report_to=report_to)
    with pytest.raises(SetupError, match=rf"report_to={report_to} needs the {report_to}"):
        tr.train(progress=False)
    assert tr.run.metrics() == []  # no step ran


def test_unwritable_tensorboard_folder_fails_at_the_start(tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "tensorboard").write_text("a file where the log folder goes\n")
    tr = _trainer(tiny_model_dir, run, report_to="tensorboard")
    with pytest.raises(SetupError, match="report_to=tensorboard cannot start in"):
        tr.train(progress=False)
    assert tr.run.metrics() == []
