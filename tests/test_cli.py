"""The command lines alike: every script's mistakes end in one line "error: ..." and exit status 2 (config.run_main),
Ctrl-C in one line and 130, flags spelled with hyphens (the old underscores read with a notice), key=value on
train.py's command line applied wherever it stands, and --help showing the defaults a run would really get."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

import config
import train
from config import UserError, read_overrides, run_main
from conftest import ROOT

# (script and its arguments, what the error line says): an unknown flag, a bad value and a missing file for every
# script ({tmp}: a fresh directory; nothing is there)
BAD_ARGUMENTS = [
    (["train.py", "--bogus"], "unknown option '--bogus'"),
    (["train.py", "lr=fast"], "lr must be float, got 'fast'"),
    (["train.py", "{tmp}/nope.py"], "config file {tmp}/nope.py not found"),
    (["sample.py", "{tmp}", "--bogus"], "unrecognized arguments: --bogus"),
    (["sample.py", "{tmp}", "--tokens", "many"], "argument --tokens: invalid int value: 'many'"),
    (["sample.py", "{tmp}/run"], "no such checkpoint file or run directory: {tmp}/run"),
    (["export.py", "{tmp}", "--bogus"], "unrecognized arguments: --bogus"),
    (["export.py", "--import", "{tmp}"], "--import needs --output out/RUN_NAME"),
    (["export.py", "{tmp}/run"], "no such checkpoint file or run directory: {tmp}/run"),
    (["plot.py", "{tmp}", "--bogus"], "unrecognized arguments: --bogus"),
    (["plot.py", "{tmp}", "--smooth", "lots"], "argument --smooth: invalid int value: 'lots'"),
    (["plot.py", "{tmp}/run"], "no log.jsonl in {tmp}/run"),
    (["prepare.py", "shakespeare", "--bogus"], "unrecognized arguments: --bogus"),
    (["prepare.py", "shakespeare", "--val-fraction", "2", "--out-dir", "{tmp}"],
     "--val-fraction must be between 0 and 1, got 2.0"),
    (["prepare.py", "{tmp}/corpus.txt", "--out-dir", "{tmp}"], "{tmp}/corpus.txt"),
    (["bench.py", "optim", "--bogus"], "unrecognized arguments: --bogus"),
    (["bench.py", "optim", "--steps", "0"], "argument --steps: must be at least 1, got 0"),
    (["bench.py", "loader", "--data-dir", "{tmp}"], "{tmp}/shakespeare/meta.json not found"),
    (["gpu_check.py", "--bogus"], "unrecognized arguments: --bogus"),
    (["gpu_check.py", "--compile-mode", "fast"], "argument --compile-mode: invalid choice: 'fast'"),
    (["gpu_check.py", "--data-dir", "{tmp}"], "{tmp}/shakespeare/meta.json not found: prepare the data first"),
    (["sweep.py", "configs/quickstart.py", "lr=1e-3,3e-3", "--bogus"], "unrecognized arguments: --bogus"),
    (["model.py", "quickstart", "--bogus"], "expected key=value, got '--bogus'"),
    (["model.py", "quickstart", "dim=wide"], "dim must be int, got 'wide'"),
    (["model.py", "nopreset"], "unknown preset 'nopreset'"),
    (["lm_eval_tasks/shakespeare.py", "--bogus"], "unrecognized arguments: --bogus"),
    (["lm_eval_tasks/shakespeare.py", "--max-tokens", "8"], "--max-tokens must be at least 16, got 8"),
    (["lm_eval_tasks/shakespeare.py", "--data", "{tmp}/data"], "{tmp}/data/meta.json not found"),
]


def start(argv, tmp):
    """The script in its own process, from the repository root, with {tmp} filled in."""
    command = [sys.executable, *[a.format(tmp=tmp) for a in argv]]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))


def script_main(path):
    """The main() of a script, imported by its path (lm_eval_tasks/shakespeare.py is not on sys.path)."""
    spec = importlib.util.spec_from_file_location(Path(path).stem, ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def one_error_line(status, err, expected):
    lines = err.splitlines()
    return status == 2 and len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0]


@pytest.mark.integration  # 10 scripts in their own processes
def test_every_script_ends_a_mistake_in_one_error_line_and_status_2(tmp_path, capsys):
    """Each script's first case in its own process, as a user runs it (the import and `__main__` included, all at
    once: each process spends most of its time importing torch); the others through the same run_main, in this
    process."""
    first_of_script = {}
    for argv, message in BAD_ARGUMENTS:
        first_of_script.setdefault(argv[0], (argv, message))
    processes = [(argv, message, start(argv, tmp_path)) for argv, message in first_of_script.values()]
    failures = []
    for argv, message, process in processes:
        _, err = process.communicate(timeout=600)
        if not one_error_line(process.returncode, err, message.format(tmp=tmp_path)):
            failures.append(f"{' '.join(argv)} -> {process.returncode}: {err!r}")
    mains = {script: script_main(script) for script in first_of_script}
    for argv, message in BAD_ARGUMENTS:
        if first_of_script[argv[0]][0] is not argv:
            status = run_main(mains[argv[0]], [a.format(tmp=tmp_path) for a in argv[1:]])
            err = capsys.readouterr().err
            if not one_error_line(status, err, message.format(tmp=tmp_path)):
                failures.append(f"{' '.join(argv)} -> {status}: {err!r}")
    assert failures == []
    assert list(tmp_path.iterdir()) == []  # nothing written on the way to an error


@pytest.mark.integration  # scripts in their own processes
def test_old_underscore_flags_are_read_with_a_one_line_notice(tmp_path):
    cases = {  # the error after the notices is the next mistake: the old spellings themselves were understood
        ("sample.py", "{tmp}/run", "--top_k", "5", "--num_samples=2"):
            ["note: --top_k is spelled --top-k now", "note: --num_samples is spelled --num-samples now",
             f"error: no such checkpoint file or run directory: {tmp_path}/run"],
        ("bench.py", "optim", "--muon_steps", "0"):  # a sub-command's flag
            ["note: --muon_steps is spelled --muon-steps now",
             "error: argument --muon-steps: must be at least 1, got 0 (see --help)"],
        ("prepare.py", "shakespeare", "--val_fraction", "2", "--out_dir", "{tmp}"):
            ["note: --val_fraction is spelled --val-fraction now", "note: --out_dir is spelled --out-dir now",
             "error: --val-fraction must be between 0 and 1, got 2.0"],
    }
    processes = {argv: start(argv, tmp_path) for argv in cases}
    for argv, process in processes.items():
        _, err = process.communicate(timeout=600)
        assert (process.returncode, err.splitlines()) == (2, cases[argv]), argv


def test_flags_are_spelled_with_hyphens_and_the_old_spelling_is_noticed(capsys):
    parser = config.ArgumentParser()
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--seed", type=int)
    args = parser.parse_args(["--top_k", "3", "--seed", "1"])
    assert (args.top_k, args.seed) == (3, 1)
    assert capsys.readouterr().err == "note: --top_k is spelled --top-k now\n"
    with pytest.raises(UserError, match="unrecognized arguments: --no_such"):  # not an option in any spelling
        parser.parse_args(["--no_such", "1"])


def test_key_value_before_the_config_file_is_applied():
    quickstart = str(ROOT / "configs/quickstart.py")  # sets lr=3e-3 and dim=64
    assert read_overrides(["lr=0.5", quickstart])["lr"] == 0.5
    cfg, model_overrides = train.load_config(["lr=0.5", "dim=32", quickstart, "seq_len=64"])
    assert (cfg.lr, model_overrides["dim"], cfg.seq_len) == (0.5, 32, 64)
    assert train.load_config([quickstart, "lr=0.5"])[0].lr == 0.5  # after it, as before


def test_help_shows_the_defaults_a_run_without_a_config_gets(capsys):
    assert run_main(train.main, ["--help"]) == 0
    lines = capsys.readouterr().out.splitlines()
    preset = train.model_lib.PRESETS[train.TrainConfig.model]
    for key in ("dim", "n_layers", "n_heads", "ffn_dim", "n_kv_heads"):
        assert any(line.startswith(f"  {key} = {getattr(preset, key)!r}  # ") for line in lines), key
    assert "  dim = 128  # hidden size: width of the residual stream" in lines  # quickstart's, not ModelConfig's 768
    assert "  model = 'quickstart'  # a preset of model.PRESETS: quickstart, llama-small, llama-medium, ..." in lines


# ----------------------------------------------------------------------------- the runner itself

def test_the_runner_turns_errors_and_ctrl_c_into_one_line(capsys):
    def failing(error):
        def main(argv):
            raise error
        return main

    assert run_main(lambda argv: None, []) == 0
    assert run_main(lambda argv: 1, []) == 1
    cases = [(UserError("bad value\nsecond line"), 2, "error: bad value"),
             (FileNotFoundError(2, "No such file or directory", "/x/y"), 2, "error: /x/y: No such file or directory"),
             (OSError(28, "No space left on device"), 2, "error: No space left on device"),
             (ConnectionError("the download failed (offline?)"), 2, "error: the download failed (offline?)"),
             (KeyboardInterrupt(), 130, "interrupted"),
             (KeyboardInterrupt("3 shards are kept; rerun"), 130, "interrupted: 3 shards are kept; rerun")]
    for error, status, line in cases:
        assert run_main(failing(error), []) == status
        assert capsys.readouterr().err.splitlines() == [line]
    with pytest.raises(ValueError):  # a bug is not a user's mistake: its traceback stays
        run_main(failing(ValueError("a bug")), [])


def test_ctrl_c_while_a_run_starts_is_one_line(monkeypatch, capsys):
    def interrupted(argv):
        raise KeyboardInterrupt  # as Ctrl-C while the config is read and the run is set up

    monkeypatch.setattr(train, "load_config", interrupted)
    assert run_main(train.main, ["lr=0.1"]) == 130
    assert capsys.readouterr().err == "interrupted\n"
