"""Tokenizers of your own (tokenizer.py's tokenizer.json files): prepare.py --train-tokenizer and --tokenizer PATH give
the `tokenizers` library's own ids, and such a tokenizer goes everywhere a tiktoken one does: training (checked against
the file beside the data), bits per byte, sample.py, export.py and --import. Tiny corpora, tiny models, CPU."""
import json
import math

import numpy as np
import pytest
import tokenizers
import torch
from tokenizers import models, pre_tokenizers, trainers

import data
import export
import prepare
import sample
import sources
import tokenizer as tokenizer_lib
import train
from config import run_main
from conftest import TINY, fake_smollm, read_log, write_corpus

# text a tokenizer gets wrong first: unicode, runs of whitespace, CRLF, digits, and the end-of-text token itself
AWKWARD = ["naïve café 日本語 🙂🙂 \u200b", "a\r\n\r\nb  \n  \t x   \n\n\n", "   leading and trailing   ",
           "12345 3.14159 I'LL we've", "before <|endoftext|> after</s>", "<|endoftext|>", "ÿ\x00\x7f tab\tend"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Small English-like documents, and one document of each awkward text."""
    root = write_corpus(tmp_path_factory.mktemp("tok") / "corpus", n_docs=40)
    for i, text in enumerate(AWKWARD):
        (root / f"awkward{i}.txt").write_text(text, encoding="utf-8", newline="")
    return root


def prepared(corpus, out_dir, name, **kwargs):
    return prepare.prepare(str(corpus), name=name, val_fraction=0.2, workers=1, out_dir=str(out_dir), **kwargs)


def library_stream(corpus, tokenizer_path, eot_id, split):
    """A split's token file as the `tokenizers` library writes it: each document's Tokenizer.encode ids, then
    end-of-text, in corpus order."""
    library = tokenizers.Tokenizer.from_file(str(tokenizer_path))
    is_val = prepare.plan_split(str(corpus), "text", 0.2)[0]
    ids = []
    for key, text in sources.documents(str(corpus)):
        if is_val(key) == (split == "val"):
            ids += library.encode(text).ids + [eot_id]
    return ids


def foreign_folder(corpus, folder):
    """A transformers folder whose tokenizer is not one of ours: a tiny BPE with <s> and </s> at ids 0 and 1 (the
    SentencePiece models' layout), wrapped in PreTrainedTokenizerFast and saved as a fine-tuning script would."""
    from transformers import PreTrainedTokenizerFast
    bpe = tokenizers.Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = tokenizers.decoders.ByteLevel()
    bpe.train_from_iterator((p.read_text() for p in sorted(corpus.glob("*.txt"))),
                            trainers.BpeTrainer(vocab_size=350, special_tokens=["<s>", "</s>"], show_progress=False,
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>").save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------- prepare: the library's ids


def test_a_trained_tokenizer_writes_the_librarys_own_ids(corpus, tmp_path):
    out = prepared(corpus, tmp_path, "trained", train_tokenizer=400)
    meta = data.read_meta(out)
    path = out / "tokenizer.json"
    assert meta["tokenizer"] == tokenizer_lib.file_name(path.read_text(encoding="utf-8"))
    # <|endoftext|> is a special token, the last id; the vocabulary is at most what was asked
    assert meta["eot_id"] == meta["vocab_size"] - 1 <= 399
    assert tokenizers.Tokenizer.from_file(str(path)).id_to_token(meta["eot_id"]) == "<|endoftext|>"
    for split in ("train", "val"):
        written = np.fromfile(out / f"{split}.bin", dtype=meta["dtype"]).tolist()
        assert written == library_stream(corpus, path, meta["eot_id"], split)
    enc = tokenizer_lib.of_directory(out, meta["tokenizer"], meta["eot_id"])
    library = tokenizers.Tokenizer.from_file(str(path))
    for text in AWKWARD:
        assert enc.encode_ordinary(text) == library.encode(text).ids
        assert enc.decode(enc.encode_ordinary(text)) == text  # byte-level: every text comes back whole


@pytest.mark.integration  # transformers saves the folder
def test_a_transformers_folders_tokenizer_is_found_with_its_end_of_text(corpus, tmp_path):
    folder = foreign_folder(corpus, tmp_path / "model")
    out = prepared(corpus, tmp_path / "data", "foreign", tokenizer=str(folder))  # the folder, or its file
    meta = data.read_meta(out)
    assert meta["eot_id"] == 1  # </s>
    assert (out / "tokenizer.json").read_bytes() == (folder / "tokenizer.json").read_bytes()
    for split in ("train", "val"):
        assert np.fromfile(out / f"{split}.bin", dtype=meta["dtype"]).tolist() == \
            library_stream(corpus, folder / "tokenizer.json", 1, split)


def test_a_tokenizer_without_end_of_text_asks_for_one(corpus, tmp_path, capsys):
    bpe = tokenizers.Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(["some text"], trainers.BpeTrainer(vocab_size=300, show_progress=False, special_tokens=[
        "<sep>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bpe.save(str(tmp_path / "plain.json"))
    argv = [str(corpus), "--out-dir", str(tmp_path), "--tokenizer", str(tmp_path / "plain.json")]
    assert run_main(prepare.main, argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no end-of-text special token" in err and "--eot-token TOKEN" in err
    assert run_main(prepare.main, argv + ["--eot-token", "<nope>"]) == 2
    assert "--eot-token '<nope>' is not a token of" in capsys.readouterr().err
    assert run_main(prepare.main, argv + ["--eot-token", "<sep>"]) == 0
    assert data.read_meta(tmp_path / "corpus")["eot_id"] == 0


def test_a_hub_dataset_takes_a_tokenizer_file(corpus, tmp_path):
    trained = prepared(corpus, tmp_path / "data", "trained", train_tokenizer=400)
    texts = fake_smollm(tmp_path / "mirror", n_files=2, docs_per_file=20)
    out = prepare.prepare("smollm-fineweb-edu", tokenizer=str(trained / "tokenizer.json"), val_fraction=0.3,
                          workers=1, out_dir=tmp_path / "data", mirror=tmp_path / "mirror")
    meta = data.read_meta(out)
    assert (out / "tokenizer.json").read_bytes() == (trained / "tokenizer.json").read_bytes()
    assert (meta["tokenizer"], meta["eot_id"]) == tuple(data.read_meta(trained)[k] for k in ("tokenizer", "eot_id"))
    library = tokenizers.Tokenizer.from_file(str(trained / "tokenizer.json"))
    every = [text for file_texts in texts.values() for text in file_texts if text]  # an empty one is no document
    assert meta["train"]["tokens"] + meta["val"]["tokens"] == sum(len(library.encode(t).ids) + 1 for t in every)
    assert meta["train"]["bytes"] + meta["val"]["bytes"] == sum(len(t.encode("utf-8")) for t in every)
    with pytest.raises(ValueError, match="--train-tokenizer is for the embedded corpus and local files"):
        prepare.prepare("smollm-fineweb-edu", train_tokenizer=300, out_dir=tmp_path / "data", mirror=tmp_path / "mirror")


@pytest.mark.parametrize("argv, message", [
    (["--train-tokenizer", "256"], "--train-tokenizer 256 is too small: the vocabulary holds the 256 bytes and "
                                   "end-of-text, at least 257"),
    (["--train-tokenizer", "32k"], "argument --train-tokenizer: invalid int value: '32k'"),
    (["--train-tokenizer", "300", "--tokenizer", "bytes"], "give one of them"),
    (["--tokenizer", "nowhere/tokenizer.json"], "no such file"),
    (["--tokenizer", "bytes", "--eot-token", "x"], "--eot-token names the end-of-text of a --tokenizer PATH"),
])
def test_bad_tokenizer_options_are_one_line(corpus, tmp_path, capsys, argv, message):
    assert run_main(prepare.main, [str(corpus), "--out-dir", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "corpus").exists()


# ----------------------------------------------------------------------------- everywhere a tiktoken one goes


@pytest.mark.integration  # trains, samples, exports and imports
@pytest.mark.parametrize("kind", ["trained", "transformers folder"])
def test_prepare_train_sample_export_import(corpus, tmp_path, capsys, kind):
    from transformers import AutoTokenizer
    options = {"train_tokenizer": 300} if kind == "trained" else {
        "tokenizer": str(foreign_folder(corpus, tmp_path / "model") / "tokenizer.json")}
    out = prepared(corpus, tmp_path / "data", "mine", **options)
    meta = data.read_meta(out)
    base = [*TINY, "data=mine", f"data_dir={tmp_path / 'data'}", f"out_dir={tmp_path}"]
    assert train.main([*base, "run_name=r", "max_steps=4", "eval_interval=4", "eval_iters=4",
                       "sample_prompts=['The king']"]) == 0
    checkpoint = torch.load(tmp_path / "r" / "ckpt_00000004.pt", weights_only=True)
    assert checkpoint["tokenizer"] == meta["tokenizer"] and checkpoint["eot_id"] == meta["eot_id"]
    assert checkpoint["tokenizer_json"] == (out / "tokenizer.json").read_text(encoding="utf-8")

    # bits per byte: the eval's loss over its tokens, per byte of the text (counted here from the text itself)
    is_val = prepare.plan_split(str(corpus), "text", 0.2)[0]
    val_bytes = sum(len(text.encode("utf-8")) for key, text in sources.documents(str(corpus)) if is_val(key))
    val_tokens = len(np.fromfile(out / "val.bin", dtype=meta["dtype"]))
    assert (meta["val"]["bytes"], meta["val"]["tokens"]) == (val_bytes, val_tokens)
    last = read_log(tmp_path / "r")[1][-1]
    assert last["eval_bpb"] == pytest.approx(last["eval_loss"] * val_tokens / (val_bytes * math.log(2)), rel=1e-6)

    capsys.readouterr()
    assert sample.main([str(tmp_path / "r"), "--prompt", "The king", "--tokens", "10", "--temperature", "0"]) == 0
    sampled = capsys.readouterr().out
    assert "The king" in sampled

    export.main([str(tmp_path / "r")])
    hf = tmp_path / "r" / "hf"
    assert (hf / "tokenizer.json").read_bytes() == (out / "tokenizer.json").read_bytes()  # the file itself
    eot = tokenizers.Tokenizer.from_file(str(out / "tokenizer.json")).id_to_token(meta["eot_id"])
    assert json.loads((hf / "tokenizer_config.json").read_text())["eos_token"] == eot
    assert json.loads((hf / "config.json").read_text())["eos_token_id"] == meta["eot_id"]
    card = (hf / "README.md").read_text()
    assert f"`{eot}` opens every document" in card and "which this tokenizer does not add" in card
    loaded = AutoTokenizer.from_pretrained(hf)
    for text in AWKWARD:
        assert loaded(text, add_special_tokens=False).input_ids == \
            tokenizer_lib.of_directory(out, meta["tokenizer"], meta["eot_id"]).encode_ordinary(text)

    export.main(["--import", str(hf), "--output", str(tmp_path / "back")])
    back = torch.load(tmp_path / "back" / "ckpt_00000000.pt", weights_only=True)
    assert (back["tokenizer"], back["eot_id"], back["tokenizer_json"]) == (
        meta["tokenizer"], meta["eot_id"], checkpoint["tokenizer_json"])
    capsys.readouterr()
    assert sample.main([str(tmp_path / "back"), "--prompt", "The king", "--tokens", "10", "--temperature", "0"]) == 0
    assert capsys.readouterr().out == sampled  # the same weights and tokenizer: the same greedy text

    # a run from the exported folder (init_from) on the data: the folder's tokenizer.json is the data's, by its name
    # (insisting on the tokenizer by its name in meta.json)
    assert train.main([*base, "run_name=again", "max_steps=1", f"init_from={hf}", f"tokenizer={meta['tokenizer']}"]) == 0
    # and a checkpoint that records no tokenizer decodes with a tokenizer.json named on the command line
    del back["tokenizer"], back["tokenizer_json"], back["eot_id"]
    torch.save(back, tmp_path / "bare.pt")
    capsys.readouterr()
    assert sample.main([str(tmp_path / "bare.pt"), "--tokenizer", str(out / "tokenizer.json"), "--prompt", "The king",
                        "--tokens", "10", "--temperature", "0"]) == 0
    assert capsys.readouterr().out == sampled


def test_a_replaced_tokenizer_file_is_one_line_at_training(corpus, tmp_path, capsys):
    out = prepared(corpus, tmp_path / "data", "mine", train_tokenizer=300)
    other = prepared(corpus, tmp_path / "other", "mine", train_tokenizer=280)
    (out / "tokenizer.json").write_bytes((other / "tokenizer.json").read_bytes())
    args = [*TINY, "data=mine", f"data_dir={tmp_path / 'data'}", f"out_dir={tmp_path}", "run_name=r"]
    capsys.readouterr()
    assert run_main(train.main, args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "tokenizer.json is not the tokenizer.json the data was made with" in err
    assert not (tmp_path / "r").exists()
    assert run_main(train.main, [*args, "tokenizer=mine.json"]) == 2
    assert "tokenizer='mine.json' is not one of cl100k_32k" in capsys.readouterr().err
