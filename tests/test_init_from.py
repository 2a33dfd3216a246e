"""init_from: a run starts from the weights of one of our runs, of our export, or of a transformers-made Llama folder,
with a fresh optimizer and schedule; its step-0 eval is the source's; keys that contradict the weights, another
vocabulary and missing or damaged sources are one line; a resume goes on from the run's own checkpoint. CPU, tiny."""
import json
import shutil

import pytest
import torch
from torch.testing import assert_close

import export
import runs
import train
from config import run_main
from conftest import read_log, run_args
from attention import document_mask, document_positions
from model import ModelConfig, Transformer, meta_model

pytestmark = pytest.mark.integration  # runs train end to end
SHAPE_KEYS = ("dim", "n_layers", "n_heads", "ffn_dim")  # what TINY sets of a model's shape


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # transformers reads the local folder, never the Hub


@pytest.fixture(scope="module")
def source(tiny_data, tmp_path_factory):
    """A tiny run trained 5 steps (its final eval at step 5), and its export."""
    out = tmp_path_factory.mktemp("source")
    assert train.main(run_args(tiny_data, out, "run_name=source", "max_steps=5")) == 0
    export.main([str(out / "source"), "--output", str(out / "hf")])
    return out


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    """A transformers LlamaForCausalLM (random weights) of a shape our model holds: GQA, untied embeddings, its own
    RoPE base and RMSNorm epsilon, the bytes vocabulary (257) of the tests' data; and transformers' model."""
    return llama(tmp_path_factory, "llama", 0.25, vocab_size=257, hidden_size=32, intermediate_size=64,
                 num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, rms_norm_eps=1e-6, tie_word_embeddings=False,
                 rope_parameters={"rope_type": "default", "rope_theta": 500.0}, max_position_embeddings=64)


def llama(tmp_path_factory, name, std, **shape):
    """A transformers LlamaForCausalLM of this shape with random weights (std: the matrices'), saved to a folder:
    (folder, the model)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(1)
    hf = LlamaForCausalLM._from_config(LlamaConfig(**shape), attn_implementation="eager").eval()
    with torch.no_grad():
        for param_name, p in hf.named_parameters():  # norms away from 1, so that every weight changes the logits
            p.copy_(torch.rand_like(p) + 0.5 if param_name.endswith("norm.weight") else torch.randn_like(p) * std)
    folder = tmp_path_factory.mktemp(name) / "hf"
    hf.save_pretrained(folder)
    return folder, hf


def assert_same_logits(folder, hf):
    """Our model, from the folder's weights, gives transformers' logits (to fp32 rounding); returns (the Weights,
    our model)."""
    weights = runs.read_weights(folder)
    ours = meta_model(weights.config)  # no random init to pay for: every weight comes from the folder
    ours.load_state_dict(weights.state, assign=True)
    ours.eval()
    idx = torch.randint(0, hf.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = hf(input_ids=idx).logits
        assert expected.abs().max() > 1.0  # not near-uniform logits: the comparison has teeth
        assert_close(ours(idx), expected, atol=1e-5, rtol=1e-5)
    return weights, ours


def hf_logits(hf):
    """transformers' logits of packed rows, each document on its own: a 4D mask within documents, positions
    restarting at each one (as our model treats packed documents)."""
    def logits(x, doc_ids):
        within = document_mask(doc_ids)
        mask = torch.zeros(within.shape).masked_fill(~within, float("-inf"))
        return hf(input_ids=x, attention_mask=mask, position_ids=document_positions(doc_ids)).logits
    return logits


def ours_logits(model):
    return lambda x, doc_ids: model(x, doc_ids)


def eval_loss(logits_of, argv):
    """The loss per token, by logits_of(x, doc_ids), over the val rows that the eval of a run of argv reads
    (runs.open_data, eval_batches): with hf_logits, an independent reference for a run's step-0 eval."""
    cfg, overrides = train.load_config(argv)
    training_data = runs.open_data(cfg, overrides)
    loss, targets = 0.0, 0
    with torch.no_grad():
        n_rows = cfg.eval_iters * cfg.batch_size * cfg.grad_accum  # as train.evaluate, on one process
        for x, y, doc_ids, n in training_data.eval_batches("tiny", n_rows, 0, 1, cfg.batch_size):
            logits = logits_of(x, torch.zeros_like(x) if doc_ids is None else doc_ids)
            loss += torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-1,
                                                      reduction="sum").item()
            targets += n
    return loss / targets


def evals(run_dir):
    return {r["step"]: r["eval_loss"] for r in read_log(run_dir)[1]}


def error_line(capsys):
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def check_started_from(tiny_data, tmp_path, init_from, expected_eval):
    """A 2-step run from init_from: step 0 evaluates to expected_eval, and it trains on from there."""
    assert train.main(run_args(tiny_data, tmp_path, "run_name=new", f"init_from={init_from}", "max_steps=2")) == 0
    run_dir = tmp_path / "new"
    losses, _ = read_log(run_dir)
    assert [r["step"] for r in losses] == [1, 2]  # step 0 onwards: a fresh step count
    assert evals(run_dir)[0] == pytest.approx(expected_eval, rel=1e-6)
    assert losses[0]["lr"] < losses[1]["lr"]  # a fresh schedule: warming up again from 0
    config = json.loads((run_dir / "config.json").read_text())
    return config, torch.load(run_dir / "ckpt_00000002.pt", weights_only=True)


def test_a_run_starts_from_the_weights_of_one_of_our_runs(tiny_data, tmp_path, source):
    config, checkpoint = check_started_from(tiny_data, tmp_path, source / "source", evals(source / "source")[5])
    assert config["init_from"] == str((source / "source" / "ckpt_00000005.pt").resolve())  # the newest checkpoint
    assert checkpoint["step"] == 2 and checkpoint["config"]["init_from"] == config["init_from"]


def test_a_run_starts_from_our_export(tiny_data, tmp_path, source):
    config, _ = check_started_from(tiny_data, tmp_path, source / "hf", evals(source / "source")[5])
    assert config["init_from"] == str((source / "hf").resolve())


def test_a_run_directory_of_an_import_trains_from_its_weights_and_then_resumes(tiny_data, tmp_path, source):
    """export.py --import writes weights without an optimizer (ckpt_00000000.pt); training that run directory
    used to end in a KeyError ('config', or 'optimizer' where it records a context). It starts from them, then
    resumes from its own checkpoints."""
    export.main(["--import", str(source / "hf"), "--output", str(tmp_path / "imported")])
    argv = run_args(tiny_data, tmp_path, "run_name=imported", "max_steps=2")
    assert train.main(argv) == 0
    assert evals(tmp_path / "imported")[0] == pytest.approx(evals(source / "source")[5], rel=1e-6)
    assert train.main(argv[:-1] + ["max_steps=4"]) == 0  # the shape comes from the run's config.json, not the preset
    assert [r["step"] for r in read_log(tmp_path / "imported")[0]] == [1, 2, 3, 4]


def test_a_run_starts_from_a_transformers_llama(tiny_data, tmp_path, llama_folder):
    folder, hf = llama_folder
    weights, _ = assert_same_logits(folder, hf)
    assert (weights.config.kv_heads, weights.config.norm_eps, weights.config.rope_theta) == (1, 1e-6, 500.0)
    assert weights.config.tie_embeddings is False and weights.context == 64 and weights.tokenizer is None

    common = run_args(tiny_data, tmp_path, f"init_from={folder}", "max_steps=2")
    assert train.main(common + ["run_name=new", "grad_accum=2"]) == 0
    config = json.loads((tmp_path / "new" / "config.json").read_text())
    assert (config["n_kv_heads"], config["norm_eps"], config["rope_theta"], config["init_from"]) == (
        1, 1e-6, 500.0, str(folder.resolve()))
    assert [r["step"] for r in read_log(tmp_path / "new")[0]] == [1, 2]
    assert evals(tmp_path / "new")[0] == pytest.approx(eval_loss(hf_logits(hf), common + ["grad_accum=2"]),
                                                         rel=1e-5)


@pytest.mark.slow
def test_a_llama_of_smollm2_135m_s_shape_gives_transformers_logits_and_eval(tiny_data, tmp_path, tmp_path_factory):
    """SmolLM2-135M's config but its vocabulary (the tests' 257 bytes for its 49,152 tokens, so that it reads the tests'
    data): 30 blocks of width 576, 9 heads sharing 3 key/value heads, a 1536-wide MLP, tied embeddings, RoPE base
    100,000, RMSNorm epsilon 1e-5; ~106M parameters, drawn with its initializer's std (0.02: larger ones blow
    activations up over 30 blocks, past fp32's rounding). Our model from the folder gives transformers' logits, and
    its loss on the eval rows of a run (what a run from it reports at step 0) is transformers'. (A run from it that
    trains: the small shape above, every test run; this shape's takes ~45 s, so it ran by hand for issue 23.)"""
    folder, hf = llama(tmp_path_factory, "smollm2", 0.02, vocab_size=257, hidden_size=576, intermediate_size=1536,
                       num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, rms_norm_eps=1e-5,
                       tie_word_embeddings=True, max_position_embeddings=8192,
                       rope_parameters={"rope_type": "default", "rope_theta": 100000.0})
    weights, ours = assert_same_logits(folder, hf)
    assert (weights.config.n_layers, weights.config.dim, weights.config.kv_heads) == (30, 576, 3)
    argv = [arg for arg in run_args(tiny_data, tmp_path, "batch_size=1", "seq_len=16", "eval_iters=2")
            if arg.split("=")[0] not in SHAPE_KEYS]  # the folder's shape
    assert eval_loss(ours_logits(ours), argv) == pytest.approx(eval_loss(hf_logits(hf), argv), rel=1e-5)


def test_mistakes_are_one_line(tiny_data, tmp_path, source, llama_folder, capsys):
    def refused(*extra):
        assert run_main(train.main, run_args(tiny_data, tmp_path, "run_name=new", "max_steps=2", *extra)) == 2
        assert not (tmp_path / "new").exists()
        return error_line(capsys)

    run_dir = source / "source"
    assert refused(f"init_from={run_dir}", "dim=64").startswith("error: dim=64 contradicts the weights of ")
    assert "(n_heads=2)" in refused(f"init_from={run_dir}", "n_heads=4")
    assert "seq_len=64 is longer than the 32 tokens" in refused(f"init_from={run_dir}", "seq_len=64")
    other_vocab = Transformer(ModelConfig(vocab_size=97, dim=32, n_layers=2, n_heads=2, ffn_dim=64))
    torch.save({"model": other_vocab.state_dict(), "model_config": vars(other_vocab.config)}, tmp_path / "v.pt")
    assert "have a 97-token vocabulary but data 'tiny' was prepared with 'bytes', a 257-token" in refused(
        f"init_from={tmp_path / 'v.pt'}")
    assert "no such checkpoint file or run directory" in refused(f"init_from={tmp_path / 'nothing'}")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    assert "cannot read checkpoint" in refused(f"init_from={tmp_path / 'bad.pt'}")
    folder = tmp_path / "scaled"
    shutil.copytree(llama_folder[0], folder)
    hf_config = json.loads((folder / "config.json").read_text())
    scaled = hf_config | {"rope_parameters": {"rope_type": "yarn", "rope_theta": 500.0, "factor": 2.0}}
    (folder / "config.json").write_text(json.dumps(scaled))
    assert refused(f"init_from={folder}").startswith(f"error: init_from={folder}: not a plain Llama model: rope type "
                                                     "is 'yarn'")


def test_a_resume_goes_on_from_the_run_s_own_checkpoint(tiny_data, tmp_path, source, capsys):
    """A run from init_from killed after its step-3 checkpoint resumes at step 3 from that checkpoint, exactly as it
    would have gone on, even with the init_from file gone."""
    start = tmp_path / "start.pt"
    shutil.copy(source / "source" / "ckpt_00000005.pt", start)
    argv = run_args(tiny_data, tmp_path, "run_name=r", f"init_from={start}", "max_steps=6", "checkpoint_interval=3")
    assert train.main(argv) == 0
    run_dir = tmp_path / "r"
    straight = torch.load(run_dir / "ckpt_00000006.pt", weights_only=True)["model"]
    (run_dir / "ckpt_00000006.pt").unlink()  # what a kill after step 3's checkpoint leaves (the log is trimmed)
    start.unlink()
    capsys.readouterr()
    assert train.main(argv) == 0
    out = capsys.readouterr().out
    assert f"init_from={start} is not applied" in out and "ckpt_00000003.pt at step 3" in out
    assert [r["step"] for r in read_log(run_dir)[0]] == [1, 2, 3, 4, 5, 6]
    resumed = torch.load(run_dir / "ckpt_00000006.pt", weights_only=True)
    for name, tensor in straight.items():
        assert torch.equal(resumed["model"][name], tensor), name
    assert resumed["config"]["init_from"] == str(start.resolve())  # the record of where its weights came from
