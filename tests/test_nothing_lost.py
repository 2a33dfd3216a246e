"""Nothing lost: the data-loss and crash paths a new user meets, each with the test that once failed.

Export onto a run or a folder of the user's, a run directory without a step checkpoint, non-finite weights, a damaged
newest checkpoint, weights that do not match their model_config, a meta.json that lies, a full disk while training
(the other writers' full disks: test_full_disk.py), a stale control command, a kill before the final sample or the
first checkpoint.
"""
import dataclasses
import json
import shutil
import subprocess

import pytest
import torch

import export
import files
import model
import sample
import train
from config import UserError, run_main
from conftest import ROOT, read_log, run_args, run_under_file_size_limit, tiny



def one_error_line(capsys):
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def tree(directory):
    """{relative path: bytes} of every file below directory."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    """out/ holding run r: 20 steps, checkpoints at 10 and 20, ckpt_best.pt, a log and samples."""
    out = tmp_path_factory.mktemp("out")
    assert train.main(run_args(tiny_data, out, "run_name=r", "max_steps=20", "checkpoint_interval=10")) == 0
    return out


# ----------------------------------------------------------------------------- export never deletes a run

@pytest.mark.parametrize("output", ["out", "run", "run/tensorboard-like"])
def test_export_force_never_replaces_a_run_or_what_holds_one(trained, tmp_path, capsys, output):
    out = tmp_path / "out"
    subprocess.run(["cp", "-r", str(trained), str(out)], check=True)
    run_dir = out / "r"
    (run_dir / "tensorboard-like").mkdir()
    (run_dir / "tensorboard-like" / "events").write_text("mine")
    target = {"out": out, "run": run_dir, "run/tensorboard-like": run_dir / "tensorboard-like"}[output]
    before = tree(out)
    assert run_main(export.main, [str(run_dir), "--output", str(target), "--force"]) == 2
    assert "--force" in one_error_line(capsys)
    assert tree(out) == before  # every run, checkpoint and file still there, byte for byte


def test_export_force_never_deletes_a_folder_of_the_users(trained, tmp_path, capsys):
    """--force replaces only the files an export writes: a folder holding anything else is refused, named."""
    mine = tmp_path / "mine"
    (mine / "drafts").mkdir(parents=True)
    (mine / "notes.txt").write_text("mine")
    (mine / "config.json").write_text("{}")  # a name an export writes too: the other files still belong to the user
    before = tree(mine)
    assert run_main(export.main, [str(trained / "r"), "--output", str(mine), "--force"]) == 2
    assert one_error_line(capsys) == (
        f"error: {mine} holds drafts/, notes.txt, not written by export.py: --force replaces only a folder of the "
        f"files it writes ({', '.join(sorted(export.HF_FILES))}); choose another --output")
    assert tree(mine) == before and (mine / "drafts").is_dir()

    export.main([str(trained / "r"), "--output", str(tmp_path / "hf")])  # --import --force: the same rule
    assert run_main(export.main, ["--import", str(tmp_path / "hf"), "--output", str(mine), "--force"]) == 2
    assert "notes.txt, not written by export.py" in one_error_line(capsys)
    assert tree(mine) == before
    imported = tmp_path / "imported"
    export.main(["--import", str(tmp_path / "hf"), "--output", str(imported)])
    export.main(["--import", str(tmp_path / "hf"), "--output", str(imported), "--force"])  # its own earlier import
    assert [p.name for p in imported.iterdir()] == ["ckpt_00000000.pt"]


def test_export_force_replaces_an_earlier_export_in_the_run(trained, tmp_path, capsys):
    run_dir = tmp_path / "r"
    subprocess.run(["cp", "-r", str(trained / "r"), str(run_dir)], check=True)
    export.main([str(run_dir)])  # RUN/hf
    export.main([str(run_dir), "--force"])  # again: replaces its own earlier export
    assert {p.name for p in (run_dir / "hf").iterdir()} == export.HF_FILES  # a real run's log: its card and curve too
    _, evals = read_log(run_dir)
    assert f"| eval loss (nats/token) | {evals[-1]['eval_loss']:.4f} |" in (run_dir / "hf" / "README.md").read_text()
    assert files.step_checkpoints(run_dir)  # the run is whole


# ----------------------------------------------------------------------------- no silent restart over a run

def test_a_run_dir_with_only_best_checkpoint_and_log_is_not_restarted(trained, tiny_data, tmp_path, capsys):
    run_dir = tmp_path / "r"
    subprocess.run(["cp", "-r", str(trained / "r"), str(run_dir)], check=True)
    for path in files.step_checkpoints(run_dir):
        path.unlink()
    before = tree(run_dir)
    argv = run_args(tiny_data, tmp_path, "run_name=r", "max_steps=20", "checkpoint_interval=10")
    assert run_main(train.main, argv) == 2
    line = one_error_line(capsys)
    assert "ckpt_best.pt" in line and "a log to step 20" in line and "no step checkpoint" in line
    assert tree(run_dir) == before  # ckpt_best.pt, the log and the samples untouched


def test_a_kill_before_the_first_checkpoint_leaves_one_step_0_line(tiny_data, tmp_path, monkeypatch):
    import data
    real = data.TrainingData.micro_batch

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # as a kill right after the step-0 eval

    monkeypatch.setattr(data.TrainingData, "micro_batch", interrupted)
    command = run_args(tiny_data, tmp_path, "run_name=z", "max_steps=6")
    assert run_main(train.main, command) == 130
    monkeypatch.setattr(data.TrainingData, "micro_batch", real)
    assert train.main(command) == 0
    _, evals = read_log(tmp_path / "z")
    assert [r["step"] for r in evals] == [0, 5, 6]


# ----------------------------------------------------------------------------- non-finite weights never saved

def test_nan_weights_never_reach_a_checkpoint(tiny_data, tmp_path, capsys):
    code = run_main(train.main, run_args(tiny_data, tmp_path, "run_name=nan", "lr=1e4", "grad_clip=0",
                                         "checkpoint_interval=1", "divergence_factor=0", "max_steps=30"))
    assert code == 2
    line = one_error_line(capsys)
    saved = files.step_checkpoints(tmp_path / "nan")
    for path in saved + list((tmp_path / "nan").glob("ckpt_best.pt")):
        assert files.non_finite_tensors(torch.load(path, weights_only=True)["model"]) == []
    # what the message says about the checkpoints is true
    assert f"the newest checkpoint is {saved[-1] if saved else 'none'}" in line


def test_save_checkpoint_refuses_non_finite_weights(tmp_path):
    state = {"model": {"w": torch.tensor([1.0, float("inf")])}, "model_config": {}, "step": 3}
    with pytest.raises(UserError, match=r"weights are not finite at step 3 \(w\): not saved"):
        files.save_checkpoint(tmp_path, state, keep=2)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- a damaged newest checkpoint

def poison(path):
    """A NaN in one weight of a checkpoint file (what a bit flip on disk, or a hand edit, can leave)."""
    state = torch.load(path, weights_only=True)
    state["model"]["norm.weight"][0] = float("nan")
    torch.save(state, path)


@pytest.mark.parametrize("damage", ["truncated", "empty", "not a checkpoint", "non-finite"])
def test_damaged_newest_checkpoint_falls_back(trained, tiny_data, tmp_path, capsys, damage):
    out = tmp_path / "out"
    subprocess.run(["cp", "-r", str(trained), str(out)], check=True)
    run_dir = out / "r"
    newest = files.checkpoint_path(run_dir, 20)
    if damage == "truncated":
        newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    elif damage == "empty":
        newest.write_bytes(b"")
    elif damage == "not a checkpoint":
        torch.save(torch.zeros(3), newest)
    else:
        poison(newest)
    capsys.readouterr()

    # sample.py and load_model: the older checkpoint, with one warning line each
    assert sample.main([str(run_dir), "--tokens", "5"]) == 0
    err = capsys.readouterr().err
    assert "ckpt_00000020.pt" in err and "using" in err and "ckpt_00000010.pt" in err and "Traceback" not in err
    # resume: from step 10, to the same losses as the unbroken run
    assert train.main(run_args(tiny_data, out, "run_name=r", "max_steps=20", "checkpoint_interval=10")) == 0
    assert "ckpt_00000010.pt" in capsys.readouterr().err
    resumed, _ = read_log(run_dir)
    original, _ = read_log(trained / "r")
    assert [r["loss"] for r in resumed] == [r["loss"] for r in original]
    assert files.read_checkpoint(newest)["step"] == 20  # written again, whole


def test_a_damaged_checkpoint_file_named_is_one_line(trained, tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 100)
    assert run_main(sample.main, [str(bad)]) == 2
    assert one_error_line(capsys).startswith(f"error: cannot read checkpoint {bad}")
    assert run_main(export.main, [str(bad), "--output", str(tmp_path / "hf")]) == 2
    assert one_error_line(capsys).startswith(f"error: cannot read checkpoint {bad}")


def test_a_non_finite_checkpoint_file_named_is_one_line(trained, tmp_path, capsys):
    bad = tmp_path / "nan.pt"
    shutil.copy(files.checkpoint_path(trained / "r", 20), bad)
    poison(bad)
    line = f"error: checkpoint {bad} is damaged: its weights are not finite (norm.weight)"
    assert run_main(sample.main, [str(bad)]) == 2
    assert one_error_line(capsys) == line
    assert run_main(export.main, [str(bad), "--output", str(tmp_path / "hf")]) == 2
    assert one_error_line(capsys) == line
    assert not (tmp_path / "hf").exists()
    with pytest.raises(UserError, match="its weights are not finite"):
        model.load_model(bad)


MISMATCHES = {  # a change to a checkpoint's weights (those of TINY: dim 32): what its one line says
    "missing": (lambda weights: weights.pop("norm.weight"), "missing norm.weight"),
    "extra": (lambda weights: weights.update(extra=torch.zeros(2)), "unexpected extra"),
    "shape": (lambda weights: weights.update({"norm.weight": torch.ones(5)}),
              "wrong shape: norm.weight (5,) for (32,)"),
}


@pytest.mark.parametrize("mismatch", sorted(MISMATCHES))
def test_weights_that_do_not_match_their_model_config_are_one_line_everywhere(trained, tiny_data, tmp_path, capsys,
                                                                              mismatch):
    out = tmp_path / "out"
    subprocess.run(["cp", "-r", str(trained), str(out)], check=True)
    newest = files.checkpoint_path(out / "r", 20)
    change, words = MISMATCHES[mismatch]
    state = torch.load(newest, weights_only=True)
    change(state["model"])
    torch.save(state, newest)
    expected = f"{newest}: its weights do not match its model_config ({words})"
    capsys.readouterr()
    assert run_main(sample.main, [str(newest)]) == 2
    assert one_error_line(capsys) == f"error: {expected}"
    assert run_main(export.main, [str(newest), "--output", str(tmp_path / "hf")]) == 2
    assert one_error_line(capsys) == f"error: {expected}"
    with pytest.raises(UserError) as info:
        model.load_model(out / "r")
    assert str(info.value) == expected
    before = tree(out / "r")
    assert run_main(train.main, run_args(tiny_data, out, "run_name=r", "max_steps=30", "checkpoint_interval=10")) == 2
    assert capsys.readouterr().err.splitlines() == [f"error: {expected}"]
    assert tree(out / "r") == before


def test_a_model_config_that_is_no_model_is_one_line(tmp_path, capsys):
    checkpoint = tmp_path / "odd.pt"
    torch.save({"model": {}, "model_config": {"dim": 64, "heads": 4}, "tokenizer": "bytes"}, checkpoint)
    assert run_main(sample.main, [str(checkpoint)]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"error: {checkpoint}: its model_config is not a model of this model.py (")
    assert "heads" in line
    config = {**dataclasses.asdict(tiny()), "dim": 63}  # not a multiple of n_heads
    torch.save({"model": {}, "model_config": config}, checkpoint)
    with pytest.raises(UserError, match=r"model_config is not a model of this model.py \(dim \(63\) must be divisible"):
        model.load_model(checkpoint)


# ----------------------------------------------------------------------------- meta.json cross-checked on open

META_LIES = {  # a change to meta.json (of the bytes tokenizer): the words of its one line
    "eot_id": (lambda meta: meta.update(eot_id=5), "eot_id 5 is not 256, the end-of-text id of tokenizer 'bytes'"),
    "vocab_size": (lambda meta: meta.update(vocab_size=300), "vocab_size 300 is not 257"),
    "tokens": (lambda meta: meta["train"].update(tokens=meta["train"]["tokens"] + 1), "train.bin has"),
    "tokens not a count": (lambda meta: meta["val"].update(tokens=float(meta["val"]["tokens"])), "val.tokens is"),
    "negative bytes": (lambda meta: meta["train"].update(bytes=-1), "train.bytes is -1, not a count"),
    "bytes": (lambda meta: meta["val"].update(bytes=2 * meta["val"]["bytes"]), "val.bytes"),
    "fewer bytes": (lambda meta: meta["train"].update(bytes=10), "train.bytes 10 is fewer than its"),
    "documents": (lambda meta: meta["train"].update(documents=meta["train"]["tokens"]), "train.documents"),
    "bool documents": (lambda meta: meta["val"].update(documents=True), "val.documents is True, not a count"),
}


@pytest.mark.parametrize("lie", sorted(META_LIES))
def test_a_meta_json_that_lies_is_one_line_naming_the_field(tiny_data, tmp_path, capsys, lie):
    data_dir = tmp_path / "data"
    shutil.copytree(tiny_data, data_dir)
    meta_path = data_dir / "tiny" / "meta.json"
    meta = json.loads(meta_path.read_text())
    change, words = META_LIES[lie]
    change(meta)
    meta_path.write_text(json.dumps(meta))
    out = tmp_path / "out"
    assert run_main(train.main, run_args(data_dir, out, "run_name=r")) == 2
    line = one_error_line(capsys)
    assert line.startswith("error: data 'tiny': ") and words in line, line
    assert "meta.json" in line and "prepare the data again" in line, line
    assert not out.exists()


def test_every_checkpoint_damaged_is_refused_not_restarted(trained, tiny_data, tmp_path, capsys):
    out = tmp_path / "out"
    subprocess.run(["cp", "-r", str(trained), str(out)], check=True)
    for path in files.step_checkpoints(out / "r"):
        path.write_bytes(b"")
    before = tree(out / "r")
    assert run_main(train.main, run_args(tiny_data, out, "run_name=r", "max_steps=20")) == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith("error: no checkpoint in")
    assert tree(out / "r") == before


# ----------------------------------------------------------------------------- a full disk

def test_a_full_disk_leaves_no_temp_file_and_the_previous_checkpoint(trained, tiny_data, tmp_path):
    """train.py under a file-size limit (ulimit -f) half a checkpoint's size: the write fails with EFBIG (train.py
    ignores SIGXFSZ, which would kill it without a word), one line naming the file and the free space."""
    out = tmp_path / "out"
    subprocess.run(["cp", "-r", str(trained), str(out)], check=True)
    run_dir = out / "r"
    size = files.checkpoint_path(run_dir, 20).stat().st_size
    result = run_under_file_size_limit(
        [ROOT / "train.py", *run_args(tiny_data, out, "run_name=r", "max_steps=30", "checkpoint_interval=10")],
        size // 2, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"error: could not write {run_dir / 'ckpt_'}")
    assert ": File too large (" in result.stderr
    assert "free on its disk); the previous file is left as it was" in result.stderr
    assert [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")] == []
    assert files.load_checkpoint(run_dir)[1]["step"] == 20


# ----------------------------------------------------------------------------- control, samples

def test_a_control_command_left_from_an_earlier_run_is_ignored(trained, tiny_data, tmp_path, capsys):
    out = tmp_path / "out"
    subprocess.run(["cp", "-r", str(trained), str(out)], check=True)
    assert train.main(["control", str(out / "r"), "stop"]) == 0  # sent after the run had ended
    assert train.main(run_args(tiny_data, out, "run_name=r", "max_steps=25", "checkpoint_interval=10")) == 0
    assert "ignored the control command 'stop' left from an earlier run" in capsys.readouterr().err
    lines, _ = read_log(out / "r")
    assert lines[-1]["step"] == 25


def test_a_kill_before_the_final_sample_writes_it_on_rerun(trained, tiny_data, tmp_path):
    out = tmp_path / "out"
    subprocess.run(["cp", "-r", str(trained), str(out)], check=True)
    samples = out / "r" / "samples.txt"
    complete = samples.read_text()
    samples.unlink()  # what a kill between the final checkpoint and the final sample leaves
    command = run_args(tiny_data, out, "run_name=r", "max_steps=20", "checkpoint_interval=10")
    assert train.main(command) == 0
    assert samples.read_text() == complete  # the same text: the generator is seeded by the step
    assert train.main(command) == 0
    assert samples.read_text() == complete  # not written twice


# ----------------------------------------------------------------------------- every key's range

BAD_VALUES = {  # key: (a value outside its range, a word the error must hold besides the key)
    "run_name": ("", "plain"), "out_dir": ("FILE", "file"), "seed": (-1, "at least"), "init_from": (" out/r", "spaces"),
    "data": ("a,,b", "valid"),
    "data_dir": ("FILE", "file"), "mixture": ("greedy", "not one of"), "mixture_weights": ([1, -1], "at least"),
    "packing": ("tight", "not one of"), "eval_data": ("a,,b", "valid"), "tokenizer": ("gpt5", "not one of"),
    "seq_len": (0, "at least"), "batch_size": (0, "at least"), "grad_accum": (-2, "at least"),
    "total_tokens": (0, "greater than 0"), "max_steps": (0, "at least"), "model": ("huge", "not one of"),
    "attn": ("flash", "not one of"), "loss": ("fused", "not one of"), "schedule": ("step", "not one of"), "lr": (-1e-3, "greater than 0"),
    "base_batch_tokens": (0, "at least"), "lr_alpha": (-0.5, "at least"), "min_lr": (-1e-4, "at least"),
    "constant_lr": (0, "greater than 0"), "warmup_tokens": (-1, "at least"), "cooldown_p": (1.5, "in [0, 1]"),
    "min_cooldown_tokens": (-1, "at least"), "annealing_tokens": (-1, "at least"),
    "decay_shape": ("square", "not one of"), "start_annealing": ("yes", "bool"), "optimizer": ("sgd", "not one of"),
    "optimizer_state": ("fp8", "not one of"), "weight_decay": (-0.1, "at least"), "beta1": (1.0, "[0, 1)"),
    "beta2": (-0.5, "[0, 1)"), "eps": (0, "greater than 0"), "grad_clip": (-1, "at least"),
    "divergence_factor": (-3, "at least"), "device": ("tpu", "not one of"), "dtype": ("fp16", "not one of"),
    "compile": (1, "bool"), "compile_mode": ("fastest", "not one of"), "peak_flops": (0, "greater than 0"),
    "parallel": ("tp", "not one of"), "pp_stages": (0, "at least"), "pp_schedule": ("zb", "not one of"), "eval_interval": (0, "at least"), "eval_iters": (0, "at least"),
    "log_interval": (0, "at least"), "log_to": ("tensorboard,mlflow", "not one of"),
    "wandb_project": ("me/project", "W&B project name"), "checkpoint_interval": (0, "at least"), "keep_checkpoints": (0, "at least"),
    "sample_interval": (-1, "at least"), "sample_prompts": ([], "empty"), "sample_tokens": (-1, "at least"),
    "sample_temperature": (-0.5, "at least"), "sample_top_k": (0, "at least"),
    # ModelConfig fields, checked by ModelConfig itself before anything is built
    "vocab_size": (0, "at least"), "dim": (0, "at least"), "n_layers": (0, "at least"), "n_heads": (0, "at least"),
    "n_kv_heads": (0, "n_heads"), "ffn_dim": (0, "at least"), "rope_theta": (0, "greater than 0"),
    "rope_scaling": ("llama3:8,4,1,16", "LOW_FREQ_FACTOR < HIGH_FREQ_FACTOR"),
    "norm_eps": (-1e-5, "greater than 0"), "tie_embeddings": ("no", "bool"), "position": ("absolute", "must be"),
    "alibi_trainable": (True, "position='alibi'"), "qk_norm": (2, "bool"), "norm_placement": ("sandwich", "must be"),
    "ffn_act": ("gelu", "must be"), "canon": ("E", "ABCD"),
}


def test_the_range_table_covers_every_key():
    keys = set(train.TRAIN_KEYS) | set(train.MODEL_KEYS)
    assert set(BAD_VALUES) == keys  # a key added without a bad value here fails this test
    bools = {k for k, hint in train.TRAIN_KEYS.items() if hint is bool}
    assert set(train.VALID) == set(train.TRAIN_KEYS) - bools  # every other key has a stated range


@pytest.mark.parametrize("key", sorted(BAD_VALUES))
def test_an_out_of_range_value_is_one_line_naming_the_key(tiny_data, tmp_path, capsys, key):
    value, word = BAD_VALUES[key]
    if value == "FILE":
        value = str(tmp_path / "a_file")
        (tmp_path / "a_file").write_text("")
    out = tmp_path / "out"
    argv = run_args(tiny_data, out, "run_name=bad")
    argv = [a for a in argv if not a.startswith(f"{key}=")] + [f"{key}={value!r}" if isinstance(value, str) else
                                                                  f"{key}={value}"]
    assert run_main(train.main, argv) == 2
    line = one_error_line(capsys)
    assert key in line and word in line, line
    assert not out.exists()  # checked before anything was built


@pytest.mark.parametrize("value", ["1e999", "-1e999"])
def test_an_infinite_number_is_refused(tiny_data, tmp_path, capsys, value):
    assert run_main(train.main, run_args(tiny_data, tmp_path, "run_name=bad", f"lr={value}")) == 2
    assert "lr must be a finite number" in one_error_line(capsys)


@pytest.mark.parametrize("argv, message", [
    (["--tokens", "0"], "--tokens must be at least 1"),
    (["--tokens", "many"], "argument --tokens: invalid int value: 'many'"),
    (["--num-samples", "0"], "--num-samples must be at least 1"),
    (["--temperature", "-1"], "--temperature must be a finite number of at least 0"),
    (["--temperature", "inf"], "--temperature must be a finite number of at least 0"),
    (["--top-k", "-1"], "--top-k must be at least 0"),
    (["--device", "tpu"], "--device 'tpu' is not a device"),
    (["--tokenizer", "gpt5"], "unknown tokenizer 'gpt5'"),
    (["--tokenizer", "cl100k_base"], "the cl100k_base tokenizer has 100277 tokens but the model only 257"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_every_bad_sample_argument_is_one_line(trained, capsys, argv, message):
    assert run_main(sample.main, [str(trained / "r"), *argv]) == 2
    assert message in one_error_line(capsys)
