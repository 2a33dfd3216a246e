"""log_to: where a run's numbers go besides log.jsonl (trackers.py). Without wandb installed, asking for it (or for
a tracker that does not exist) is one line before anything trains. With it (`make test-wandb` installs it), a run in
wandb's offline mode leaves W&B files that hold the log's scalars at their steps, the run's config and its samples,
and a resumed run goes on in the same W&B run."""
import json
import struct

import pytest

import train
import trackers
from config import UserError, run_main
from conftest import read_log, run_args

pytestmark = pytest.mark.integration  # trains


@pytest.mark.parametrize("log_to, message", [
    ("tensorboard,tb", "log_to='tensorboard,tb' names 'tb', not one of tensorboard, wandb"),
    ("wandb", "log_to='wandb' asks for wandb, which is not installed: pip install -r requirements-wandb.txt"),
])
def test_a_tracker_that_is_not_there_is_one_line_before_training(tiny_data, tmp_path, capsys, monkeypatch, log_to,
                                                                 message):
    monkeypatch.setattr(trackers.importlib.util, "find_spec", lambda name: None)  # as if wandb were not installed
    assert run_main(train.main, run_args(tiny_data, tmp_path, f"log_to={log_to}")) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not (tmp_path / "run").exists()


def wandb_records(path):
    """The protobuf records of a W&B run file (.wandb), read as wandb-core writes it: a 7-byte header (':W&B', a
    magic number, a version), then 32 KiB blocks of chunks, each after a 7-byte header (checksum, length, type:
    1 a whole record, 2-4 its first, middle and last pieces); a block's last < 7 bytes are padding."""
    from wandb.proto import wandb_internal_pb2
    raw = path.read_bytes()
    assert raw[:4] == b":W&B"
    position, block, pieces = 7, 32768, b""
    while position + 7 <= len(raw):
        if block - position % block < 7:
            position += block - position % block
            continue
        length, kind = struct.unpack("<HB", raw[position + 4:position + 7])
        pieces += raw[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            pieces = b""
            yield record


def history_and_config(wandb_dir):
    """({step: {key: value}} of every history row, the config) of the offline runs under a run's wandb/."""
    history, config = {}, {}
    for path in sorted(wandb_dir.glob("offline-run-*/run-*.wandb")):
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "history":
                row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
                history.setdefault(row["_step"], {}).update(row)
            elif kind == "run":
                config.update({item.key: json.loads(item.value_json) for item in record.run.config.update})
            elif kind == "config":
                config.update({item.key: json.loads(item.value_json) for item in record.config.update})
    return history, config


def exit_codes(wandb_dir):
    """The exit status each offline run under a run's wandb/ ended with, oldest first."""
    return [record.exit.exit_code for path in sorted(wandb_dir.glob("offline-run-*/run-*.wandb"))
            for record in wandb_records(path) if record.WhichOneof("record_type") == "exit"]


@pytest.fixture
def offline_wandb(monkeypatch):
    pytest.importorskip("wandb")  # `make test-wandb` installs it
    monkeypatch.setenv("WANDB_MODE", "offline")  # no account, no network
    monkeypatch.setenv("WANDB_SILENT", "true")


def test_a_run_logs_to_wandb_offline_and_a_resume_goes_on_in_the_same_run(tiny_data, tmp_path, offline_wandb):
    args = run_args(tiny_data, tmp_path, "run_name=w", "log_to=wandb", "checkpoint_interval=3")
    assert train.main(args + ["max_steps=6"]) == 0
    run_dir = tmp_path / "w"
    run_id = (run_dir / "wandb_id.txt").read_text().strip()
    assert train.main(args + ["max_steps=8"]) == 0  # resumed from step 6
    assert (run_dir / "wandb_id.txt").read_text().strip() == run_id
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(p.name.endswith(f"-{run_id}") for p in runs)  # the same W&B run, twice
    assert exit_codes(run_dir / "wandb") == [0, 0]  # finished, both times

    history, config = history_and_config(run_dir / "wandb")
    losses, evals = read_log(run_dir)
    assert [r["step"] for r in losses] == list(range(1, 9))
    for record in losses + evals:  # every float of the log, at its step
        for key, value in record.items():
            if isinstance(value, float) and key != "time":
                assert history[record["step"]][key] == pytest.approx(value, rel=1e-12), (record["step"], key)
    assert config["run_name"] == "w" and config["log_to"] == "wandb" and config["dim"] == 32
    assert history[8]["samples/_type"] == "table-file"  # the end-of-run samples, as a table
    [table] = list(runs[1].glob("files/media/table/samples_8_*.table.json"))
    text = json.loads(table.read_text())["data"][0][1]  # step 8's: samples.txt holds step 6's before it
    assert text.startswith("----- sample at step 8 1/1") and (run_dir / "samples.txt").read_text().endswith(text)


def test_a_run_that_ends_in_an_error_is_a_failed_wandb_run(tiny_data, tmp_path, offline_wandb, monkeypatch):
    def diverge(run):
        raise UserError("loss is nan at step 1")
    monkeypatch.setattr(train, "training_loop", diverge)
    assert run_main(train.main, run_args(tiny_data, tmp_path, "run_name=w", "log_to=wandb")) == 2
    assert exit_codes(tmp_path / "w" / "wandb") == [1]  # W&B shows it failed, not finished
