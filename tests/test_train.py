"""train.py end to end on a tiny byte-level corpus: outputs, resume, torchrun, bad input."""
import json
import math

import pytest
import torch
from torch._subclasses.fake_tensor import is_fake

import control
import train
from config import run_main
from conftest import ROOT, read_log, run_args, run_torchrun


@pytest.fixture(scope="module")
def two_corpora(tiny_data):
    """tiny_data plus 'tiny_b', a second byte-level corpus of other documents, for mixtures."""
    import prepare
    from conftest import write_corpus
    if not (tiny_data / "tiny_b").exists():
        corpus = write_corpus(tiny_data.parent / "corpus_b", n_docs=30, seed=1)
        prepare.prepare(str(corpus), name="tiny_b", tokenizer="bytes", val_fraction=0.1, workers=1, out_dir=str(tiny_data))
    return tiny_data


MIXED = ["data=tiny_b,tiny", "mixture=soft_sequential", "packing=best_fit"]


def test_a_run_writes_its_directory_and_learns(tiny_data, tmp_path):
    assert train.main(run_args(tiny_data, tmp_path, "run_name=r", "checkpoint_interval=10",
                               "sample_prompts=['A king', 'The sea']")) == 0
    run_dir = tmp_path / "r"
    config = json.loads((run_dir / "config.json").read_text())
    assert config["dim"] == 32 and config["vocab_size"] == 257 and config["lr"] == 3e-3
    train_lines, eval_lines = read_log(run_dir)
    steps = 4000 // (32 * 4)
    assert [r["step"] for r in train_lines] == list(range(1, steps + 1))
    for key in ("step", "tokens", "loss", "lr", "grad_norm", "tok_per_s", "time"):
        assert key in train_lines[-1]
    assert train_lines[-1]["tokens"] == steps * 32 * 4
    assert {"step", "tokens", "eval_loss", "eval_bpb"} <= set(eval_lines[-1])
    assert eval_lines[0]["step"] == 0 and eval_lines[-1]["step"] == steps
    assert eval_lines[-1]["eval_loss"] < eval_lines[0]["eval_loss"] - 1.0  # from ~ln(257) towards byte statistics
    assert train_lines[-1]["loss"] < train_lines[0]["loss"] - 1.0
    # bytes tokenizer: one token per byte except the end-of-text ones, so bits/byte ~ loss/ln 2
    assert eval_lines[-1]["eval_bpb"] == pytest.approx(eval_lines[-1]["eval_loss"] / 0.6931, rel=0.1)
    # 10, 20, 30, 31: the newest two kept, and the best by eval loss (the last eval here)
    assert sorted(p.name for p in run_dir.glob("ckpt_*.pt")) == [f"ckpt_{30:08d}.pt", f"ckpt_{steps:08d}.pt", "ckpt_best.pt"]
    best = torch.load(run_dir / "ckpt_best.pt", weights_only=True)
    assert best["step"] == steps and best["best_eval_loss"] == eval_lines[-1]["eval_loss"]
    assert eval_lines[-1]["eval_ppl"] == pytest.approx(math.exp(eval_lines[-1]["eval_loss"]))
    assert not list(run_dir.glob("*.tmp"))
    samples = (run_dir / "samples.txt").read_text()
    assert samples.startswith(f"----- sample at step {steps} 1/2 -----\nA king")  # each prompt, continued
    assert f"----- sample at step {steps} 2/2 -----\nThe sea" in samples


@pytest.mark.parametrize("precision", [
    [],                                                                   # fp32, our AdamW
    ["optimizer=torch_adamw"],
    ["dtype=bf16", "optimizer=adamw", "optimizer_state=bf16"],            # pure bf16: stochastic rounding
    ["dtype=bf16", "optimizer=adafactor", "optimizer_state=bf16"],
    ["dtype=bf16", "optimizer=muon"],
])
def test_resume_continues_the_same_trajectory(tiny_data, tmp_path, precision):
    """Stopped at step 10 and started again, a run reaches step 20 with the loss of an unstopped one.
    In pure bf16 that needs the optimizer's random generator back from the checkpoint, too."""
    assert train.main(run_args(tiny_data, tmp_path, "run_name=straight", "max_steps=20", *precision)) == 0
    assert train.main(run_args(tiny_data, tmp_path, "run_name=resumed", "max_steps=10", *precision)) == 0
    assert train.main(run_args(tiny_data, tmp_path, "run_name=resumed", "max_steps=20", *precision)) == 0
    straight, _ = read_log(tmp_path / "straight")
    resumed, resumed_evals = read_log(tmp_path / "resumed")
    assert [r["step"] for r in resumed] == list(range(1, 21))  # no step logged twice
    for a, b in zip(straight, resumed):
        assert abs(a["loss"] - b["loss"]) <= 1e-6, (a["step"], a["loss"], b["loss"])
        assert a["lr"] == b["lr"]
    assert [r["step"] for r in resumed_evals] == [0, 5, 10, 15, 20]


def test_resume_with_another_global_batch_is_refused(tiny_data, tmp_path, capsys):
    """batch_size 4 -> 8 would re-lay the schedule, which counts steps (the lr jumps back, tokens run backwards,
    data is trained twice): one line with both step sizes, the key and what to do, and nothing changed. The same
    global batch made another way (batch_size 2 x grad_accum 2) goes on."""
    assert train.main(run_args(tiny_data, tmp_path, "run_name=b", "max_steps=3")) == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "b").iterdir()}
    capsys.readouterr()
    assert run_main(train.main, run_args(tiny_data, tmp_path, "run_name=b", "max_steps=6", "batch_size=8")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "was trained with 128 tokens per step, this config makes 256 (batch_size 4 -> 8)" in err
    assert "set batch_size or grad_accum so that a step is 128 tokens again" in err and "another run_name" in err
    assert {p.name: p.read_bytes() for p in (tmp_path / "b").iterdir()} == before
    assert train.main(run_args(tiny_data, tmp_path, "run_name=b", "max_steps=6", "batch_size=2", "grad_accum=2")) == 0
    assert [r["tokens"] for r in read_log(tmp_path / "b")[0]] == [128 * step for step in range(1, 7)]


def test_torchrun_two_processes_match_one_with_grad_accum(two_corpora, tmp_path):
    """2 processes x batch 4 and 1 process x batch 4 x grad_accum 2: the same global batches, the same losses,
    here from a curriculum of two sources packed best-fit."""
    common = run_args(two_corpora, tmp_path, "max_steps=8", "eval_interval=4", "total_tokens=0.008", *MIXED)
    assert train.main(common + ["run_name=single", "grad_accum=2"]) == 0
    result = run_torchrun(common + ["run_name=ddp"])
    assert result.returncode == 0, result.stderr[-3000:]
    single, single_evals = read_log(tmp_path / "single")
    ddp, ddp_evals = read_log(tmp_path / "ddp")
    assert [r["step"] for r in ddp] == list(range(1, 9))
    for a, b in zip(single, ddp):
        assert abs(a["loss"] - b["loss"]) <= 1e-5, (a["step"], a["loss"], b["loss"])
        assert a["tokens"] == b["tokens"] and a["lr"] == b["lr"]
    for a, b in zip(single_evals, ddp_evals):
        assert abs(a["eval_loss"] - b["eval_loss"]) <= 1e-5
    assert json.loads((tmp_path / "ddp" / "config.json").read_text())["world_size"] == 2


@pytest.mark.parametrize("extra, message", [
    (["lrr=0.1"], "unknown config key 'lrr' (did you mean 'lr'?)"),
    (["batch_sise=3"], "did you mean 'batch_size'"),
    (["lr=fast"], "lr must be float, got 'fast'"),
    (["compile=3"], "compile must be bool"),
    (["n_layers=2.5"], "n_layers must be int"),
    (["sample_prompts=3"], "sample_prompts must be a list of strings, got 3"),
    (["data=nowhere"], "nowhere"),
    (["vocab_size=32000"], "vocab_size=32000 but"),
    (["tokenizer=cl100k_32k"], "tokenizer='cl100k_32k' but"),
    (["attn=flash"], "attn='flash' is not one of auto, sdpa, eager, flex"),
    (["attn=flex"], "attn='flex' trains on CUDA only (flex_attention has no backward on the CPU); use sdpa here"),
    (["data=tiny,tiny", "mixture=fixed"], "'tiny,tiny' names a source twice"),
    (["mixture=fixed", "mixture_weights=[1, 2]"], "mixture='fixed' needs one non-negative weight per data entry (1)"),
    (["packing=tight"], "packing='tight' is not one of blocks, best_fit"),
    (["configs/missing.py"], "config file configs/missing.py not found"),
    (["dtype=bf16", "optimizer=torch_adamw"], "need an optimizer with stochastic rounding (adamw, adafactor, muon), not 'torch_adamw'"),
    (["optimizer=sgd"], "optimizer='sgd' is not one of adamw, adafactor, muon, torch_adamw"),
])
def test_bad_input_is_one_line_and_exit_2(tiny_data, tmp_path, capsys, extra, message):
    assert run_main(train.main, run_args(tiny_data, tmp_path, "run_name=bad", *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err
    assert not (tmp_path / "bad").exists()  # nothing was built


def test_a_curriculum_resumes_in_the_same_order_and_logs_each_source(two_corpora, tmp_path):
    """Two sources, soft_sequential, best-fit packing: stopped at step 10 and resumed, the run follows an
    unstopped one; the log shows how far the curriculum went and each source's eval loss."""
    extra = [*MIXED, "max_steps=20", "eval_data=tiny"]
    assert train.main(run_args(two_corpora, tmp_path, "run_name=straight", *extra)) == 0
    assert train.main(run_args(two_corpora, tmp_path, "run_name=resumed", *extra[:-2], "max_steps=10", "eval_data=tiny")) == 0
    assert train.main(run_args(two_corpora, tmp_path, "run_name=resumed", *extra)) == 0
    straight, straight_evals = read_log(tmp_path / "straight")
    resumed, _ = read_log(tmp_path / "resumed")
    assert [r["loss"] for r in resumed] == [r["loss"] for r in straight]
    drawn = [(r["drawn/tiny_b"], r["drawn/tiny"]) for r in straight]
    assert [a + b for a, b in drawn] == [4 * r["step"] for r in straight]  # every example from one of them
    assert drawn[0][0] >= 3 and drawn[-1][1] > 0  # tiny_b first, then tiny takes over
    # eval_data names the pooled eval set; every source is still evaluated on its own
    assert all(r["eval_loss"] == r["eval_loss/tiny"] and "eval_loss/tiny_b" in r for r in straight_evals)
    assert train.main(run_args(two_corpora, tmp_path, "run_name=each", *MIXED, "max_steps=2")) == 0
    _, evals = read_log(tmp_path / "each")
    assert {"eval_loss/tiny", "eval_loss/tiny_b"} <= set(evals[-1])
    # the pool is the target-weighted mean of the two, so it lies between them
    low, high = sorted([evals[-1]["eval_loss/tiny"], evals[-1]["eval_loss/tiny_b"]])
    assert low <= evals[-1]["eval_loss"] <= high


def test_resuming_with_other_data_is_refused(two_corpora, tmp_path, capsys):
    """The mixture's counters in a checkpoint only mean something for the data they counted."""
    assert train.main(run_args(two_corpora, tmp_path, "run_name=d", *MIXED, "max_steps=2")) == 0
    capsys.readouterr()
    argv = run_args(two_corpora, tmp_path, "run_name=d", *MIXED, "max_steps=4", "data=tiny,tiny_b")
    assert run_main(train.main, argv) == 2
    err = capsys.readouterr().err
    assert "the data is not the checkpoint's" in err and "use another run_name" in err and err.count("\n") == 1


@pytest.mark.integration  # a script in its own process
def test_bad_input_from_the_command_line_has_no_traceback(tmp_path, capsys):
    """Through run_main, as the command runs (test_cli.py runs train.py in a process of its own)."""
    assert run_main(train.main, [str(ROOT / "configs/quickstart.py"), "batch_sise=3", f"out_dir={tmp_path}"]) == 2
    assert capsys.readouterr().err == "error: unknown config key 'batch_sise' (did you mean 'batch_size'?)\n"


def test_config_files_build_on_each_other(tmp_path):
    child = tmp_path / "child.py"
    child.write_text("from configs.quickstart import *\nlr = 0.25\nn_layers = 7\n")
    cfg, model_overrides = train.load_config([str(child), "batch_size=5"])
    assert (cfg.run_name, cfg.lr, cfg.batch_size) == ("quickstart", 0.25, 5)
    assert model_overrides == {"dim": 64, "ffn_dim": 176, "n_layers": 7}  # the quickstart's own, then the child's


def test_a_different_model_in_the_run_directory_is_refused(tiny_data, tmp_path, capsys):
    assert train.main(run_args(tiny_data, tmp_path, "run_name=m", "max_steps=2")) == 0
    assert run_main(train.main, run_args(tiny_data, tmp_path, "run_name=m", "max_steps=4", "dim=64")) == 2
    assert "holds a different model" in capsys.readouterr().err
    assert run_main(train.main, run_args(tiny_data, tmp_path, "run_name=m", "max_steps=4",
                                         "optimizer=torch_adamw")) == 2
    assert "was trained with optimizer='adamw', whose state does not carry over" in capsys.readouterr().err


def test_the_same_command_resumes_after_a_kill(tiny_data, tmp_path):
    """A run killed after its step-10 checkpoint (log lines past it, no later checkpoint) is resumed by the
    same command: the stale log lines are dropped and steps 11.. are recomputed to the same losses."""
    command = run_args(tiny_data, tmp_path, "run_name=k", "checkpoint_interval=10", "keep_checkpoints=5")
    assert train.main(command) == 0
    run_dir = tmp_path / "k"
    straight, _ = read_log(run_dir)
    for path in run_dir.glob("ckpt_*.pt"):  # what a kill at step ~15 leaves: checkpoints up to 10, log up to 15
        if path.name != f"ckpt_{10:08d}.pt":
            path.unlink()
    lines = [line for line in (run_dir / "log.jsonl").read_text().splitlines() if json.loads(line)["step"] <= 15]
    (run_dir / "log.jsonl").write_text("\n".join(lines) + '\n{"step": 16, "tok')  # killed mid-line
    assert train.main(command) == 0
    resumed, _ = read_log(run_dir)
    assert [r["step"] for r in resumed] == [r["step"] for r in straight]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in straight]  # bit-identical on CPU in fp32


# warmup 3 steps, cooldown 3 steps, then the plateau at lr/3 = 1e-3; a 10-step annealing to 1e-4
INFINITE = ["schedule=infinite", "annealing_tokens=0.00128", "cooldown_p=0.0005", "min_lr=1e-4"]


def test_annealing_started_on_resume_is_kept_by_later_resumes(tiny_data, tmp_path):
    import sched
    command = run_args(tiny_data, tmp_path, "run_name=a", *INFINITE, "total_tokens=1.0")  # a long budget: 7812 steps
    assert train.main(command + ["max_steps=12"]) == 0
    assert train.main(command + ["max_steps=17", "start_annealing=True"]) == 0  # annealing from step 12
    assert train.main(command + ["start_annealing=True"]) == 0  # resumed at 17: the start stays 12
    lines, _ = read_log(tmp_path / "a")
    assert [r["step"] for r in lines] == list(range(1, 23))  # the run ends when the annealing does: 12 + 10
    cfg, _ = train.load_config(command)
    expected = train.make_schedule(cfg, dp_size=1, annealing_start=12)
    for r in lines:  # a train line's lr is the one its update used: that of step r["step"] - 1
        assert r["lr"] == pytest.approx(sched.lr_at(r["step"] - 1, expected), rel=1e-12)
    assert lines[-1]["lr"] == pytest.approx(1 / (0.9 / 1e-4 + 0.1 / 1e-3))  # rsqrt at t = 9/10: step 21
    assert [r["lr"] for r in lines[6:13]] == [pytest.approx(1e-3)] * 7  # steps 6..12: the plateau
    assert lines[13]["lr"] < 1e-3


def test_the_anneal_command_reaches_a_running_job(tiny_data, tmp_path, monkeypatch):
    command = run_args(tiny_data, tmp_path, "run_name=f", *INFINITE, "total_tokens=1.0")
    assert train.main(command + ["max_steps=6"]) == 0
    real_read, calls = control.read, []

    def read(run_dir):  # the command arrives, as from another shell, while the job runs step 7
        calls.append(run_dir)
        if len(calls) == 2:  # the first look is at start-up, for a command left from an earlier run
            assert train.main(["control", str(run_dir), "anneal"]) == 0
        return real_read(run_dir)

    monkeypatch.setattr(control, "read", read)
    assert train.main(command) == 0
    monkeypatch.undo()
    assert not (tmp_path / "f" / "control").exists()  # consumed
    records = [json.loads(line) for line in (tmp_path / "f" / "log.jsonl").read_text().splitlines()]
    assert {"step": 7, "tokens": 7 * 128, "event": "annealing started on request; the run now ends at step 17"} in records
    lines, _ = read_log(tmp_path / "f")
    assert lines[-1]["step"] == 17 and lines[-1]["lr"] < lines[6]["lr"]
    assert train.main(command) == 0  # resumed: nothing left to do, the start was kept in the checkpoint


def test_start_annealing_needs_a_decay(tiny_data, tmp_path, capsys):
    assert run_main(train.main, run_args(tiny_data, tmp_path, "run_name=n", "start_annealing=True")) == 2
    assert "start_annealing needs schedule='infinite' or 'wsd'" in capsys.readouterr().err


def test_sample_py_from_a_run_and_its_errors(tiny_data, tmp_path, capsys):
    import sample
    assert train.main(run_args(tiny_data, tmp_path, "run_name=s", "max_steps=3")) == 0
    capsys.readouterr()
    assert sample.main([str(tmp_path / "s"), "--prompt", "The king", "--tokens", "20", "--num-samples", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("The king") == 2 and "----- sample 2/2 -----" in out
    assert run_main(sample.main, [str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.startswith("error: no such checkpoint file or run directory:")
    checkpoint = torch.load(next((tmp_path / "s").glob("ckpt_*.pt")), weights_only=True)
    checkpoint["tokenizer"] = None  # as an import from a Hugging Face folder without small_lm.json
    torch.save(checkpoint, tmp_path / "imported.pt")
    assert run_main(sample.main, [str(tmp_path / "imported.pt")]) == 2
    assert "records no tokenizer; name one with --tokenizer" in capsys.readouterr().err
    assert sample.main([str(tmp_path / "imported.pt"), "--tokenizer", "bytes", "--tokens", "5"]) == 0


def test_samples_stay_within_the_trained_context_unless_asked(tiny_data, tmp_path, capsys, monkeypatch):
    """seq_len=32: the trainer's samples (41 tokens) and sample.py's (61) never show the model a position past 31;
    sample.py --extrapolate does, and says so."""
    import model as model_lib
    import sample
    last_positions = []  # the last key position of every forward and generation step
    position_inputs = model_lib.Transformer.position_inputs

    def recording(self, positions, key_positions, *args, **kwargs):
        if not is_fake(key_positions):  # the memory estimate's step has no values
            last_positions.append(int(key_positions.max()))
        return position_inputs(self, positions, key_positions, *args, **kwargs)

    monkeypatch.setattr(model_lib.Transformer, "position_inputs", recording)
    assert train.main(run_args(tiny_data, tmp_path, "run_name=w", "max_steps=2", "sample_tokens=40")) == 0
    assert max(last_positions) == 31  # the window was filled, never passed
    capsys.readouterr()
    last_positions.clear()
    assert sample.main([str(tmp_path / "w"), "--tokens", "60"]) == 0
    assert max(last_positions) == 31 and capsys.readouterr().err == ""
    last_positions.clear()
    assert sample.main([str(tmp_path / "w"), "--tokens", "60", "--extrapolate"]) == 0
    assert max(last_positions) == 59  # every token but the last one drawn
    assert capsys.readouterr().err == "note: --extrapolate: samples run to 61 tokens, past the 32 the model was trained on\n"


CONFIGS = sorted((ROOT / "configs").glob("*.py")) + sorted((ROOT / "configs" / "mini").glob("[!_]*.py"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_every_config_loads_plans_and_is_the_reference_run_on_cuda(path, monkeypatch):
    """Each shipped experiment resolves: keys and types, its model, its schedule on 4 processes, its data names. The
    same config, unedited, is on a CUDA card with native bf16 the reference's run: flex attention (no dense document
    mask), max-autotune when it compiles, bf16 autocast; and on the CPU what it always ran: sdpa, the default mode
    and fp32."""
    import data
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 6))  # an RTX 3090
    cfg, model_overrides = train.load_config([str(path)])
    assert cfg.run_name.endswith(path.stem)
    assert train.make_schedule(cfg, dp_size=4).total_steps > 0
    data.parse_entries(cfg.data)

    on_cuda = train.for_device(cfg, torch.device("cuda", 0))
    assert (on_cuda.attn, on_cuda.compile_mode) == ("flex", "max-autotune-no-cudagraphs")
    assert on_cuda.dtype == ("bf16-mixed" if cfg.dtype == "auto" else cfg.dtype)  # pure bf16 where a config says so
    assert train.build_model_config(on_cuda, model_overrides, vocab_size=32000).attn == "flex"
    on_cpu = train.for_device(cfg, torch.device("cpu"))
    assert (on_cpu.attn, on_cpu.compile_mode) == ("sdpa", "default")
    assert on_cpu.dtype == ("fp32" if cfg.dtype == "auto" else cfg.dtype)
    assert train.build_model_config(on_cpu, model_overrides, vocab_size=32000).attn == "sdpa"
    if path == ROOT / "configs" / "default.py":  # the reference's own run compiles (the miniatures do not)
        assert on_cuda.compile


# What makes a training step wait for the device: an explicit read of a value (.item(), float(t), int(t), `if t:`
# all dispatch _local_scalar_dense), and ops whose output's size depends on the values (boolean indexing).
DEVICE_READS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default,
                torch.ops.aten.masked_select.default}


@pytest.mark.parametrize("extra", [["grad_accum=2"], ["optimizer=muon"], ["optimizer=adafactor", "dtype=bf16"]],
                         ids=["adamw", "muon", "bf16_adafactor"])
def test_a_training_step_reads_the_device_once(tiny_data, tmp_path, monkeypatch, extra):
    """At most one host synchronisation a step (on a GPU each is a stall of the queue of kernels): the step's
    values come back in one read (train.to_host), and nothing else in the step (batch, loss, clipping, the
    non-finite check, run control, our optimizers) reads the device. Counted on the CPU in the ops dispatched.
    (torch_adamw is fused on CUDA, which reads nothing; its CPU foreach path reads each step count.)"""
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountReads(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in DEVICE_READS:
                reads.append(func)
            return func(*args, **(kwargs or {}))

    reads, steps, to_host = [], [], getattr(train, "to_host", None)
    monkeypatch.setattr(train, "to_host", lambda values: reads.append("to_host") or to_host(values), raising=False)
    train_step = train.train_step

    def counted_step(run, lr):
        with CountReads():
            steps.append(train_step(run, lr))
        return steps[-1]

    monkeypatch.setattr(train, "train_step", counted_step)
    assert train.main(run_args(tiny_data, tmp_path, "max_steps=6", "sample_tokens=0", *extra)) == 0
    assert len(steps) == 6 and reads == ["to_host"] * 6, reads


def test_no_mfu_above_100_percent_from_a_bad_peak(tiny_data, tmp_path, monkeypatch):
    """A CPU's peak is measured once a process, as a run starts (runs.cpu_peak); one measured too low (here: 1
    kFLOP/s, as on a machine loaded while it measured) gives no mfu above 100% in the log: one event says why,
    and the lines after it have no mfu."""
    import runs
    runs.cpu_peak.cache_clear()
    measured = []
    monkeypatch.setattr(runs, "measured_cpu_peak", lambda: measured.append(1) or 1e3)
    try:
        assert train.main(run_args(tiny_data, tmp_path, "max_steps=3", "sample_tokens=0", "run_name=a")) == 0
        assert train.main(run_args(tiny_data, tmp_path, "max_steps=3", "sample_tokens=0", "run_name=b")) == 0
    finally:
        runs.cpu_peak.cache_clear()
    assert measured == [1]  # once for the process, not again for the second run
    for name in ("a", "b"):
        records = [json.loads(line) for line in (tmp_path / name / "log.jsonl").read_text().splitlines()]
        assert all(r.get("mfu", 0) <= 1 for r in records)
        events = [r["event"] for r in records if "event" in r]
        assert len(events) == 1 and "above 100%" in events[0] and "peak_flops=" in events[0], events
        assert not any("mfu" in r for r in records if r["step"] > 1)
