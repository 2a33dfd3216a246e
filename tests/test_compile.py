"""compile=True: train.py under torch.compile follows the eager run's trajectory, the model compiled whole.

One compiled run at the tiny shape of test_train.py (~45 s on 2 cores with a cold inductor cache, most of it
compiling; a few seconds when torch's on-disk cache already holds the kernels). The chunked loss is the default,
so this also compiles model.ChunkedCrossEntropy (an autograd.Function with a loop over row chunks) and sdpa with a
boolean document mask. The GPU side of compile (flex attention, bf16, max-autotune) is in test_gpu.py.
"""
import pytest
import torch
from torch._dynamo.utils import counters

import train
from conftest import read_log, run_args

# inductor's CPU back-end imports torch.utils.mkldnn, which uses torch.jit.script_method and warns (torch 2.13)
pytestmark = [pytest.mark.integration,  # compiled training
              pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")]


@pytest.fixture
def fresh_dynamo():
    """Dynamo's caches and counters empty before and after: this test counts its own graphs, and the compiled
    frames of Transformer.forward it leaves behind do not count against another test's recompile limit."""
    torch._dynamo.reset()
    counters.clear()
    yield counters
    torch._dynamo.reset()
    counters.clear()


@pytest.mark.slow
def test_compiled_training_matches_eager_for_20_steps(tiny_data, tmp_path, fresh_dynamo):
    # eval_iters=40: every eval reads the whole val split, 130 blocks, so its last batch holds 2 rows of 4
    common = run_args(tiny_data, tmp_path, "max_steps=20", "eval_interval=10", "eval_iters=40", "sample_tokens=0")
    assert train.main(common + ["run_name=eager"]) == 0
    assert not fresh_dynamo["stats"]  # nothing compiled without compile=True
    assert train.main(common + ["run_name=compiled", "compile=True"]) == 0

    # Really compiled, and whole: a graph break (an unsupported op, the autograd.Function falling back) would
    # leave parts of the model to eager Python and show up here. Two graphs, training and eval, and nothing
    # compiled after them: not for a micro-batch without a document boundary (the tiny corpus has batches of both
    # kinds), an eval's partial last batch (padded to the batch's shape), or the switches between train and eval
    # (three evals)
    assert fresh_dynamo["stats"]["unique_graphs"] == 2, dict(fresh_dynamo["stats"])
    assert not fresh_dynamo["graph_break"], dict(fresh_dynamo["graph_break"])
    recompiles = [reason for reasons in torch._dynamo.guard_failures.values() for reason in reasons]
    assert len(recompiles) == 1 and "grad_mode" in str(recompiles[0]), recompiles  # the eval graph (no_grad), once

    eager, eager_evals = read_log(tmp_path / "eager")
    compiled, compiled_evals = read_log(tmp_path / "compiled")
    assert [r["step"] for r in compiled] == list(range(1, 21))
    for a, b in zip(eager, compiled):
        assert abs(a["loss"] - b["loss"]) <= 1e-4, (a["step"], a["loss"], b["loss"])
        assert abs(a["grad_norm"] - b["grad_norm"]) <= 1e-4 * max(1.0, a["grad_norm"]), a["step"]
    assert compiled[-1]["loss"] < compiled[0]["loss"] - 1.0  # it learned: the comparison is not of two flat lines
    assert [r["step"] for r in compiled_evals] == [0, 10, 20]
    assert 130 % 4  # the eval's last batch was partial
    for a, b in zip(eager_evals, compiled_evals):  # eval runs the compiled model too, without gradients
        assert abs(a["eval_loss"] - b["eval_loss"]) <= 1e-4, (a["step"], a["eval_loss"], b["eval_loss"])
