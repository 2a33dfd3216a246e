"""parallel.py under torchrun on the CPU (gloo): FSDP2 and pipelines against one process, checkpoints that move
between layouts, two nodes on one machine, what each process holds, and the combinations refused."""
import os
import re
import signal
import socket
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import export
import files
import model as model_lib
import parallel
import train
from config import UserError, run_main
from model import Transformer
from conftest import ROOT, last_step, read_log, run_args, run_torchrun, tiny, wait_for

ENV = dict(os.environ, OMP_NUM_THREADS="1")
TEN_STEPS = ["max_steps=10", "eval_interval=5", "total_tokens=0.008"]


def losses(run_dir):
    """The training losses in step order, and the eval losses by step."""
    train_lines, eval_lines = read_log(run_dir)
    return [r["loss"] for r in train_lines], {r["step"]: r["eval_loss"] for r in eval_lines}


def assert_same_losses(expected_dir, run_dir, steps=10):
    """The same loss at every step, and the same eval loss at every step the unstopped run evaluated (a run that
    stopped evaluates where it stopped too)."""
    (expected, expected_evals), (got, got_evals) = losses(expected_dir), losses(run_dir)
    assert len(got) == len(expected) == steps
    for step, (a, b) in enumerate(zip(expected, got), 1):
        assert abs(a - b) <= 1e-5, (step, a, b)
    assert expected_evals.keys() <= got_evals.keys()
    for step, loss in expected_evals.items():
        assert abs(got_evals[step] - loss) <= 1e-5, (step, loss, got_evals[step])


@pytest.fixture(scope="module")
def single(tiny_data, tmp_path_factory):
    """One process, batch 4 x grad_accum 2, for 10 steps: what every 2-process layout must reproduce, with our AdamW
    and with torch's."""
    out = tmp_path_factory.mktemp("single")
    for optimizer in ("adamw", "torch_adamw"):
        args = run_args(tiny_data, out, *TEN_STEPS, "grad_accum=2", f"optimizer={optimizer}", f"run_name={optimizer}")
        assert train.main(args) == 0
    return out


def test_fsdp_on_two_processes_matches_one_with_grad_accum(tiny_data, tmp_path, single):
    """With torch's AdamW, as an independent reference (our AdamW under fsdp: test_a_run_moves_between_layouts)."""
    optimizer = "torch_adamw"
    result = run_torchrun(run_args(tiny_data, tmp_path, *TEN_STEPS, "parallel=fsdp", f"optimizer={optimizer}",
                                   "run_name=fsdp"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es) (fsdp)" in result.stdout
    assert_same_losses(single / optimizer, tmp_path / "fsdp")
    # the samples come from the whole model, gathered: the same text as the single process wrote
    assert (tmp_path / "fsdp" / "samples.txt").read_text() == (single / optimizer / "samples.txt").read_text()


def test_pure_bf16_under_fsdp_follows_one_process(tiny_data, tmp_path):
    """bf16 weights and AdamW moments, sharded: the flat update takes each process's shards (their local sizes, not
    the whole tensors'). The rounding draws differ from one process's, so the losses agree loosely."""
    common = run_args(tiny_data, tmp_path, "max_steps=8", "eval_interval=8", "sample_tokens=0", "dtype=bf16",
                      "optimizer_state=bf16")
    assert train.main(common + ["grad_accum=2", "run_name=one"]) == 0
    result = run_torchrun(common + ["parallel=fsdp", "run_name=fsdp"])
    assert result.returncode == 0, result.stderr[-3000:]
    (one, _), (fsdp, _) = losses(tmp_path / "one"), losses(tmp_path / "fsdp")
    assert len(fsdp) == 8 and all(abs(a - b) <= 0.02 * a for a, b in zip(one, fsdp)), (one, fsdp)


def test_a_two_stage_pipeline_matches_one_process(tiny_data, tmp_path, single):
    """pp on 2 processes: 2 stages of the 2 blocks, the step's 2 micro-batches through 1f1b (gpipe: in
    test_a_run_moves_between_layouts)."""
    schedule = "1f1b"
    result = run_torchrun(run_args(tiny_data, tmp_path, *TEN_STEPS, "grad_accum=2", "parallel=pp",
                                   f"pp_schedule={schedule}", "run_name=pp"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"(pp: 2 stages x 1 replicas, {schedule})" in result.stdout
    assert_same_losses(single / "adamw", tmp_path / "pp")
    assert (tmp_path / "pp" / "samples.txt").read_text() == (single / "adamw" / "samples.txt").read_text()


def test_two_pipelines_of_two_stages_match_one_process(tiny_data, tmp_path):
    """4 processes, pp_stages=2: two pipelines whose stage replicas sum their gradients, against one process with
    the same global batch (4 rows x grad_accum 2 x 2 pipelines = 4 rows x grad_accum 4)."""
    common = run_args(tiny_data, tmp_path, *TEN_STEPS, "total_tokens=0.016")
    assert train.main(common + ["grad_accum=4", "run_name=single"]) == 0
    result = run_torchrun(common + ["grad_accum=2", "parallel=pp", "pp_stages=2", "run_name=pp"], processes=4)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(pp: 2 stages x 2 replicas, 1f1b)" in result.stdout
    assert_same_losses(tmp_path / "single", tmp_path / "pp")


LAYOUTS = {"one": None, "ddp": ["parallel=ddp"], "fsdp": ["parallel=fsdp"],
           "pp": ["parallel=pp", "grad_accum=2", "pp_schedule=gpipe"]}  # gpipe here; 1f1b, the default, on its own
# one run into and out of every layout: one->fsdp, fsdp->ddp, ddp->pp, pp->one (the step each part ends at). A ddp
# checkpoint is one process's, whole: one->fsdp stands for ddp->fsdp, and fsdp->ddp for fsdp->one
MOVES = [("one", 2), ("fsdp", 4), ("ddp", 6), ("pp", 8), ("one", 10)]


def test_a_run_moves_between_layouts(tiny_data, tmp_path, single):
    """Saved under one layout, resumed under another, four times over, a run reaches step 10 with the losses of an
    unstopped one; its checkpoints are whole models, which load_model and export.py read."""
    for layout, steps in MOVES:
        args = run_args(tiny_data, tmp_path, *TEN_STEPS, f"max_steps={steps}", "run_name=r")
        if layout == "one":
            assert train.main(args + ["grad_accum=2"]) == 0
        else:
            result = run_torchrun(args + LAYOUTS[layout])
            assert result.returncode == 0, (layout, result.stdout[-1500:], result.stderr[-3000:])
            assert layout != "pp" or "(pp: 2 stages x 1 replicas, gpipe)" in result.stdout
        assert last_step(tmp_path / "r") == steps
    assert_same_losses(single / "adamw", tmp_path / "r")
    expected = model_lib.load_model(single / "adamw").state_dict()
    for key, tensor in model_lib.load_model(tmp_path / "r").state_dict().items():
        torch.testing.assert_close(tensor, expected[key], atol=1e-5, rtol=0)
    export.main([str(tmp_path / "r"), "--output", str(tmp_path / "hf")])
    assert (tmp_path / "hf" / "model.safetensors").exists()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(args_of_node):
    """Two torchrun invocations, --nnodes=2, one process each, node ranks 0 and 1 on 127.0.0.1; their
    (return code, stdout, stderr)."""
    port = free_port()
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                               f"--node_rank={rank}", "--master_addr=127.0.0.1", f"--master_port={port}",
                               str(ROOT / "train.py"), *args_of_node(rank)], cwd=ROOT, env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    try:
        results = [node.communicate(timeout=300) for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    return [(node.returncode, out, err) for node, (out, err) in zip(nodes, results)]


def test_two_nodes_on_one_machine_match_one_process_and_resume_when_out_is_only_on_node_0(tiny_data, tmp_path,
                                                                                          single):
    """The multi-node path on one machine, out/ not shared (each node its own, here out_dir differs by node): node
    0's holds a run's first 5 steps (one process's), which both nodes resume from to step 10, with the losses of one
    process. When only node 1's holds it, the run is refused rather than started over on node 0."""
    def args(out_of_node, steps):
        return lambda rank: run_args(tiny_data, out_of_node[rank], *TEN_STEPS, f"max_steps={steps}", "run_name=r")

    node0, node1 = tmp_path / "node0", tmp_path / "node1"
    assert train.main(args([node0], 5)(0) + ["grad_accum=2"]) == 0
    results = two_nodes(args([node0, node1], 10))
    assert [code for code, _, _ in results] == [0, 0], results[0][2][-2000:] + results[1][2][-2000:]
    assert not (node1 / "r").exists()  # only rank 0 writes the run directory
    assert_same_losses(single / "adamw", node0 / "r")
    results = two_nodes(args([tmp_path / "elsewhere", node0], 10))
    assert all(code != 0 for code, _, _ in results)
    assert "finds no checkpoint" in results[0][2] and "start the node that holds it as --node_rank=0" in results[0][2]
    assert not (tmp_path / "elsewhere" / "r").exists()


def test_each_fsdp_process_holds_half_of_what_a_ddp_process_holds(tiny_data, tmp_path):
    """Weights and AdamW state, at a quarter of llama-small's blocks (dim 256, 4 blocks; the data's 257-token
    vocabulary): ~3.3M parameters. Under ddp every process holds them whole, 3 x 4 bytes a parameter (fp32 weight
    and two moments); under fsdp the fullest process holds half that, and the two together the whole."""
    shape = ["dim=256", "n_layers=4", "n_heads=4", "ffn_dim=704", "vocab_size=257", "seq_len=16", "batch_size=1",
             "max_steps=1", "eval_iters=1", "sample_tokens=0"]
    whole = 12 * model_lib.parameter_summary(model_lib.ModelConfig(dim=256, n_layers=4, n_heads=4, ffn_dim=704,
                                                                   vocab_size=257))["total"] / 2**20
    result = run_torchrun(run_args(tiny_data, tmp_path, "parallel=fsdp", "run_name=fsdp") + shape)
    assert result.returncode == 0, result.stderr[-3000:]
    fullest, total = re.search(r"weights and optimizer state: ([\d,.]+) MiB on the fullest of 2 processes \(fsdp\), "
                               r"([\d,.]+) MiB on all", result.stdout).groups()
    fullest, total = float(fullest.replace(",", "")), float(total.replace(",", ""))
    print(f"per process: ddp {whole:.1f} MiB (counted), fsdp {fullest:.1f} MiB; fsdp on both: {total:.1f} MiB")
    assert whole > 35 and abs(total - whole) <= 0.1
    assert 0.49 <= fullest / whole <= 0.51


def test_sigterm_saves_under_fsdp_and_pp_and_the_run_resumes(tiny_data, tmp_path):
    """SIGTERM to torchrun under fsdp saves the step reached; resumed from it under pp, SIGTERM saves again; the run
    then goes on in one process (the same global batch of 8 rows in every layout)."""
    args = run_args(tiny_data, tmp_path, "total_tokens=1.0", "checkpoint_interval=100000", "eval_interval=100000",
                    "run_name=t")
    run_dir, step = tmp_path / "t", 0
    for mode in (["parallel=fsdp"], ["parallel=pp", "grad_accum=2"]):
        process = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                    "--nproc_per_node=2", str(ROOT / "train.py"), *args, *mode], cwd=ROOT, env=ENV,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: last_step(run_dir) >= step + 3, what=f"3 steps under {mode[0]}")
            process.send_signal(signal.SIGTERM)
            out, err = process.communicate(timeout=120)
        finally:
            process.kill()
        assert "stopped by a signal: saved" in out and ("resuming from" in out) == (step > 0), (mode, err[-3000:])
        step = torch.load(files.step_checkpoints(run_dir)[-1], weights_only=True)["step"]
        assert step == last_step(run_dir)
    assert train.main(args + ["grad_accum=2", f"max_steps={step + 2}"]) == 0
    assert last_step(run_dir) == step + 2


@pytest.mark.parametrize("extra, message", [
    (["parallel=fsdp", "optimizer=muon"], "optimizer='muon' does not train with parallel='fsdp'"),
    (["parallel=fsdp", "optimizer=adafactor"], "optimizer='adafactor' does not train with parallel='fsdp'"),
    (["parallel=pp", "pp_stages=2", "tie_embeddings=True"], "tie_embeddings=True does not train with parallel='pp'"),
    (["parallel=pp", "pp_stages=3"], "pp_stages=3 is more stages than the model's 2 blocks"),
    (["parallel=pp", "pp_stages=2"], "pp_stages=2 does not divide the 1 processes into whole pipelines"),
    (["pp_stages=2"], "pp_stages is for parallel='pp', not parallel='ddp'"),
    (["parallel=tp"], "parallel='tp' is not one of ddp, fsdp, pp"),
    (["parallel=pp", "pp_schedule=zb"], "pp_schedule='zb' is not one of 1f1b, gpipe"),
])
def test_combinations_refused_with_one_line(tiny_data, tmp_path, capsys, extra, message):
    assert run_main(train.main, run_args(tiny_data, tmp_path, *extra)) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_compile_is_one_function_for_every_layout():
    """compile_model: under ddp the whole model, wrapped (its parameters the model's own); under fsdp and pp each
    block in place. shard hands the loop what compile_model made, for every layout, when compile=True. Lazy:
    nothing is compiled here, as nothing runs."""
    model = Transformer(tiny())
    compiled = parallel.compile_model(model, parallel.Layout("ddp"))
    assert isinstance(compiled, torch._dynamo.eval_frame.OptimizedModule) and compiled._orig_mod is model
    assert dict(compiled.named_parameters()).keys() != dict(model.named_parameters()).keys()  # why raw_model stays
    for layout in (parallel.Layout("fsdp"), parallel.Layout("pp")):  # one process: no sharding, one stage
        model = Transformer(tiny())
        assert parallel.compile_model(model, layout, "max-autotune") is model
        assert all(block._compiled_call_impl is not None for block in model.layers)
        assert model._compiled_call_impl is None  # the blocks only
    stage = parallel.StageModel(Transformer(tiny(n_layers=4)), 1, 2)  # a pipeline's second stage: blocks 2 and 3
    assert parallel.compile_model(stage, parallel.Layout("pp", stage=1, n_stages=2)) is stage
    assert all(block._compiled_call_impl is not None for block in stage.layers.values())

    on, off = SimpleNamespace(compile=True, compile_mode="default"), SimpleNamespace(compile=False)
    model = Transformer(tiny())
    part, called = parallel.shard(model, parallel.Layout("ddp"), on, "fp32")
    assert part is model and called._orig_mod is model
    part, called = parallel.shard(model := Transformer(tiny()), parallel.Layout("fsdp"), on, "fp32")
    assert part is called is model and model.layers[0]._compiled_call_impl is not None
    part, called = parallel.shard(model := Transformer(tiny()), parallel.Layout("ddp"), off, "fp32")
    assert part is called is model and model.layers[0]._compiled_call_impl is None


def test_a_checkpoint_from_before_names_resumes_and_a_pipeline_refuses_it(tiny_data, tmp_path, single):
    """Checkpoints written before parallel.py keyed the optimizer state by position, as torch does: they resume
    under one process (and ddp, fsdp) as before; a pipeline, which holds part of the model, says what to do."""
    args = run_args(tiny_data, tmp_path, *TEN_STEPS, "grad_accum=2", "run_name=old")
    assert train.main(args + ["max_steps=5"]) == 0
    path = files.step_checkpoints(tmp_path / "old")[-1]
    checkpoint = torch.load(path, weights_only=False)
    optimizer = checkpoint["optimizer"]
    index = {name: i for i, name in enumerate(n for group in optimizer["param_groups"] for n in group["params"])}
    optimizer["state"] = {index[name]: state for name, state in optimizer["state"].items()}
    optimizer["param_groups"] = [group | {"params": [index[n] for n in group["params"]]}
                                 for group in optimizer["param_groups"]]
    torch.save(checkpoint, path)
    model = model_lib.load_model(tmp_path / "old")  # a pipeline stage's resume, in this process: the refusal comes
    adamw = torch.optim.AdamW(model.parameters())   # from the saved state's form, before any stage's own part
    with pytest.raises(UserError, match="saved before parallel='pp' existed; resume it once under parallel='ddp'"):
        parallel.load_state(model, adamw, checkpoint["model"], optimizer, parallel.Layout("pp", 0, 2, n_stages=2))
    assert train.main(args) == 0
    assert_same_losses(single / "adamw", tmp_path / "old")


@pytest.mark.parametrize("position", ["rope", "alibi"])
def test_fsdp_bf16_mixed_keeps_fp32_where_ddp_does(position):
    """Under dtype=bf16-mixed, FSDP2 gathers bf16 weights but every module of the model sees inputs of the same
    dtypes as under DDP with autocast: the residual stream, RoPE's tables and ALiBi's distances stay fp32 (FSDP's
    default cast_forward_inputs would make them bf16). In this process, on a gloo group of one."""
    store = torch.distributed.HashStore()
    torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
    cfg = SimpleNamespace(compile=False, compile_mode="default")
    idx = torch.randint(1, 64, (2, 32), generator=torch.Generator().manual_seed(0))
    seen, losses, gathered = {}, {}, {}
    try:
        for mode in ("ddp", "fsdp"):
            torch.manual_seed(0)
            model = Transformer(tiny(vocab_size=64, position=position, alibi_trainable=position == "alibi"))
            # world_size=2 marks the layout sharded; fully_shard shards over the group there is, of one
            model, _ = parallel.shard(model, parallel.Layout(mode, 0, 2), cfg, "bf16-mixed")
            seen[mode] = []
            for name, module in model.named_modules():
                module.register_forward_pre_hook(
                    lambda module, args, kwargs, name=name: seen[mode].append(
                        (name, [t.dtype for t in [*args, *kwargs.values()] if torch.is_tensor(t) and t.is_floating_point()])),
                    with_kwargs=True)
            model.layers[0].self_attn.q_proj.register_forward_pre_hook(
                lambda module, args: gathered.update({mode: module.weight.dtype}))
            with torch.autocast("cpu", dtype=torch.bfloat16):
                losses[mode] = model(idx[:, :-1], targets=idx[:, 1:]).item()
    finally:
        torch.distributed.destroy_process_group()
    assert gathered == {"ddp": torch.float32, "fsdp": torch.bfloat16}  # FSDP's policy is bf16, on the CPU too
    assert seen["fsdp"] == seen["ddp"]
    inputs = dict(seen["ddp"])
    assert inputs["layers.1"][0] == torch.float32  # the residual stream into the second block
    assert set(inputs["layers.0.self_attn"][1:]) == {torch.float32}  # cos and sin, or ALiBi's distances
    assert abs(losses["fsdp"] - losses["ddp"]) <= 1e-3 * losses["ddp"]
