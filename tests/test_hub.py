"""Tests for prepare.py's Hub datasets and sources.py's repo files, read through --mirror: the repo layouts, the
shard files and markers, the hash split, --max-files / --max-tokens, resuming after a kill, bad input. The Hub
itself, served on localhost (downloads, the cache, the disk estimate, new commits): tests/test_hub_cache.py."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import data  # noqa: E402
import prepare  # noqa: E402
import sources  # noqa: E402
import tokenizer as tokenizer_lib  # noqa: E402
from config import run_main  # noqa: E402
from conftest import (COSMOPEDIA_FILE, WORDS, expected_documents, fake_smollm, key_hash,
                      kill_prepare_in_its_second_shard, random_texts, read_shards, tree, write_parquet)

pytestmark = pytest.mark.usefixtures("hf_cache")  # conftest: each test its own Hugging Face cache


def run_cli(*args, cwd, env=None):
    return subprocess.run([sys.executable, str(ROOT / "prepare.py"), *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


# -----------------------------------------------------------------------------


def test_smollm_mirror_shards_meta_and_split(tmp_path):
    files = fake_smollm(tmp_path / "mirror")
    out = prepare.prepare("smollm-fineweb-edu", None, "cl100k_32k", 0.3, 2, tmp_path / "data",
                          mirror=tmp_path / "mirror")
    assert out == tmp_path / "data" / "smollm-fineweb-edu"
    shard_files = [f"shards/0000{i}.{f}" for i in (0, 1) for f in ("json", "train.bin", "val.bin")]
    assert sorted(tree(out)) == ["meta.json"] + shard_files
    meta = data.read_meta(out)
    assert meta == json.loads((out / "meta.json").read_text())
    assert (meta["repo"], meta["revision"], meta["files"]) == ("HuggingFaceTB/smollm-corpus", "mirror", list(files))
    assert (meta["tokenizer"], meta["dtype"], meta["val_fraction"]) == ("cl100k_32k", "uint16", 0.3)
    assert meta["max_tokens"] is None

    enc = tokenizer_lib.load_tokenizer("cl100k_32k")
    decoded = read_shards(out, meta, enc)
    expected = expected_documents(files, 0.3)
    for split, is_val in (("train", False), ("val", True)):
        total = {"tokens": 0, "bytes": 0, "documents": 0}
        for i, rel in enumerate(files):
            docs = [text for r, v, text in expected if r == rel and v == is_val]
            assert decoded[i, split] == docs  # the documents of this file and split, in row order
            marker = json.loads((out / f"shards/0000{i}.json").read_text())
            assert marker["source"] == rel and marker["cut"] is False
            counts = {"tokens": sum(len(enc.encode_ordinary(d)) + 1 for d in docs),
                      "bytes": sum(len(d.encode()) for d in docs), "documents": len(docs)}
            assert marker[split] == counts
            assert meta[split]["files"][i] == [f"shards/0000{i}.{split}.bin", counts["tokens"]]
            total = {k: total[k] + counts[k] for k in total}
        assert {k: meta[split][k] for k in total} == total
    assert 0.15 < meta["val"]["documents"] / len(expected) < 0.45  # about 30% by hash; far off is a broken rule
    assert data.split_files(out, meta, "val") == [(out / "shards/00000.val.bin", meta["val"]["files"][0][1]),
                                                     (out / "shards/00001.val.bin", meta["val"]["files"][1][1])]

    # the cosmopedia subset reads its own directory of the same repo, with its extra columns ignored
    cosmo = data.read_meta(prepare.prepare("smollm-cosmopedia", None, "bytes", 0.3, 1, tmp_path / "data",
                                              mirror=tmp_path / "mirror"))
    assert cosmo["files"] == [COSMOPEDIA_FILE]
    assert cosmo["train"]["documents"] + cosmo["val"]["documents"] == 28


def test_tinystories_layouts(tmp_path):
    rng = random.Random(1)
    mirror = tmp_path / "mirror"
    parquet = {f"data/train-0000{i}-of-00004-{h}.parquet": random_texts(rng, 40)  # 2 of the real 4 files
               for i, h in enumerate(["2d5a1467fff1081b", "5852b56a2bd28fd9"])}
    for rel, texts in parquet.items():
        write_parquet(mirror / rel, {"text": texts})
    write_parquet(mirror / "data/validation-00000-of-00001-869c898b519ad725.parquet",
                  {"text": ["the official validation"] * 5})
    stories = [t for t in random_texts(rng, 30) if t]
    # as the GPT-4 file: 0-2 blank lines after a separator, and here spaces around some separators too
    separators = ["<|endoftext|>\n", "<|endoftext|>\n\n", "\n<|endoftext|>\n\n\n", "  <|endoftext|> \n", "<|endoftext|>\r\n"]
    (mirror / "TinyStoriesV2-GPT4-train.txt").write_bytes("".join(
        f"{s}\n{separators[i % len(separators)]}" for i, s in enumerate(stories)).encode())
    stories = [s.strip() for s in stories]  # what prepare keeps: each story, trimmed
    (mirror / "TinyStories-train.txt").write_text("the first version, not read\n<|endoftext|>\n")
    enc = tokenizer_lib.load_tokenizer("bytes")

    out = prepare.prepare("tinystories", None, "bytes", 0.3, 1, tmp_path / "data", mirror=mirror)
    meta = data.read_meta(out)
    assert meta["repo"] == "roneneldan/TinyStories" and meta["files"] == list(parquet)  # no validation file
    decoded = read_shards(out, meta, enc)
    expected = expected_documents(parquet, 0.3)
    for i, rel in enumerate(parquet):
        for split, is_val in (("train", False), ("val", True)):
            assert decoded[i, split] == [text for r, v, text in expected if r == rel and v == is_val]

    out = prepare.prepare("tinystories-v2", None, "bytes", 0.3, 1, tmp_path / "data", mirror=mirror)
    meta = data.read_meta(out)
    assert meta["files"] == ["TinyStoriesV2-GPT4-train.txt"]
    decoded = read_shards(out, meta, enc)
    assert sorted(decoded[0, "train"] + decoded[0, "val"]) == sorted(stories)
    assert decoded[0, "val"] == [s for row, s in enumerate(stories)
                                 if key_hash(f"TinyStoriesV2-GPT4-train.txt:{row}") < 0.3]


def test_repo_file_readers(tmp_path):
    txt = tmp_path / "stories.txt"
    txt.write_bytes("one\r\nstory 🙂\r\n<|endoftext|>\r\n\n<|endoftext|>\n"
                    "two <|endoftext|> inline\n<|endoftext|>\nlast".encode())
    # the blank story between two separators is dropped but keeps its row number
    assert list(sources.repo_file_documents(txt, "s.txt", "text")) == [
        ("s.txt:0", "one\r\nstory 🙂"), ("s.txt:2", "two <|endoftext|> inline"), ("s.txt:3", "last")]  # trimmed
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text('{"text": "a"}\n\n{"text": ""}\n{"text": "b", "x": 1}\n')
    assert list(sources.repo_file_documents(jsonl, "r.jsonl", "text")) == [("r.jsonl:1", "a"), ("r.jsonl:4", "b")]
    with pytest.raises(ValueError, match="expected a .parquet, .jsonl, .jsonl.gz or .txt file"):
        sources.repo_file_documents(tmp_path / "x.csv", "x.csv", "text")
    bad = tmp_path / "numbers.parquet"
    write_parquet(bad, {"text": [1, 2, 3]})
    with pytest.raises(ValueError, match="column 'text' holds int64, not text"):
        list(sources.repo_file_documents(bad, "numbers.parquet", "text"))
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="not a readable parquet file"):
        list(sources.repo_file_documents(tmp_path / "broken.parquet", "broken.parquet", "text"))


def test_max_files_and_max_tokens(tmp_path):
    files = fake_smollm(tmp_path / "mirror", n_files=3, docs_per_file=60)
    mirror = tmp_path / "mirror"
    enc = tokenizer_lib.load_tokenizer("bytes")
    meta = data.read_meta(prepare.prepare("smollm-fineweb-edu", "two", "bytes", 0.3, 1, tmp_path / "a",
                                             max_files=2, mirror=mirror))
    assert meta["files"] == list(files)[:2] and len(meta["train"]["files"]) == 2

    # the limit falls inside the second file: documents are kept while fewer than max_tokens tokens precede them
    expected = expected_documents(files, 0.3)
    first_file_tokens = sum(len(t.encode()) + 1 for r, _, t in expected if r == list(files)[0])
    max_tokens = first_file_tokens + 1000
    kept, total = [], 0
    for doc in expected:
        if total >= max_tokens:
            break
        kept.append(doc)
        total += len(doc[2].encode()) + 1
    out = prepare.prepare("smollm-fineweb-edu", "capped", "bytes", 0.3, 1, tmp_path / "a", max_tokens=float(max_tokens),
                          mirror=mirror)
    meta = data.read_meta(out)
    assert meta["train"]["tokens"] + meta["val"]["tokens"] == total >= max_tokens
    assert meta["files"] == list(files)[:2] and meta["max_tokens"] == max_tokens
    decoded = read_shards(out, meta, enc)
    for i, rel in enumerate(list(files)[:2]):
        for split, is_val in (("train", False), ("val", True)):
            assert decoded[i, split] == [t for r, v, t in kept if r == rel and v == is_val]
    marker = json.loads((out / "shards/00001.json").read_text())
    assert marker["cut"] is True and marker["token_limit"] == max_tokens - first_file_tokens

    # the cut does not depend on how the text is batched or on the thread count
    before = tree(out)
    prepare.BATCH_CHARS, batch_chars = 50, prepare.BATCH_CHARS
    try:
        again = prepare.prepare("smollm-fineweb-edu", "capped", "bytes", 0.3, 2, tmp_path / "b",
                                max_tokens=max_tokens, mirror=mirror)
    finally:
        prepare.BATCH_CHARS = batch_chars
    assert tree(again) == before

    # without the limit, the same directory is completed: the cut shard is written again, the whole one kept
    first_shard = (out / "shards/00000.train.bin").stat().st_mtime_ns
    prepare.prepare("smollm-fineweb-edu", "capped", "bytes", 0.3, 1, tmp_path / "a", mirror=mirror)
    fresh = prepare.prepare("smollm-fineweb-edu", "capped", "bytes", 0.3, 1, tmp_path / "c", mirror=mirror)
    assert tree(out) == tree(fresh)
    assert (out / "shards/00000.train.bin").stat().st_mtime_ns == first_shard


def test_changed_settings_and_damaged_shards_are_written_again(tmp_path):
    fake_smollm(tmp_path / "mirror", n_files=2, docs_per_file=40)
    args = dict(out_dir=tmp_path / "data", mirror=tmp_path / "mirror", workers=1, val_fraction=0.3)
    out = prepare.prepare("smollm-fineweb-edu", tokenizer="bytes", **args)
    reference = tree(out)
    with open(out / "shards/00001.val.bin", "ab") as f:
        f.write(b"\0\0")
    with pytest.raises(ValueError, match=r"00001.val.bin has .* bytes but meta.json says"):
        data.read_meta(out)  # every listed shard is checked
    prepare.prepare("smollm-fineweb-edu", tokenizer="bytes", **args)
    assert tree(out) == reference
    prepare.prepare("smollm-fineweb-edu", tokenizer="cl100k_32k", **args)  # other tokens: no shard may be kept
    assert tree(out) == tree(prepare.prepare("smollm-fineweb-edu", tokenizer="cl100k_32k",
                                             **{**args, "out_dir": tmp_path / "fresh"}))


def test_killed_run_resumes_to_the_same_files(tmp_path):
    rng = random.Random(2)
    mirror = tmp_path / "mirror"
    texts = [" ".join(rng.choice(WORDS) for _ in range(300)) for _ in range(400)]  # ~0.6 MB a file
    for i in range(5):
        write_parquet(mirror / f"fineweb-edu-dedup/train-{i:05d}-of-00234.parquet", {"text": texts[i * 80:] + texts[:i * 80]})
    args = ["smollm-fineweb-edu", "--mirror", str(mirror), "--val-fraction", "0.2", "--workers", "1"]
    shards = tmp_path / "data/smollm-fineweb-edu/shards"
    kill_prepare_in_its_second_shard(args, tmp_path, shards)
    assert not (shards.parent / "meta.json").exists() and not (shards / "00001.json").exists()
    first_shard = (shards / "00000.train.bin").stat().st_mtime_ns

    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (shards / "00000.train.bin").stat().st_mtime_ns == first_shard  # the finished shard was kept
    assert not [p for p in shards.parent.rglob("*") if p.name.endswith(".tmp")]
    uninterrupted = prepare.prepare("smollm-fineweb-edu", None, "cl100k_32k", 0.2, 2, tmp_path / "other", mirror=mirror)
    assert tree(shards.parent) == tree(uninterrupted)


def test_ctrl_c_keeps_the_finished_shards_and_says_so(tmp_path, monkeypatch):
    """Ctrl-C in the second shard: the first is kept, no temp file is left, the message says how to resume."""
    fake_smollm(tmp_path / "mirror", n_files=3, docs_per_file=40)
    args = ("smollm-fineweb-edu", "s", "bytes", 0.3, 1, tmp_path / "data")
    original = prepare.write_shard

    def interrupted_in_second_shard(paths, *rest):
        if paths["marker"].name == "00001.json":
            monkeypatch.setattr(prepare, "tokenize_batch", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
        return original(paths, *rest)

    monkeypatch.setattr(prepare, "write_shard", interrupted_in_second_shard)
    with pytest.raises(KeyboardInterrupt) as info:
        prepare.prepare(*args, mirror=tmp_path / "mirror")
    out = tmp_path / "data" / "s"
    assert str(info.value) == f"1 finished shard(s) of {out} are kept; rerun the same command to resume"
    assert sorted(tree(out)) == ["shards/00000.json", "shards/00000.train.bin", "shards/00000.val.bin"]  # no .tmp
    first = (out / "shards/00000.train.bin").stat().st_mtime_ns
    monkeypatch.undo()
    prepare.prepare(*args, mirror=tmp_path / "mirror")
    assert (out / "shards/00000.train.bin").stat().st_mtime_ns == first  # resumed, not started over
    assert tree(out) == tree(prepare.prepare(*args[:-1], tmp_path / "fresh", mirror=tmp_path / "mirror"))


def test_hub_functions_are_the_only_network(tmp_path, monkeypatch):
    files = fake_smollm(tmp_path / "repo", n_files=3, docs_per_file=20)
    sha = "0123456789abcdef0123456789abcdef01234567"
    listed, downloaded = [], []

    def fake_hub_files(repo, pattern, revision):
        listed.append((repo, pattern, revision))
        return sha, sources.mirror_files(tmp_path / "repo", pattern)

    def fake_hub_download(repo, path, sha):
        downloaded.append((repo, path, sha))
        return tmp_path / "repo" / path

    monkeypatch.setattr(sources, "hub_files", fake_hub_files)
    monkeypatch.setattr(sources, "hub_download", fake_hub_download)
    out = prepare.prepare("smollm-fineweb-edu", None, "bytes", 0.3, 1, tmp_path / "data", max_files=2, revision="v1.0")
    meta = data.read_meta(out)
    assert listed == [("HuggingFaceTB/smollm-corpus", "fineweb-edu-dedup/*.parquet", "v1.0")]
    assert sorted(downloaded) == [("HuggingFaceTB/smollm-corpus", rel, sha) for rel in list(files)[:2]]
    assert meta["revision"] == sha
    assert meta["source"] == "hf://datasets/HuggingFaceTB/smollm-corpus/fineweb-edu-dedup/*.parquet"
    mirrored = data.read_meta(prepare.prepare("smollm-fineweb-edu", "m", "bytes", 0.3, 1, tmp_path / "data",
                                                 max_files=2, mirror=tmp_path / "repo"))
    assert {s: mirrored[s] for s in ("train", "val")} == {s: meta[s] for s in ("train", "val")}


def test_hub_errors_are_one_line(tmp_path, monkeypatch, capsys, hf_cache):
    # offline mode makes huggingface_hub fail exactly where the network would, without any network
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    assert run_main(prepare.main, ["tinystories"]) == 2
    stderr = capsys.readouterr().err
    assert len(stderr.strip().splitlines()) == 1
    assert stderr.startswith("error: cannot list roneneldan/TinyStories@main on the Hugging Face Hub"), stderr
    with pytest.raises(OSError, match="^cannot download data/x.parquet of roneneldan/TinyStories@abc: [^\n]*$"):
        sources.hub_download("roneneldan/TinyStories", "data/x.parquet", "abc")


@pytest.mark.parametrize("args, message", [
    (["smollm-nope"], "no such file or directory: smollm-nope (looked for a local file or folder); named datasets: "
                     "shakespeare, smollm-fineweb-edu"),
    (["tinystories", "--mirror", "nowhere"], "--mirror"),
    (["smollm-cosmopedia", "--mirror", "mirror"],
     f"{COSMOPEDIA_FILE}: no column 'text' (columns: prompt)"),
    (["smollm-fineweb-edu", "--mirror", "mirror"], "no files matching fineweb-edu-dedup/*.parquet"),
    (["tinystories", "--mirror", "mirror", "--max-tokens", "2.5"], "--max-tokens must be a whole number"),
    (["tinystories", "--mirror", "mirror", "--max-files", "0"], "--max-files must be at least 1"),
    (["tinystories", "--mirror", "mirror", "--revision", "main"], "--revision"),
    (["shakespeare", "--max-files", "1"], "are for Hub datasets: smollm-fineweb-edu"),
    (["shakespeare", "--keep-downloads"], "--keep-downloads are for Hub datasets: smollm-fineweb-edu"),
    (["tinystories", "--mirror", "mirror", "--keep-downloads"], "a --mirror's files are never removed"),
])
def test_cli_bad_input(tmp_path, monkeypatch, capsys, args, message):
    """Through run_main, as prepare.py's command runs (test_cli.py runs prepare.py in a process of its own)."""
    write_parquet(tmp_path / "mirror" / COSMOPEDIA_FILE, {"prompt": ["p"]})
    write_parquet(tmp_path / "mirror/data/train-00000-of-00004-2d5a1467fff1081b.parquet", {"text": ["a story"]})
    monkeypatch.chdir(tmp_path)
    assert run_main(prepare.main, args) == 2
    stderr = capsys.readouterr().err
    # one line, no traceback; an error found while reading a file comes after the progress bars
    errors = [line for line in stderr.splitlines() if "error" in line.lower() or "Traceback" in line]
    assert errors == [stderr.strip().splitlines()[-1]] and errors[0].startswith("error:"), stderr
    assert message in errors[0]


def test_final_config_trains_on_prepared_hub_datasets(tmp_path):
    """configs/final.py end to end at a tiny shape: three Hub datasets prepared from mirrors, TinyStories
    fading into the SmolLM group, eval on SmolLM alone, per-source curriculum counters in the log."""
    import train
    rng = random.Random(2)
    smollm, stories = tmp_path / "smollm", tmp_path / "tinystories"
    fake_smollm(smollm, n_files=2, docs_per_file=150)
    write_parquet(stories / "data/train-00000-of-00001-x.parquet", {"text": random_texts(rng, 200, max_words=40)})
    for dataset, mirror in (("smollm-fineweb-edu", smollm), ("smollm-cosmopedia", smollm), ("tinystories", stories)):
        prepare.prepare(dataset, None, "bytes", 0.1, 1, tmp_path / "data", mirror=mirror)
    tiny = ["tokenizer=bytes", "model=quickstart", "dim=32", "n_layers=1", "n_heads=2", "ffn_dim=64", "seq_len=64",
            "batch_size=4", "total_tokens=0.01", "annealing_tokens=0.002", "warmup_tokens=0.001",
            "min_cooldown_tokens=0", "base_batch_tokens=256", "compile=False", "device=cpu", "eval_interval=10",
            "eval_iters=1", "log_interval=1", "sample_tokens=8", "checkpoint_interval=1000",
            f"data_dir={tmp_path / 'data'}", f"out_dir={tmp_path / 'out'}"]
    assert train.main([str(ROOT / "configs/final.py"), *tiny, "max_steps=30"]) == 0
    records = [json.loads(line) for line in (tmp_path / "out/final/log.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    first, last = steps[0], steps[-1]
    # the curriculum: TinyStories first, the SmolLM group taking over
    assert first["drawn/tinystories"] >= 3 and last["drawn/smollm-fineweb-edu"] + last["drawn/smollm-cosmopedia"] > 0
    assert last["loss"] < first["loss"]
    evals = [r for r in records if "eval_loss" in r]
    # eval_loss pools the SmolLM pair alone (between their two losses); TinyStories is logged on its own
    low, high = sorted(evals[-1][f"eval_loss/smollm-{name}"] for name in ("fineweb-edu", "cosmopedia"))
    assert low <= evals[-1]["eval_loss"] <= high and "eval_loss/tinystories" in evals[-1]
    assert json.loads((tmp_path / "out/final/config.json").read_text())["schedule"] == "wsd"
