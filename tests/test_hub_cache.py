"""Tests for prepare.py with the Hub itself: a dataset repo served on localhost the way the Hub serves it, so that
the real huggingface_hub lists, downloads and caches its files. Downloads leave the cache as it was (unless
--keep-downloads), a stopped run removes its downloads when resumed, a prepare that would overflow the disk stops
before writing, and a new upstream commit prepares again only the files it changed."""

import hashlib
import json
import math
import os
import random
import urllib.parse
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import data
import prepare
import sources
from config import run_main
from conftest import (WORDS, fake_smollm, file_versions, kill_prepare_in_its_second_shard, random_texts, serve,
                      shards_written, tree, write_parquet)

pytestmark = pytest.mark.usefixtures("hf_cache")  # conftest: each test its own Hugging Face cache


@pytest.fixture
def fake_hub(tmp_path):
    """HuggingFaceTB/smollm-corpus served from the directory hub.root on localhost the way the Hub serves a dataset
    repo (its head commit, the listing of its files, each file with the headers that huggingface_hub reads), so that
    the real huggingface_hub lists, downloads and caches it. hub.sha is the head commit; hub.downloads, the files
    downloaded. A data file is in LFS, named in the cache by its sha256; README.md is not, named by its git blob id."""
    import huggingface_hub.constants
    hub = SimpleNamespace(root=tmp_path / "hub", repo="HuggingFaceTB/smollm-corpus", sha="1" * 40, downloads=[])

    def identity(path):
        data = path.read_bytes()
        blob_id = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        return blob_id, (None if path.suffix == ".md" else hashlib.sha256(data).hexdigest())

    def tree_entry(path):
        blob_id, sha256 = identity(path)
        entry = {"type": "file", "path": path.relative_to(hub.root).as_posix(), "size": path.stat().st_size,
                 "oid": blob_id}
        return entry if sha256 is None else {**entry, "lfs": {"oid": sha256, "size": entry["size"], "pointerSize": 134}}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
            api, resolve = f"/api/datasets/{hub.repo}", f"/datasets/{hub.repo}/resolve/"
            rel = path.removeprefix(resolve).partition("/")[2]  # a file's path, after the revision
            if path == api or path.startswith(f"{api}/revision/"):
                self.reply(json.dumps({"id": hub.repo, "sha": hub.sha}).encode())
            elif path.startswith(f"{api}/tree/"):
                files = [tree_entry(p) for p in sorted(hub.root.rglob("*")) if p.is_file()]
                self.reply(json.dumps(files).encode())
            elif path.startswith(resolve) and (hub.root / rel).is_file():
                blob_id, sha256 = identity(hub.root / rel)
                if self.command == "GET":
                    hub.downloads.append(rel)
                headers = {"X-Repo-Commit": hub.sha, "ETag": f'"{blob_id}"'}
                self.reply((hub.root / rel).read_bytes(), headers if sha256 is None else
                           {**headers, "X-Linked-Etag": f'"{sha256}"'})
            else:
                self.reply(b'{"error": "not found"}', status=404)

        do_HEAD = do_GET

        def reply(self, body, headers=None, status=200):
            self.send_response(status)
            for key, value in {**(headers or {}), "Content-Length": str(len(body))}.items():
                self.send_header(key, value)
            self.end_headers()
            if self.command == "GET":
                self.wfile.write(body)

        def log_message(self, *args):
            pass

    server, endpoint = serve(Handler)
    hub.endpoint = endpoint
    try:
        with pytest.MonkeyPatch.context() as patch:  # its own patch, as hf_cache's
            # online, whatever HF_HUB_OFFLINE said when huggingface_hub was imported (tests/test_export.py sets it)
            patch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
            patch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)
            patch.setattr(huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                          endpoint + "/{repo_id}/resolve/{revision}/{filename}")
            yield hub
    finally:
        server.shutdown()
        server.server_close()


def cached_files(cache):
    """[(commit, repo path)] of every file in the Hugging Face cache, as huggingface_hub's own scan reads them (it
    also finds a broken link)."""
    from huggingface_hub import scan_cache_dir
    info = scan_cache_dir(cache)
    assert info.warnings == [] and not info.incomplete_files
    return sorted((revision.commit_hash, f.file_path.relative_to(revision.snapshot_path).as_posix())
                  for repo in info.repos for revision in repo.revisions for f in revision.files)


# -----------------------------------------------------------------------------

def test_the_real_huggingface_hub_lists_files_with_their_size_and_identity(fake_hub):
    files = fake_smollm(fake_hub.root, n_files=2, docs_per_file=10)
    sha, listed = sources.hub_files(fake_hub.repo, "fineweb-edu-dedup/*.parquet", None)
    assert sha == fake_hub.sha and [f.path for f in listed] == list(files)
    for f in listed:
        data = (fake_hub.root / f.path).read_bytes()
        assert (f.size, f.identity) == (len(data), hashlib.sha256(data).hexdigest())  # the LFS sha256
    [card] = sources.hub_files(fake_hub.repo, "README.md", None)[1]
    data = (fake_hub.root / "README.md").read_bytes()
    assert card.identity == hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # not in LFS: the git blob id


def test_downloads_leave_the_cache_as_it_was(tmp_path, fake_hub, hf_cache, monkeypatch):
    """Three repo files through the Hub: each download is removed once its shard is written, so no more than two are
    in the cache at once and none is left; --keep-downloads keeps them; a file in the cache before the run, at this
    commit or at another, is never removed."""
    files = list(fake_smollm(fake_hub.root, n_files=3, docs_per_file=40))
    first = fake_hub.sha
    args = ("smollm-fineweb-edu", None, "bytes", 0.3, 1)
    blobs = hf_cache / "datasets--HuggingFaceTB--smollm-corpus" / "blobs"
    in_cache, write_shard = [], prepare.write_shard

    def counting_blobs(*shard_args):
        in_cache.append(len(list(blobs.iterdir())))  # a download in flight (.incomplete) counts too
        return write_shard(*shard_args)

    monkeypatch.setattr(prepare, "write_shard", counting_blobs)
    out = prepare.prepare(*args, tmp_path / "a")
    assert fake_hub.downloads == files and cached_files(hf_cache) == [] and list(blobs.iterdir()) == []
    assert in_cache[-1] == 1 and max(in_cache) <= 2  # three without the removal
    assert not (out / "shards/downloads.json").exists()  # the record of downloads to remove is empty

    # the user's own download of the first file stays; the other two come and go
    from huggingface_hub import hf_hub_download
    users = Path(hf_hub_download(fake_hub.repo, files[0], repo_type="dataset", revision=first))
    fake_hub.downloads.clear()
    again = prepare.prepare(*args, tmp_path / "b")
    assert fake_hub.downloads == files[1:] and cached_files(hf_cache) == [(first, files[0])]
    assert users.read_bytes() == (fake_hub.root / files[0]).read_bytes()
    assert tree(again) == tree(out)

    fake_hub.downloads.clear()
    prepare.prepare(*args, tmp_path / "c", keep_downloads=True)
    assert fake_hub.downloads == files[1:] and cached_files(hf_cache) == [(first, f) for f in files]

    # at a new commit the same files are linked to the blobs the cache holds for the old one: not downloaded, and
    # the user's, so kept
    fake_hub.sha = "2" * 40
    fake_hub.downloads.clear()
    prepare.prepare(*args, tmp_path / "d")
    assert fake_hub.downloads == [] and cached_files(hf_cache) == [(c, f) for c in (first, fake_hub.sha) for f in files]


def test_a_stopped_run_still_removes_its_downloads_when_resumed(tmp_path, fake_hub, hf_cache, monkeypatch):
    """A download that a stopped run left is in the cache when the run is resumed, yet this prepare's: removed."""
    files = list(fake_smollm(fake_hub.root, n_files=3, docs_per_file=40))
    args = ("smollm-fineweb-edu", None, "bytes", 0.3, 1, tmp_path / "data")
    write_shard, remove_download = prepare.write_shard, sources.remove_download

    def stopped_in_last_shard(paths, *rest):  # its file is downloaded by then, and no other is in flight
        if paths["marker"].name == "00002.json":
            raise KeyboardInterrupt
        return write_shard(paths, *rest)

    monkeypatch.setattr(prepare, "write_shard", stopped_in_last_shard)
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare(*args)
    assert [f for _, f in cached_files(hf_cache)] == files[2:]
    monkeypatch.setattr(prepare, "write_shard", write_shard)
    fake_hub.downloads.clear()
    prepare.prepare(*args)
    assert fake_hub.downloads == [] and cached_files(hf_cache) == []

    # stopped between the last shard's marker and the removal of its file: the shard is kept, the file removed
    def stopped_before_the_last_removal(repo, listed):
        if listed.path == files[2]:
            raise KeyboardInterrupt
        remove_download(repo, listed)

    monkeypatch.setattr(sources, "remove_download", stopped_before_the_last_removal)
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare(*args[:-1], tmp_path / "other")
    assert [f for _, f in cached_files(hf_cache)] == files[2:]
    monkeypatch.setattr(sources, "remove_download", remove_download)
    written = shards_written(monkeypatch)
    prepare.prepare(*args[:-1], tmp_path / "other")
    assert written == [] and cached_files(hf_cache) == []


def test_a_mirror_is_never_changed(tmp_path):
    fake_smollm(tmp_path / "mirror", n_files=2, docs_per_file=40)
    before = tree(tmp_path / "mirror"), file_versions(tmp_path / "mirror" / "fineweb-edu-dedup")
    prepare.prepare("smollm-fineweb-edu", None, "bytes", 0.3, 1, tmp_path / "data", mirror=tmp_path / "mirror")
    assert (tree(tmp_path / "mirror"), file_versions(tmp_path / "mirror" / "fineweb-edu-dedup")) == before


def test_a_prepare_that_would_not_fit_stops_before_writing(tmp_path, fake_hub, hf_cache, monkeypatch, capsys):
    files = fake_smollm(fake_hub.root, n_files=3, docs_per_file=40)
    sizes = [(fake_hub.root / rel).stat().st_size for rel in files]
    # bytes tokens (2 bytes each), at most 2.5 a parquet byte, and the two largest downloads on disk at once
    needed = sum(2 * math.ceil(2.5 * size) for size in sizes) + sum(sorted(sizes)[-2:])
    free = {}
    monkeypatch.setattr(sources, "free_bytes", lambda path: free["bytes"])
    cli = ["smollm-fineweb-edu", "--tokenizer", "bytes", "--out-dir", str(tmp_path / "data")]

    free["bytes"] = needed - 1
    stopped = run_main(prepare.main, cli)
    err = capsys.readouterr().err
    assert stopped == 2 and err.startswith("error: ") and len(err.splitlines()) == 1, err
    size = prepare.human_size
    assert (f"needs about {size(needed - sum(sorted(sizes)[-2:]))} of token files and up to "
            f"{size(sum(sorted(sizes)[-2:]))} of downloads but its disk has {size(needed - 1)} free") in err
    assert "--max-files" in err and "--out-dir" in err
    assert not (tmp_path / "data").exists() and fake_hub.downloads == [] and not hf_cache.exists()

    prepare.main(cli + ["--max-files", "2"])  # a part of it fits
    free["bytes"] = needed  # as does the whole, the estimate being on the high side
    prepare.main(cli)
    assert data.read_meta(tmp_path / "data/smollm-fineweb-edu")["files"] == list(files)

    # downloads kept on another disk than the token files: checked on their own, with their own advice
    monkeypatch.setattr(sources, "same_disk", lambda a, b: False)
    monkeypatch.setattr(sources, "free_bytes", lambda path: 10**12 if Path(path) == tmp_path / "data" / "k" else 100)
    with pytest.raises(OSError, match=r"^the downloads need up to .* in the Hugging Face cache .* leave out "
                                      "--keep-downloads"):
        prepare.prepare("smollm-fineweb-edu", "k", "bytes", 0.3, 1, tmp_path / "data", keep_downloads=True)
    assert not (tmp_path / "data/k").exists()


@pytest.mark.parametrize("compression", ["snappy", "zstd", "gzip"])
def test_the_disk_estimate_bounds_the_token_files_of_english(tmp_path, compression):
    """Plays of the embedded corpus in parquet, tokenized with cl100k_32k: fewer token-file bytes than estimated,
    and not fewer than half (an estimate far too high would refuse runs that fit)."""
    texts = [f.read_bytes().decode() for f in sources.shakespeare_files()[:10]]
    path = tmp_path / "mirror/fineweb-edu-dedup/train-00000-of-00234.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pa.table({"text": texts}), path, compression=compression)
    meta = data.read_meta(prepare.prepare("smollm-fineweb-edu", None, "cl100k_32k", 0.3, 2, tmp_path / "data",
                                             mirror=tmp_path / "mirror"))
    written = 2 * (meta["train"]["tokens"] + meta["val"]["tokens"])
    [listed] = sources.mirror_files(tmp_path / "mirror", "fineweb-edu-dedup/*.parquet")
    estimate = 2 * prepare.estimated_tokens(listed, "cl100k_32k")
    assert written <= estimate <= 2 * written, (written / listed.size, estimate / listed.size)


def test_a_new_commit_keeps_the_shards_of_unchanged_files(tmp_path, fake_hub, monkeypatch):
    files = list(fake_smollm(fake_hub.root, n_files=3, docs_per_file=40))
    args = ("smollm-fineweb-edu", None, "bytes", 0.3, 1, tmp_path / "data")
    out = prepare.prepare(*args)
    shards = out / "shards"
    before = file_versions(shards)
    written = shards_written(monkeypatch)

    fake_hub.sha = "2" * 40  # a new commit that changes only the dataset card
    (fake_hub.root / "README.md").write_text("a dataset card, edited\n")
    fake_hub.downloads.clear()
    prepare.prepare(*args)
    assert written == [] and fake_hub.downloads == [] and file_versions(shards) == before
    assert data.read_meta(out)["revision"] == fake_hub.sha

    fake_hub.sha = "3" * 40  # a new commit that changes the second file
    write_parquet(fake_hub.root / files[1], {"text": random_texts(random.Random(7), 40)})
    prepare.prepare(*args)
    assert written == [files[1]] and fake_hub.downloads == [files[1]]
    assert {name: v for name, v in file_versions(shards).items() if not name.startswith("00001.")} == \
        {name: v for name, v in before.items() if not name.startswith("00001.")}
    assert tree(out) == tree(prepare.prepare(*args[:-1], tmp_path / "fresh"))

    # a marker of an earlier version (the commit among its settings, no identity) is not trusted: written again
    marker = json.loads((shards / "00002.json").read_text())
    del marker["identity"]
    (shards / "00002.json").write_text(json.dumps({**marker, "settings": {**marker["settings"], "revision": "3" * 40}}))
    written.clear()
    prepare.prepare(*args)
    assert written == [files[2]]


def test_a_mirror_file_written_again_is_prepared_again(tmp_path, monkeypatch):
    files = list(fake_smollm(tmp_path / "mirror", n_files=3, docs_per_file=40))
    args = dict(out_dir=tmp_path / "data", mirror=tmp_path / "mirror", tokenizer="bytes", workers=1, val_fraction=0.3)
    prepare.prepare("smollm-fineweb-edu", **args)
    written = shards_written(monkeypatch)
    os.utime(tmp_path / "mirror" / files[2])  # the same bytes, written again (as a new download of it would be)
    prepare.prepare("smollm-fineweb-edu", **args)
    assert written == [files[2]]


FINEWEB_EDU_CARD = """---
license: odc-by
configs:
- config_name: default
  data_files:
  - split: train
    path: data/*/*
- config_name: sample-10BT
  data_files:
  - split: train
    path: sample/10BT/*
- config_name: CC-MAIN-2024-10
  data_files:
  - split: train
    path: data/CC-MAIN-2024-10/*
---
# FineWeb-Edu
"""


def fake_fineweb_edu(root, rng):
    """HuggingFaceFW/fineweb-edu's layout: configs in its card, a folder each, parquet files with its columns."""
    texts = [" ".join(rng.choice(WORDS) for _ in range(150)) for _ in range(400)]  # ~0.3 MB a file
    for rel in ("data/CC-MAIN-2024-10/000_00000.parquet", "sample/10BT/000_00000.parquet",
                "sample/10BT/001_00000.parquet", "sample/10BT/002_00000.parquet"):
        rows = len(texts)
        write_parquet(root / rel, {"text": texts, "id": [f"<urn:uuid:{i}>" for i in range(rows)],
                                   "dump": ["CC-MAIN-2024-10"] * rows, "url": ["https://example.org"] * rows,
                                   "language": ["en"] * rows, "score": [3.1] * rows, "int_score": [3] * rows})
        texts = texts[80:] + texts[:80]
    (root / "README.md").write_text(FINEWEB_EDU_CARD)


def test_any_repo_through_the_hub_resumes_after_a_kill_and_removes_its_downloads(tmp_path, fake_hub, hf_cache):
    """A repo outside the named ones, in its real layout (a config's folder chosen by its card, parquet with extra
    columns), prepared through the Hub by prepare.py, killed with SIGKILL in its second shard and run again: the
    finished shard is kept, the rest written, the token files those of an uninterrupted prepare, and the cache holds
    none of the downloads (the card included)."""
    fake_hub.repo = "HuggingFaceFW/fineweb-edu"
    fake_fineweb_edu(fake_hub.root, random.Random(3))
    args = ["HuggingFaceFW/fineweb-edu", "--config", "sample-10BT", "--val-fraction", "0.2", "--workers", "1"]
    env = {**os.environ, "HF_ENDPOINT": fake_hub.endpoint, "HF_HUB_CACHE": str(hf_cache), "HF_HUB_OFFLINE": "0"}
    out = tmp_path / "data/fineweb-edu-sample-10BT"
    shards = out / "shards"
    kill_prepare_in_its_second_shard(args, tmp_path, shards, env)
    first_shard = (shards / "00000.train.bin").stat().st_mtime_ns
    assert "sample/10BT/000_00000.parquet" in fake_hub.downloads and not (out / "meta.json").exists()

    fake_hub.downloads.clear()
    prepare.prepare(fake_hub.repo, None, "cl100k_32k", 0.2, 1, tmp_path / "data", config="sample-10BT")  # the same
    assert (shards / "00000.train.bin").stat().st_mtime_ns == first_shard  # kept, and its file not fetched again
    assert "sample/10BT/000_00000.parquet" not in fake_hub.downloads
    meta = data.read_meta(out)
    assert meta["files"] == [f"sample/10BT/00{i}_00000.parquet" for i in range(3)]
    assert meta["repo"] == fake_hub.repo and meta["revision"] == fake_hub.sha
    assert cached_files(hf_cache) == [] and not list(hf_cache.rglob("*.incomplete"))
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    uninterrupted = prepare.prepare(fake_hub.repo, "whole", "cl100k_32k", 0.2, 1, tmp_path / "data",
                                    config="sample-10BT")
    assert {p: b for p, b in tree(out).items() if p.endswith(".bin")} == \
        {p: b for p, b in tree(uninterrupted).items() if p.endswith(".bin")}


def test_a_repo_the_hub_does_not_have_is_one_line(tmp_path, fake_hub, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run_main(prepare.main, ["nobody/nothing"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot list nobody/nothing@main on the Hugging Face Hub: ") and \
        len(err.strip().splitlines()) == 1, err
