"""Tests for prepare.py on any Hub dataset repo OWNER/NAME (sources.select_repo_files): the configs and splits of a
dataset card's YAML header in each of the Hub's forms, the layout of a repo without them, gzipped JSON lines, and the
one-line errors. Read from mirrors here; tests/test_hub_cache.py serves such a repo the way the Hub does."""

import gzip
import json
import random

import pytest

import data
import prepare
import sources
import tokenizer as tokenizer_lib
from config import run_main
from conftest import expected_documents, random_texts, read_shards, shards_written, write_parquet

WIKITEXT_CARD = """---
language:
- en
configs:
- config_name: wikitext-103-raw-v1
  data_files:
  - split: test
    path: wikitext-103-raw-v1/test-*
  - split: train
    path: wikitext-103-raw-v1/train-*
- config_name: wikitext-2-raw-v1
  data_files:
  - split: train
    path: wikitext-2-raw-v1/train-*
  - split: validation
    path: wikitext-2-raw-v1/validation-*
---
# WikiText
"""


def listed(*paths):
    return [sources.ListedFile(p, 1, p) for p in paths]


def write_card(path, card):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(card)
    return sources.card_configs(path)


def chosen(files, configs, config=None, split="train"):
    return [f.path for f in sources.select_repo_files("o/r", files, configs, config, split)[0]]


def test_the_cards_configs_in_each_of_the_hubs_forms(tmp_path):
    files = listed("README.md", "wikitext-2-raw-v1/train-00000-of-00002.parquet",
                   "wikitext-2-raw-v1/train-00001-of-00002.parquet", "wikitext-2-raw-v1/validation-00000-of-00001.parquet",
                   "wikitext-103-raw-v1/train-00000-of-00001.parquet", "wikitext-103-raw-v1/test-00000-of-00001.parquet")
    configs = write_card(tmp_path / "README.md", WIKITEXT_CARD)
    assert chosen(files, configs, "wikitext-2-raw-v1") == [f.path for f in files[1:3]]
    assert chosen(files, configs, "wikitext-2-raw-v1", "validation") == [files[3].path]
    assert chosen(files, configs, "wikitext-103-raw-v1", "test") == [files[5].path]
    # a data_files string, a list of patterns (both the train split), and a {split: patterns} map; data_dir
    forms = {"a/*.parquet": ["a/x.parquet"], "['a/x.parquet', 'b/**']": ["a/x.parquet", "b/c/d.jsonl.gz"],
             "{train: [b/*/*.jsonl.gz], test: a/*}": ["b/c/d.jsonl.gz"]}
    files = listed("a/x.parquet", "a/y.csv", "b/c/d.jsonl.gz", "e/f.parquet")
    for data_files, expected in forms.items():
        configs = write_card(tmp_path / "README.md", f"---\nconfigs:\n- config_name: x\n  data_files: {data_files}\n---\n")
        assert chosen(files, configs) == expected, data_files  # the only config is the default
    configs = write_card(tmp_path / "README.md", "---\nconfigs:\n- config_name: x\n  data_dir: b\n"
                                                 "  data_files: '**/*.jsonl.gz'\n---\n")
    assert chosen(files, configs) == ["b/c/d.jsonl.gz"]
    # several configs: the one marked default, else the one named default, else the user must choose
    card = "---\nconfigs:\n- config_name: one\n  data_files: a/*\n- config_name: {}\n  data_files: e/*\n{}---\n"
    assert chosen(files, write_card(tmp_path / "README.md", card.format("two", "  default: true\n"))) == ["e/f.parquet"]
    assert chosen(files, write_card(tmp_path / "README.md", card.format("default", ""))) == ["e/f.parquet"]
    with pytest.raises(ValueError, match="^o/r has configs one, two: choose one with --config$"):
        chosen(files, write_card(tmp_path / "README.md", card.format("two", "")))


def test_a_repo_without_configs_is_read_by_its_layout():
    # split words in file names; the rest of the repo (its card, a script, a csv) is no data
    files = listed("README.md", "data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet",
                   "data/validation-00000-of-00001.parquet", "loader.py", ".hidden/train.parquet")
    assert chosen(files, []) == [f.path for f in files[1:3]]
    assert chosen(files, [], split="validation") == [files[3].path]
    # no split word anywhere: all of it is train
    assert chosen(listed("part-1.jsonl", "part-2.jsonl.gz"), []) == ["part-1.jsonl", "part-2.jsonl.gz"]
    # the Hub's converted parquet branch: <config>/<split>/NNNN.parquet, a folder a config
    converted = listed("default/train/0000.parquet", "default/test/0000.parquet", "small/train/0000.parquet")
    assert chosen(converted, [], "small") == ["small/train/0000.parquet"]
    assert chosen(converted, [], "default", "test") == ["default/test/0000.parquet"]


@pytest.mark.parametrize("card, config, split, message", [
    (WIKITEXT_CARD, None, "train", "has configs wikitext-103-raw-v1, wikitext-2-raw-v1: choose one with --config"),
    (WIKITEXT_CARD, "wikitext-3", "train", "has no config 'wikitext-3' (its configs: wikitext-103-raw-v1, wikitext-2"),
    (WIKITEXT_CARD, "wikitext-2-raw-v1", "test", "config 'wikitext-2-raw-v1' has no split 'test' (its splits: train, "
                                                 "validation)"),
    (None, "nope", "train", "has no config 'nope': its card declares none, and it has no folder of that name (its "
                            "folders: wikitext-103-raw-v1, wikitext-2-raw-v1)"),
    (None, None, "dev", "has no 'dev' files (its splits: test, train, validation)"),
    ("---\nconfigs:\n- data_files: '*.csv'\n---\n", None, "train", "no .parquet or .jsonl(.gz) files in o/r (config "
                                                                   "default, split train: *.csv); it has .csv"),
    ("---\nconfigs: [\n---\n", None, "train", "README.md: its YAML header does not parse"),
    ("---\nconfigs:\n- data_files: {train: 3}\n---\n", None, "train", "data_files {'train': 3} is none of the Hub's"),
])
def test_what_a_repo_does_not_have_is_one_line(tmp_path, card, config, split, message):
    files = listed("wikitext-2-raw-v1/train-0.parquet", "wikitext-2-raw-v1/validation-0.parquet",
                   "wikitext-103-raw-v1/test-0.parquet", "table.csv")
    with pytest.raises(ValueError) as error:
        configs = [] if card is None else write_card(tmp_path / "README.md", card)
        sources.select_repo_files("o/r", files, configs, config, split)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_glob_patterns_stay_in_their_folder():
    assert sources.glob_regex("data/*").fullmatch("data/a.parquet")
    assert not sources.glob_regex("data/*").fullmatch("data/x/a.parquet")
    assert sources.glob_regex("data/**").fullmatch("data/x/y/a.parquet")
    assert sources.glob_regex("**/train-*").fullmatch("train-0.parquet")
    assert sources.glob_regex("data/train-0000[0-1]-of-?.parquet").fullmatch("data/train-00001-of-2.parquet")
    assert not sources.glob_regex("data/a.parquet").fullmatch("data/aXparquet")  # a dot is a dot


def assert_shards_hold(out, meta, texts, val_fraction):
    """The shards of a bytes-tokenized prepare hold each file's documents, split by hash, in row order."""
    decoded = read_shards(out, meta, tokenizer_lib.load_tokenizer("bytes"))
    expected = expected_documents(texts, val_fraction)
    for split, is_val in (("train", False), ("val", True)):
        for i, rel in enumerate(texts):
            assert decoded[i, split] == [text for r, v, text in expected if r == rel and v == is_val]


def write_c4(root, rng, n_files=2):
    """allenai/c4's layout: en/c4-{train,validation}.NNNNN-of-01024.json.gz, JSON lines with extra fields."""
    texts = {}
    for split in ("train", "validation"):
        for i in range(n_files):
            rel = f"en/c4-{split}.{i:05d}-of-01024.json.gz"
            texts[rel] = [t for t in random_texts(rng, 40) if t]
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            with gzip.open(root / rel, "wt", encoding="utf-8") as f:
                f.writelines(json.dumps({"text": t, "timestamp": "2019-04-25T12:57:54Z", "url": "https://x.org"}) + "\n"
                             for t in texts[rel])
    (root / "README.md").write_text("---\nconfigs:\n- config_name: en\n  default: true\n  data_files:\n"
                                    "    train: en/c4-train.*.json.gz\n    validation: en/c4-validation.*.json.gz\n---\n")
    return texts


def test_a_repo_prepares_its_config_and_split(tmp_path, monkeypatch):
    """wikitext's layout (a config a folder, declared in the card) and c4's (gzipped JSON lines): each split's
    documents, in order, tokenized into shards, the name from the repo, config and split."""
    rng = random.Random(0)
    mirror = tmp_path / "wikitext"
    texts = {}
    for config in ("wikitext-2-raw-v1", "wikitext-103-raw-v1"):
        for rel in (f"{config}/train-00000-of-00002.parquet", f"{config}/train-00001-of-00002.parquet",
                    f"{config}/validation-00000-of-00001.parquet", f"{config}/test-00000-of-00001.parquet"):
            texts[rel] = random_texts(rng, 30)
            write_parquet(mirror / rel, {"text": texts[rel]})
    (mirror / "README.md").write_text(WIKITEXT_CARD)
    out = prepare.prepare("Salesforce/wikitext", None, "bytes", 0.2, 1, tmp_path / "data", mirror=mirror,
                          config="wikitext-2-raw-v1")
    assert out.name == "wikitext-wikitext-2-raw-v1"
    meta = data.read_meta(out)
    assert meta["files"] == ["wikitext-2-raw-v1/train-00000-of-00002.parquet",
                             "wikitext-2-raw-v1/train-00001-of-00002.parquet"]
    assert meta["repo"] == "Salesforce/wikitext"
    assert "config wikitext-2-raw-v1, split train: wikitext-2-raw-v1/train-*" in meta["source"]
    assert_shards_hold(out, meta, {rel: texts[rel] for rel in meta["files"]}, 0.2)
    validation = prepare.prepare("Salesforce/wikitext", None, "bytes", 0.2, 1, tmp_path / "data", mirror=mirror,
                                 config="wikitext-2-raw-v1", split="validation")
    assert validation.name == "wikitext-wikitext-2-raw-v1-validation"
    assert data.read_meta(validation)["files"] == ["wikitext-2-raw-v1/validation-00000-of-00001.parquet"]

    c4 = write_c4(tmp_path / "c4", rng)
    out = prepare.prepare("allenai/c4", None, "bytes", 0.2, 1, tmp_path / "data", mirror=tmp_path / "c4")
    meta = data.read_meta(out)
    assert out.name == "c4" and meta["files"] == [rel for rel in c4 if "train" in rel]
    # a JSON line is keyed by its line number, from 1: a row 0 that is no document puts each text at its number
    assert_shards_hold(out, meta, {rel: [None, *c4[rel]] for rel in meta["files"]}, 0.2)
    # another text field is other text: every shard is written again
    written = shards_written(monkeypatch)
    urls = prepare.prepare("allenai/c4", None, "bytes", 0.2, 1, tmp_path / "data", mirror=tmp_path / "c4",
                           text_field="url")
    assert written == meta["files"] and urls == out
    assert_shards_hold(out, data.read_meta(out), {rel: [None] + ["https://x.org"] * len(c4[rel]) for rel in meta["files"]},
                       0.2)


@pytest.mark.parametrize("args, message", [
    (["fineweb"], "no such file or directory: fineweb (looked for a local file or folder); named datasets: "
                  "shakespeare, smollm-fineweb-edu"),
    (["fineweb"], "any other Hub dataset is OWNER/NAME"),
    (["shakespeare", "--config", "x"], "--config and --split choose the files of a Hub dataset repo OWNER/NAME; "
                                       "shakespeare is not one"),
    (["tinystories", "--split", "validation"], "tinystories is a named dataset"),
    (["corpus/missing.txt"], "no such file or directory: corpus/missing.txt"),  # a local folder: never the Hub
])
def test_cli_names_what_it_looked_for(tmp_path, monkeypatch, capsys, args, message):
    (tmp_path / "corpus").mkdir()
    monkeypatch.chdir(tmp_path)
    assert run_main(prepare.main, args) == 2
    stderr = capsys.readouterr().err
    assert len(stderr.strip().splitlines()) == 1 and stderr.startswith("error: ") and message in stderr, stderr
