"""Tests for export.py: our checkpoints exported to a Hugging Face folder load in transformers with
the same logits; the exported tokenizer encodes to prepare.py's ids and transformers' pipeline
continues a prompt as sample.py does; a transformers Llama imported back gives the same logits in
our model; the round trip keeps every tensor; non-Llama configs are refused; bad command lines end
in one line. CPU, fp32, tiny models, nothing downloaded."""

import base64
import dataclasses
import json
import shlex
import socket
import subprocess
import sys
import urllib.parse
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub.constants
import numpy as np
import pytest
import tiktoken
import torch
from torch.testing import assert_close

import data
import export
import model as model_lib
import prepare
import sample
import sources
import tokenizer as tokenizer_lib
from config import run_main
from conftest import serve
from export import export_hf, hf_incompatibility, import_hf, main
from llama import EOT_IDS, VOCAB_SIZES
from model import ModelConfig, Transformer, load_model

pytestmark = pytest.mark.integration  # exports load in transformers, tokenizers are built whole

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 97



@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # from_pretrained must read the local folder, never the Hub


def tiny_model(seed=0, **overrides):
    """A 2-layer model with weights scaled up so attention is far from uniform and every weight
    visibly changes the logits (at init scale a misplaced tensor could hide)."""
    torch.manual_seed(seed)
    config = ModelConfig(**{"vocab_size": VOCAB, "dim": 64, "n_layers": 2, "n_heads": 4, "ffn_dim": 160,
                            "rope_theta": 500.0, **overrides})
    model = Transformer(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
            elif name != "embed_tokens.weight":
                p.normal_(0.0, 0.25)
    return model


def save_run(model, run_dir, tokenizer="bytes", seq_len=128):
    """A checkpoint as train.py writes one (the fields export.py reads)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "ckpt_00000100.pt"
    torch.save({"model": model.state_dict(), "model_config": asdict(model.config), "step": 100,
                "tokenizer": tokenizer, "config": {"seq_len": seq_len, "tokenizer": tokenizer}}, path)
    return path


def token_ids(seed=3):
    return torch.randint(0, VOCAB, (2, 40), generator=torch.Generator().manual_seed(seed))


# -----------------------------------------------------------------------------------------------
# Export: transformers loads the folder and computes our logits


@pytest.mark.parametrize("n_kv_heads, tied", [(None, False), (2, True)])
def test_export_loads_in_transformers_with_same_logits(tmp_path, n_kv_heads, tied):
    from transformers import AutoModelForCausalLM

    model = tiny_model(n_kv_heads=n_kv_heads, tie_embeddings=tied)
    save_run(model, tmp_path / "run")
    main([str(tmp_path / "run")])  # default output: RUN/hf
    folder = tmp_path / "run" / "hf"
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "generation_config.json",
                                                         "model.safetensors", "small_lm.json", "tokenizer.json",
                                                         "tokenizer_config.json"]  # no log beside it: no loss.png
    config = json.loads((folder / "config.json").read_text())
    assert config["max_position_embeddings"] == 128  # the run's seq_len
    assert config["bos_token_id"] == config["eos_token_id"] == 256  # end-of-text of the bytes tokenizer
    assert json.loads((folder / "small_lm.json").read_text()) == {"tokenizer": "bytes", "eot_id": 256}

    hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    assert hf.config.num_key_value_heads == model.config.kv_heads
    assert hf.config.rope_parameters["rope_theta"] == 500.0
    assert (hf.lm_head.weight is hf.model.embed_tokens.weight) == tied
    idx = token_ids()
    with torch.no_grad():
        expected = hf(input_ids=idx).logits
        ours = model(idx)
    assert ours.abs().max() > 1.0  # not near-uniform logits, so the comparison is not vacuous
    assert_close(ours, expected, atol=1e-4, rtol=1e-4)


def test_eot_and_size_tables_match_the_tokenizers():
    for name in ("cl100k_32k", "cl100k_base", "bytes"):  # gpt2's would need a download
        enc = tokenizer_lib.load_tokenizer(name)
        assert (EOT_IDS[name], VOCAB_SIZES[name]) == (enc.eot_token, enc.n_vocab), name


# -----------------------------------------------------------------------------------------------
# The tokenizer files: transformers' tokenizer gives prepare.py's ids, its pipeline sample.py's text


def gpt2_encoding():
    """tiktoken's gpt2 where it loads (its files are downloaded once); offline, a stand-in with gpt2's own regex and
    special-token id over cl100k's first 50,256 ranks, so the conversion of gpt2's regex is still what is tested."""
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception:
        from tiktoken_ext.openai_public import r50k_pat_str
        ranks = {piece: rank for piece, rank in tokenizer_lib.load_tokenizer("cl100k_base")._mergeable_ranks.items()
                 if rank < 50256}
        return tiktoken.Encoding("gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                                 special_tokens={tokenizer_lib.EOT: 50256})


@pytest.fixture
def every_tokenizer_offline(monkeypatch):
    monkeypatch.setitem(tiktoken.registry.ENCODINGS, "gpt2", gpt2_encoding())
    tokenizer_lib.load_tokenizer.cache_clear()
    yield
    tokenizer_lib.load_tokenizer.cache_clear()


def exported_tokenizer(tmp_path, tokenizer):
    """AutoTokenizer of a tiny model's export made with `tokenizer` (embedding rows for every token id)."""
    from transformers import AutoTokenizer
    model = tiny_model(vocab_size=VOCAB_SIZES[tokenizer], dim=16, n_heads=2, ffn_dim=32, tie_embeddings=True)
    save_run(model, tmp_path / "run", tokenizer=tokenizer)
    main([str(tmp_path / "run")])
    return AutoTokenizer.from_pretrained(tmp_path / "run" / "hf")


@pytest.mark.parametrize("tokenizer", tokenizer_lib.TOKENIZERS)
def test_the_exported_tokenizer_gives_the_ids_prepare_wrote(tmp_path, every_tokenizer_offline, tokenizer):
    out = prepare.prepare("shakespeare", tokenizer=tokenizer, workers=2, out_dir=str(tmp_path / "data"))
    meta = data.read_meta(out)
    val = np.fromfile(out / "val.bin", dtype=meta["dtype"]).astype(np.int64)
    # val.bin is each val document's ids followed by end-of-text, in corpus order
    ends = np.flatnonzero(val == meta["eot_id"])
    written = [ids.tolist() for ids in np.split(val, ends + 1)[:-1]]
    is_val = prepare.plan_split("shakespeare", "text", meta["val_fraction"])[0]
    texts = [text for key, text in sources.documents("shakespeare") if is_val(key)]
    assert len(texts) == len(written) == meta["val"]["documents"] >= 2

    hf = exported_tokenizer(tmp_path, tokenizer)
    assert (hf.bos_token_id, hf.eos_token_id) == (meta["eot_id"], meta["eot_id"])
    for text, ids in zip(texts, written):
        assert hf(text, add_special_tokens=False).input_ids + [meta["eot_id"]] == ids
        assert hf(text).input_ids == [meta["eot_id"]] + ids[:-1]  # a document as training reads it: end-of-text first
        assert hf.decode(ids[:-1]).encode("utf-8") == text.encode("utf-8")


def test_awkward_text_encodes_as_tiktoken_does(tmp_path, every_tokenizer_offline):
    """Text the corpus lacks: digit runs, contractions, CRLF, trailing spaces, emoji, invalid-looking bytes."""
    texts = ["12345 1234567 3.14159 2000.", "I'LL we've THEY'RE 'tis", "a\r\n\r\nb  \n  \t x   ", "  leading",
             "naïve café 日本語 🙂🙂 \u200b", "trailing space ", "!!!???...,,,;;;"]
    for tokenizer in tokenizer_lib.TOKENIZERS:
        hf = exported_tokenizer(tmp_path / tokenizer, tokenizer)
        enc = tokenizer_lib.load_tokenizer(tokenizer)
        for text in texts:
            assert hf(text, add_special_tokens=False).input_ids == enc.encode_ordinary(text), (tokenizer, text)


@pytest.mark.parametrize("tokenizer", ["bytes", "cl100k_32k"])
def test_the_pipeline_continues_a_prompt_as_sample_does(tmp_path, capsys, tokenizer):
    from transformers import pipeline
    model = tiny_model(vocab_size=VOCAB_SIZES[tokenizer])
    save_run(model, tmp_path / "run", tokenizer=tokenizer)
    main([str(tmp_path / "run")])
    prompt, new_tokens = "ROMEO: what", 40
    capsys.readouterr()
    assert sample.main([str(tmp_path / "run"), "--prompt", prompt, "--tokens", str(new_tokens),
                        "--temperature", "0"]) == 0
    sample_text = capsys.readouterr().out.split("-----\n", 1)[1].removesuffix("\n")

    generate = pipeline("text-generation", model=str(tmp_path / "run" / "hf"), device="cpu")
    out = generate(prompt, max_new_tokens=new_tokens, do_sample=False, return_tensors=True)[0]["generated_token_ids"]
    enc = tokenizer_lib.load_tokenizer(tokenizer)
    prompt_ids = [enc.eot_token] + enc.encode_ordinary(prompt)
    with torch.no_grad():
        ours = model.generate(torch.tensor([prompt_ids]), new_tokens, temperature=0.0)[0].tolist()
    new_ids = ours[len(prompt_ids):]
    assert enc.eot_token not in new_ids[:-1]  # else both stop early, and the comparison would be short
    assert out == ours[:len(out)] and len(out) == len(ours)  # the pipeline stops at end-of-text as sample.py does
    assert generate(prompt, max_new_tokens=new_tokens, do_sample=False)[0]["generated_text"] == sample_text


def test_batched_generation_with_padding_gives_each_prompt_its_own_continuation(tmp_path):
    """Two prompts of different lengths, padded as transformers pads them by default with this folder (end-of-text
    on the left), generate greedily what each prompt generates alone."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    save_run(tiny_model(vocab_size=VOCAB_SIZES["bytes"]), tmp_path / "run")
    main([str(tmp_path / "run")])
    folder = tmp_path / "run" / "hf"
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.padding_side == "left" and tokenizer.pad_token_id == hf.generation_config.pad_token_id == 256
    # no max_length, which would draw a warning at every generate(max_new_tokens=...); the context still bounds it
    assert json.loads((folder / "generation_config.json").read_text()) == {
        "bos_token_id": 256, "eos_token_id": 256, "pad_token_id": 256}
    assert "pad_token_id" not in json.loads((folder / "config.json").read_text())  # no padding_idx: EOT's row trains

    prompts, new = ["ROMEO: what say you", "O"], 12
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    assert batch.attention_mask[1].tolist().count(0) == len(prompts[0]) - len(prompts[1])  # padded, on the left
    with torch.no_grad():
        together = hf.generate(**batch, max_new_tokens=new, do_sample=False)[:, -new:]
        alone = [hf.generate(**tokenizer(p, return_tensors="pt"), max_new_tokens=new, do_sample=False)[0, -new:]
                 for p in prompts]
        # padded on the right instead, the short prompt's continuation would follow its padding: not the same
        right = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="right")
        assert hf.generate(**right, max_new_tokens=new, do_sample=False)[1, -new:].tolist() != alone[1].tolist()
    assert alone[0].tolist() != alone[1].tolist()  # two different continuations, so the comparison has teeth
    for row, single in zip(together, alone):
        assert row.tolist() == single.tolist()


def gpt2_offline(monkeypatch):
    """tiktoken's gpt2 as on a machine that never downloaded it and cannot."""
    import tiktoken.load
    monkeypatch.delitem(tiktoken.registry.ENCODINGS, "gpt2", raising=False)
    monkeypatch.setattr(tiktoken.load, "read_file_cached", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    tokenizer_lib.load_tokenizer.cache_clear()


def test_a_tokenizer_that_cannot_load_leaves_the_weights_exported_with_a_warning(tmp_path, capsys, monkeypatch):
    gpt2_offline(monkeypatch)
    save_run(tiny_model(), tmp_path / "run", tokenizer="gpt2")
    main([str(tmp_path / "run")])
    tokenizer_lib.load_tokenizer.cache_clear()
    out, err = capsys.readouterr()
    assert out == f"wrote {tmp_path / 'run' / 'hf'}\n"
    assert err.splitlines() == ["warning: no tokenizer files written: the gpt2 tokenizer needs a one-time download that "
                                "failed (offline?); cl100k_32k, cl100k_base and bytes work offline"]
    assert sorted(p.name for p in (tmp_path / "run" / "hf").iterdir()) == ["README.md", "config.json",
                                                                          "generation_config.json",
                                                                          "model.safetensors", "small_lm.json"]


def test_import_reads_the_tokenizer_back(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    save_run(tiny_model(vocab_size=32000, dim=16, n_heads=2, ffn_dim=32), tmp_path / "run", tokenizer="cl100k_32k")
    main([str(tmp_path / "run")])
    # saved again by transformers (as a fine-tuning script would), without our small_lm.json
    resaved = tmp_path / "resaved"
    AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "hf").save_pretrained(resaved)
    AutoTokenizer.from_pretrained(tmp_path / "run" / "hf").save_pretrained(resaved)
    assert not (resaved / "small_lm.json").exists()
    main(["--import", str(resaved), "--output", str(tmp_path / "back")])
    assert torch.load(tmp_path / "back" / "ckpt_00000000.pt", weights_only=True)["tokenizer"] == "cl100k_32k"

    # a tokenizer that is not ours (one merge changed) is not taken for the nearest of ours: it is kept as a
    # tokenizer.json of its own (tokenizer_lib), its end-of-text the one small_lm.json gave, here transformers' eos
    spec = json.loads((resaved / "tokenizer.json").read_text())
    spec["model"]["merges"][100], spec["model"]["merges"][101] = spec["model"]["merges"][101], spec["model"]["merges"][100]
    (resaved / "tokenizer.json").write_text(json.dumps(spec))
    main(["--import", str(resaved), "--output", str(tmp_path / "foreign")])
    foreign = torch.load(tmp_path / "foreign" / "ckpt_00000000.pt", weights_only=True)
    text = (resaved / "tokenizer.json").read_text(encoding="utf-8")
    assert (foreign["tokenizer"], foreign["tokenizer_json"]) == (tokenizer_lib.file_name(text), text)
    assert foreign["eot_id"] == 31999


def test_import_of_a_gpt2_sized_tokenizer_offline_keeps_the_file(tmp_path, capsys, monkeypatch,
                                                                 every_tokenizer_offline):
    """gpt2 cannot be built to compare with: the folder's tokenizer.json is kept as a tokenizer of its own, not
    taken for gpt2 unchecked."""
    exported_tokenizer(tmp_path, "gpt2")  # made while gpt2 loads (here: the offline stand-in)
    gpt2_offline(monkeypatch)
    main(["--import", str(tmp_path / "run" / "hf"), "--output", str(tmp_path / "back")])
    text = (tmp_path / "run" / "hf" / "tokenizer.json").read_text(encoding="utf-8")
    back = torch.load(tmp_path / "back" / "ckpt_00000000.pt", weights_only=True)
    assert (back["tokenizer"], back["eot_id"]) == (tokenizer_lib.file_name(text), EOT_IDS["gpt2"])
    assert f"tokenizer: {tokenizer_lib.file_name(text)}" in capsys.readouterr().out


def test_a_damaged_tokenizer_file_is_one_line_and_imports_nothing(tmp_path, capsys):
    save_run(tiny_model(), tmp_path / "run")
    main([str(tmp_path / "run")])
    tokenizer_json = tmp_path / "run" / "hf" / "tokenizer.json"
    tokenizer_json.write_bytes(tokenizer_json.read_bytes()[:1000])  # cut short, as by a full disk
    line = run_main_error(["--import", str(tmp_path / "run" / "hf"), "--output", str(tmp_path / "back")], capsys)
    assert line.startswith(f"error: {tokenizer_json} is not valid JSON (")
    assert line.endswith("); remove it to import the weights without a tokenizer")
    assert not (tmp_path / "back").exists()


# -----------------------------------------------------------------------------------------------
# The model card: README.md, with the run's eval and its loss curve


def save_logged_run(run_dir, data_dir, steps=(25, 30)):
    """A run directory as train.py leaves one: checkpoints at `steps` recording the resolved config (train.py's keys
    with "auto" resolved, then the model's), config.json, and a log of 128 tokens a step: a train line every 5
    steps, an eval every 10."""
    import train
    model = tiny_model(vocab_size=VOCAB_SIZES["bytes"], dim=16, n_heads=2, ffn_dim=32, attn="sdpa")
    cfg = train.TrainConfig(run_name="card", out_dir=str(run_dir.parent), data="tiny", data_dir=str(data_dir),
                            seq_len=32, batch_size=4, total_tokens=0.004, lr=3e-3, device="cpu", dtype="fp32",
                            attn="sdpa", compile_mode="default", sample_prompts=("ROMEO:", "it's"))
    config = asdict(cfg) | asdict(model.config) | {"world_size": 1}
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(config))
    for step in steps:
        torch.save({"model": model.state_dict(), "model_config": asdict(model.config), "step": step,
                    "tokens": 128 * step, "tokenizer": "bytes", "config": config}, run_dir / f"ckpt_{step:08d}.pt")
    log = [{"step": s, "tokens": 128 * s, "loss": 5.0 - s / 10, "lr": 3e-3, "time": float(s)} for s in range(5, 31, 5)]
    log += [{"step": s, "tokens": 128 * s, "eval_loss": 5.5 - s / 10, "eval_bpb": 8.0 - s / 10}
            for s in (0, 10, 20, 30)]
    (run_dir / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sorted(log, key=lambda r: r["step"])))
    return config


def test_the_model_card_reports_the_run_and_its_command_trains_it_again(tmp_path):
    import train
    from huggingface_hub.repocard import metadata_load
    (tmp_path / "data" / "tiny").mkdir(parents=True)  # prepared from a Hub dataset: the card names its repo
    (tmp_path / "data" / "tiny" / "meta.json").write_text(json.dumps(  # as prepare.py writes it
        {"source": "hf://datasets/HuggingFaceTB/smollm-corpus/fineweb-edu-dedup/*.parquet",
         "repo": "HuggingFaceTB/smollm-corpus"}))
    config = save_logged_run(tmp_path / "out" / "card", tmp_path / "data")
    main([str(tmp_path / "out" / "card")])
    folder = tmp_path / "out" / "card" / "hf"
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: text-generation\ntags:\n")
    assert "datasets:\n- HuggingFaceTB/smollm-corpus\n---\n\n# card\n" in card and "license" not in card
    assert metadata_load(folder / "README.md") == {  # the front matter as huggingface_hub reads it
        "library_name": "transformers", "pipeline_tag": "text-generation", "tags": ["llama", "small-lm"],
        "datasets": ["HuggingFaceTB/smollm-corpus"]}
    counts = model_lib.parameter_summary(ModelConfig(vocab_size=257, dim=16, n_layers=2, n_heads=2, ffn_dim=32))
    for row in ["| Layers | 2 |", "| Width | 16 |", "| Key/value heads | 2 (multi-head attention) |",
                f"| Parameters | {counts['total']:,} (",
                f"| Parameters outside the embeddings | {counts['non_embedding']:,} (",
                "| Vocabulary | 257 (tokenizer `bytes`) |", "| Context | 32 tokens |",
                "- Tokens seen: 3,840 (step 30 of a 0.004M-token schedule)",
                "at step 30 (3,840 tokens):", "| eval loss (nats/token) | 2.5000 |", "| eval bits/byte | 5.0000 |",
                "![train and eval loss against tokens seen](loss.png)", 'from_pretrained("path/to/this/folder")']:
        assert row in card, row
    assert (folder / "loss.png").read_bytes().startswith(b"\x89PNG")
    assert str(tmp_path) not in card  # the machine's paths (out_dir, data_dir) are left out

    # the command, run through train.py's own reading, gives the run's config back (but the paths left out)
    command = shlex.split(card.split("## Training")[1].split("```\n")[1].replace("\\\n", " "))
    assert command[:2] == ["python", "train.py"]
    cfg, model_overrides = train.load_config(command[2:])
    expected = {k: v for k, v in config.items() if k in train.TRAIN_KEYS} | {"out_dir": "out", "data_dir": "data"}
    assert json.loads(json.dumps(asdict(cfg))) == json.loads(json.dumps(expected))
    assert model_overrides == {"dim": 16, "n_layers": 2, "n_heads": 2, "ffn_dim": 32, "rope_theta": 500.0}

    # a run from init_from says so, and its command names the weights without this machine's folders
    checkpoint = torch.load(tmp_path / "out" / "card" / "ckpt_00000030.pt", weights_only=True)
    checkpoint["config"]["init_from"] = str(tmp_path / "out" / "source" / "ckpt_00000005.pt")
    torch.save(checkpoint, tmp_path / "out" / "card" / "ckpt_00000030.pt")
    main([str(tmp_path / "out" / "card"), "--output", str(tmp_path / "from")])
    card = (tmp_path / "from" / "README.md").read_text()
    assert "The run started from the weights of `source/ckpt_00000005.pt` (init_from)" in card
    assert "init_from=source/ckpt_00000005.pt" in card and str(tmp_path) not in card

    # a checkpoint between two evals reports the eval before it
    main([str(tmp_path / "out" / "card" / "ckpt_00000025.pt"), "--output", str(tmp_path / "at25")])
    card = (tmp_path / "at25" / "README.md").read_text()
    assert "at step 20 (2,560 tokens), the last eval before this checkpoint's step 25:" in card
    assert "| eval loss (nats/token) | 3.5000 |" in card


def test_a_checkpoint_without_its_run_gets_a_card_without_a_log(tmp_path, capsys):
    save_logged_run(tmp_path / "out" / "card", tmp_path / "data")
    (tmp_path / "alone").mkdir()
    (tmp_path / "out" / "card" / "ckpt_00000030.pt").rename(tmp_path / "alone" / "ckpt_00000030.pt")
    main([str(tmp_path / "alone" / "ckpt_00000030.pt")])
    card = (tmp_path / "alone" / "hf" / "README.md").read_text()
    assert "No readable training log (log.jsonl) was beside the checkpoint" in card
    assert "- Tokens seen: 3,840" in card and "python train.py" in card  # what the checkpoint itself records
    assert not (tmp_path / "alone" / "hf" / "loss.png").exists()

    # a damaged log: the weights are still exported, the card without the log, and one warning says why
    log = tmp_path / "out" / "card" / "log.jsonl"
    log.write_text("not json\n" + log.read_text())
    capsys.readouterr()
    main([str(tmp_path / "out" / "card")])
    assert capsys.readouterr().err.splitlines() == [
        f"warning: the model card has no eval loss or curve: {log} line 1 is not valid JSON"]
    assert "No readable training log" in (tmp_path / "out" / "card" / "hf" / "README.md").read_text()


# -----------------------------------------------------------------------------------------------
# --push-to-hub: the folder uploaded by huggingface_hub itself, to a Hub on localhost


@pytest.fixture
def fake_upload_hub(monkeypatch, tmp_path):
    """A Hub on localhost that takes an upload of small files as the real one does: POST /api/repos/create, then
    /preupload (every file "regular", so that its bytes travel base64 in the commit rather than by LFS or Xet), then
    /commit, whose files it keeps in hub.repos[repo_id]; huggingface_hub also asks it to check README.md's YAML
    (/api/validate-yaml: accepted) and for its registry of agents (a 404: none). hub.refuse: a status to answer repo
    creation with; hub.seen: (method, path, Authorization header) of every request."""
    import huggingface_hub.constants
    hub = SimpleNamespace(repos={}, messages=[], seen=[], refuse=None)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            path = urllib.parse.urlsplit(self.path).path
            hub.seen.append(("POST", path, self.headers.get("Authorization")))
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            repo, _, action = path.removeprefix("/api/models/").rpartition("/")[0].rpartition("/")
            if path == "/api/repos/create":
                if hub.refuse:
                    return self.reply({"error": "You don't have the rights to create a model here"}, hub.refuse)
                request = json.loads(body)
                repo_id = f"{request['organization']}/{request['name']}"
                hub.repos.setdefault(repo_id, {})
                self.reply({"url": f"{endpoint}/{repo_id}"})
            elif path == "/api/validate-yaml":
                self.reply({"errors": [], "warnings": []})
            elif action == "preupload" and repo in hub.repos:
                self.reply({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                      for f in json.loads(body)["files"]]})
            elif action == "commit" and repo in hub.repos:
                for line in map(json.loads, body.splitlines()):
                    if line["key"] == "header":
                        hub.messages.append(line["value"]["summary"])
                    else:
                        assert line["key"] == "file", line  # nothing else for small files
                        hub.repos[repo][line["value"]["path"]] = base64.b64decode(line["value"]["content"])
                self.reply({"commitUrl": f"{endpoint}/{repo}/commit/{'1' * 40}", "commitOid": "1" * 40})
            else:
                self.reply({"error": "not found"}, 404)

        def do_GET(self):
            hub.seen.append(("GET", self.path, self.headers.get("Authorization")))
            self.reply({"error": "not found"}, 404)

        def reply(self, obj, status=200):
            body = json.dumps(obj).encode()
            self.send_response(status)
            if "error" in obj:  # the Hub says what went wrong in a header too
                self.send_header("X-Error-Message", obj["error"])
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server, endpoint = serve(Handler)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # the test file's offline is for loading
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token-file"))
    monkeypatch.setattr(huggingface_hub.constants, "AGENT_HARNESSES_PATH", str(tmp_path / "agents.json"), raising=False)
    monkeypatch.delenv("HF_OIDC_RESOURCE", raising=False)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    yield hub
    server.shutdown()
    server.server_close()


def test_push_to_hub_uploads_the_folder(tmp_path, capsys, fake_upload_hub):
    save_logged_run(tmp_path / "out" / "card", tmp_path / "data")
    assert run_main(main, [str(tmp_path / "out" / "card"), "--push-to-hub", "someone/tiny-card"]) == 0
    folder = tmp_path / "out" / "card" / "hf"
    assert fake_upload_hub.repos["someone/tiny-card"] == {p.name: p.read_bytes() for p in folder.iterdir()}
    assert "loss.png" in fake_upload_hub.repos["someone/tiny-card"]
    assert fake_upload_hub.messages == ["export.py: ckpt_00000030.pt (step 30)"]
    assert {auth for _, path, auth in fake_upload_hub.seen if path.startswith("/api/repos/")} == \
        {"Bearer hf_test_token"}
    assert capsys.readouterr().out.splitlines()[-1] == \
        f"pushed to {huggingface_hub.constants.ENDPOINT}/someone/tiny-card/commit/{'1' * 40}"
    assert 'from_pretrained("someone/tiny-card")' in (folder / "README.md").read_text()  # the snippet names the repo


def test_push_to_hub_mistakes_are_one_line(tmp_path, capsys, fake_upload_hub, monkeypatch):
    save_logged_run(tmp_path / "out" / "card", tmp_path / "data")
    run = str(tmp_path / "out" / "card")
    assert run_main_error([run, "--push-to-hub", "tiny-card"], capsys) == \
        "error: --push-to-hub needs a repo id owner/name (letters, digits, '-', '_', '.'), got 'tiny-card'"
    assert run_main_error(["--import", run, "--output", str(tmp_path / "o"), "--push-to-hub", "a/b"], capsys) == \
        "error: --push-to-hub pushes an export, not an --import"
    monkeypatch.delenv("HF_TOKEN")
    assert run_main_error([run, "--push-to-hub", "someone/tiny-card"], capsys) == \
        "error: --push-to-hub needs a Hugging Face token with write access: `hf auth login`, or HF_TOKEN"
    assert not (tmp_path / "out" / "card" / "hf").exists() and fake_upload_hub.seen == []  # stopped before any work

    monkeypatch.setenv("HF_TOKEN", "hf_read_only")
    fake_upload_hub.refuse = 403
    line = run_main_error([run, "--push-to-hub", "someone/tiny-card"], capsys)
    assert line == (f"error: push to someone/tiny-card failed, {tmp_path / 'out' / 'card' / 'hf'} is written: "
                    f"403 Forbidden: You don't have the rights to create a model here.")
    assert fake_upload_hub.repos == {}

    with socket.socket() as closed:  # a port no one listens on: the Hub unreachable
        closed.bind(("127.0.0.1", 0))
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{closed.getsockname()[1]}")
    line = run_main_error([run, "--push-to-hub", "someone/tiny-card", "--force"], capsys)
    assert line.startswith("error: push to someone/tiny-card failed, ") and "Connection refused" in line, line


# -----------------------------------------------------------------------------------------------
# Import: a transformers Llama becomes our checkpoint, and back


@pytest.mark.parametrize("n_kv_heads, tied", [(4, False), (2, True)])
def test_import_transformers_llama_gives_same_logits(tmp_path, n_kv_heads, tied):
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=n_kv_heads, rms_norm_eps=1e-5, tie_word_embeddings=tied,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0}, max_position_embeddings=64)
    torch.manual_seed(1)
    hf = LlamaForCausalLM._from_config(hf_config, attn_implementation="eager").eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():  # scaled up, as in tiny_model
            p.copy_(torch.rand_like(p) + 0.5 if name.endswith("norm.weight") else torch.randn_like(p) * 0.25)
    hf.save_pretrained(tmp_path / "hf")

    main(["--import", str(tmp_path / "hf"), "--output", str(tmp_path / "out" / "imported")])
    ours = load_model(tmp_path / "out" / "imported")
    checkpoint = torch.load(tmp_path / "out" / "imported" / "ckpt_00000000.pt", weights_only=True)
    assert checkpoint["tokenizer"] is None and checkpoint["step"] == 0  # no small_lm.json in this folder
    assert checkpoint["config"] == {"seq_len": 64}  # max_position_embeddings: the context sample.py keeps within
    assert ours.config.kv_heads == n_kv_heads and ours.config.tie_embeddings == tied
    assert ours.config.rope_theta == 500.0 and ours.config.norm_eps == 1e-5
    idx = token_ids()
    with torch.no_grad():
        expected = hf(input_ids=idx).logits
        got = ours(idx)
    assert expected.abs().max() > 1.0
    assert_close(got, expected, atol=1e-4, rtol=1e-4)


# Llama 3.1's scaling with a context of 16 positions (its wavelength bounds 16 and 4): at RoPE base 500 and head_dim
# 16 the 8 wavelengths (6 to 1,300 positions) fall on both sides of the bounds and between them
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 16}


@pytest.mark.parametrize("rope, scaling", [({"rope_type": "linear", "factor": 2.5}, "linear:2.5"),
                                           (LLAMA3, "llama3:8,1,4,16")])
def test_a_scaled_rope_imports_and_exports_with_transformers_logits(tmp_path, rope, scaling):
    """A transformers Llama with scaled RoPE: imported (from transformers 5's rope_parameters and from 4.x's
    rope_theta + rope_scaling), our logits are transformers'; exported again, transformers reads our folder back."""
    from transformers import LlamaConfig, LlamaForCausalLM
    hf_config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=64,
                            rope_parameters={"rope_theta": 500.0, **rope})
    torch.manual_seed(1)
    hf = LlamaForCausalLM._from_config(hf_config, attn_implementation="eager").eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():  # scaled up, as in tiny_model
            p.copy_(torch.rand_like(p) + 0.5 if name.endswith("norm.weight") else torch.randn_like(p) * 0.25)
        expected = hf(input_ids=token_ids()).logits
    hf.save_pretrained(tmp_path / "hf")
    imported, state = import_hf(tmp_path / "hf")
    unscaled = Transformer(dataclasses.replace(imported, rope_scaling="")).eval()
    unscaled.load_state_dict(state)
    with torch.no_grad():
        assert (unscaled(token_ids()) - expected).abs().max() > 1e-2  # the scaling changes the logits: it is tested
    config_path = tmp_path / "hf" / "config.json"
    v5 = json.loads(config_path.read_text())
    v4 = {k: v for k, v in v5.items() if k != "rope_parameters"} | {"rope_theta": 500.0, "rope_scaling": rope}
    for written in (v5, v4):
        config_path.write_text(json.dumps(written))
        config, state = import_hf(tmp_path / "hf")
        assert config.rope_scaling == scaling and config.rope_theta == 500.0
        ours = Transformer(config).eval()
        ours.load_state_dict(state)
        with torch.no_grad():
            assert_close(ours(token_ids()), expected, atol=1e-4, rtol=1e-4)

    save_run(ours, tmp_path / "run")
    main([str(tmp_path / "run"), "--output", str(tmp_path / "back")])
    reread = LlamaForCausalLM.from_pretrained(tmp_path / "back", attn_implementation="eager").eval()
    with torch.no_grad():
        assert_close(reread(input_ids=token_ids()).logits, expected, atol=1e-4, rtol=1e-4)


def test_round_trip_keeps_every_tensor(tmp_path):
    model = tiny_model(n_kv_heads=2, tie_embeddings=True)
    save_run(model, tmp_path / "run", tokenizer="cl100k_32k")
    main([str(tmp_path / "run"), "--output", str(tmp_path / "hf")])
    config, state = import_hf(tmp_path / "hf")
    assert config == model.config
    original = model.state_dict()
    assert state.keys() == original.keys()
    for name in original:
        assert torch.equal(state[name], original[name]), name
    main(["--import", str(tmp_path / "hf"), "--output", str(tmp_path / "back")])
    checkpoint = torch.load(tmp_path / "back" / "ckpt_00000000.pt", weights_only=True)
    assert checkpoint["tokenizer"] == "cl100k_32k"  # recorded by small_lm.json
    assert checkpoint["config"]["seq_len"] == 128  # the run's seq_len, through max_position_embeddings
    back = load_model(tmp_path / "back")
    assert back.lm_head.weight is back.embed_tokens.weight
    idx = token_ids()
    with torch.no_grad():
        assert torch.equal(back(idx), model(idx))


# -----------------------------------------------------------------------------------------------
# Refusals


def test_hf_incompatibility():
    llama = asdict(ModelConfig())
    assert hf_incompatibility(llama) is None
    assert hf_incompatibility(llama | {"attn": "eager", "n_kv_heads": 2, "tie_embeddings": True}) is None
    # a field this model.py does not know: cannot be checked, so refused
    assert "not_a_field" in hf_incompatibility(llama | {"not_a_field": True})


def test_hf_incompatibility_of_a_variant_field(monkeypatch):
    """A variant adds a field to ModelConfig: at its default the model is still a Llama; set, it is not."""
    @dataclasses.dataclass
    class VariantConfig(ModelConfig):
        alibi: bool = False  # a variant's field, off by default

    monkeypatch.setattr(export, "ModelConfig", VariantConfig)
    assert hf_incompatibility(asdict(VariantConfig())) is None
    assert hf_incompatibility(asdict(VariantConfig(alibi=True))) == "alibi=True has no Hugging Face Llama equivalent"


def test_export_refuses_a_non_llama_config(tmp_path):
    checkpoint = {"model": {}, "model_config": asdict(ModelConfig()) | {"not_a_field": True}}
    with pytest.raises(ValueError, match="cannot export to Hugging Face Llama: model_config field 'not_a_field'"):
        export_hf(checkpoint, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("change, reason", [
    ({"model_type": "mistral"}, "model_type is 'mistral', not 'llama'"),
    ({"attention_bias": True}, "attention_bias is true"),
    ({"mlp_bias": True}, "mlp_bias is true"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 500.0, "factor": 2.0}},
     "rope type is 'yarn' (this model holds default, linear, llama3)"),
    ({"rope_parameters": None, "rope_scaling": {"type": "dynamic", "factor": 2.0}},  # transformers 4.x's spelling
     "rope type is 'dynamic'"),
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 500.0, "factor": 8.0}},
     "rope type 'llama3' without low_freq_factor, high_freq_factor, original_max_position_embeddings"),
    ({"hidden_act": "gelu"}, "hidden_act is 'gelu', not 'silu'"),
])
def test_import_refuses_non_plain_llama(tmp_path, capsys, change, reason):
    save_run(tiny_model(), tmp_path / "run")
    main([str(tmp_path / "run"), "--output", str(tmp_path / "hf")])
    config_path = tmp_path / "hf" / "config.json"
    config_path.write_text(json.dumps(json.loads(config_path.read_text()) | change))
    assert run_main(main, ["--import", str(tmp_path / "hf"), "--output", str(tmp_path / "out")]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("error: not a plain Llama model: ") and reason in line, line
    assert not (tmp_path / "out").exists()


# -----------------------------------------------------------------------------------------------
# Command-line errors: one line, exit 2, nothing overwritten


def run_main_error(argv, capsys):
    assert run_main(main, argv) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


def test_command_line_errors(tmp_path, capsys):
    assert run_main_error([str(tmp_path / "missing")], capsys) == \
        f"error: no such checkpoint file or run directory: {tmp_path / 'missing'}"
    (tmp_path / "empty_run").mkdir()
    assert run_main_error([str(tmp_path / "empty_run")], capsys) == \
        f"error: no checkpoint (ckpt_*.pt) in run directory {tmp_path / 'empty_run'}"
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    assert run_main_error([str(tmp_path / "bad.pt")], capsys).startswith(f"error: cannot read checkpoint {tmp_path / 'bad.pt'}")
    assert run_main_error([], capsys).startswith("error: give a run directory")
    assert run_main_error(["--import", str(tmp_path)], capsys) == "error: --import needs --output out/RUN_NAME"
    assert run_main_error(["--import", str(tmp_path / "nope"), "--output", str(tmp_path / "o")], capsys) == \
        f"error: no such Hugging Face folder: {tmp_path / 'nope'}"
    assert run_main_error(["--import", str(tmp_path / "empty_run"), "--output", str(tmp_path / "o")], capsys) == \
        f"error: no config.json in {tmp_path / 'empty_run'}"


def test_existing_output_is_refused_unless_forced(tmp_path, capsys):
    first, second = tiny_model(seed=0), tiny_model(seed=1)
    save_run(first, tmp_path / "run")
    output = tmp_path / "hf"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    assert run_main_error([str(tmp_path / "run"), "--output", str(output)], capsys) == \
        f"error: output directory {output} exists and is not empty (--force replaces it)"
    assert (output / "keep.txt").read_text() == "mine"

    # --force replaces an earlier export, never a folder holding anything else
    assert run_main_error([str(tmp_path / "run"), "--output", str(output), "--force"], capsys).startswith(
        f"error: {output} holds keep.txt, not written by export.py: --force replaces only")
    assert (output / "keep.txt").read_text() == "mine"
    (output / "keep.txt").unlink()
    main([str(tmp_path / "run"), "--output", str(output)])
    save_run(second, tmp_path / "run2")
    main([str(tmp_path / "run2" / "ckpt_00000100.pt"), "--output", str(output), "--force"])
    config, state = import_hf(output)
    assert torch.equal(state["norm.weight"], second.state_dict()["norm.weight"])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folders left


def test_command_runs_as_a_script(tmp_path, capsys):
    save_run(tiny_model(), tmp_path / "run")
    ok = subprocess.run([sys.executable, "export.py", str(tmp_path / "run")], cwd=ROOT, text=True,
                        capture_output=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == f"wrote {tmp_path / 'run' / 'hf'}"
    assert run_main(export.main, [str(tmp_path / "run")]) == 2  # the same again, in this process
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"error: output directory {tmp_path / 'run' / 'hf'} exists and is not empty (--force replaces it)"]
