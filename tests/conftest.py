"""Shared test set-up and helpers: the repository root on sys.path, a tiny prepared corpus, the tiny training
arguments and log reader, tiny models with their exactness checks, and fake Hub files. Test modules import
from here (`from conftest import ...`), never from each other."""
import hashlib
import json
import math
import os
import random
import resource
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from http.server import ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch.testing import assert_close

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import data  # noqa: E402
import prepare  # noqa: E402
from attention import document_ids  # noqa: E402
from model import ModelConfig, Transformer  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a test that takes more than ~10 s")
    config.addinivalue_line("markers", "integration: a test that trains, prepares or runs a script end to end "
                                       "(`pytest -m 'not integration'` is the quick half, for editing)")


def pytest_collection_modifyitems(items):
    """A test that trains or prepares (it uses tiny_data or a Hugging Face cache) or is slow is integration too,
    without its own mark: a new end-to-end test cannot slip into the quick half."""
    for item in items:
        if {"tiny_data", "hf_cache"} & set(getattr(item, "fixturenames", ())) or item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """The test models are tiny: on a busy 2-core machine a second OpenMP thread only makes every small
    op wait for a time slice (generation was measured 200x slower). torchrun tests set OMP_NUM_THREADS=1."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_corpus(directory, n_docs=60, seed=0):
    """Small English-like documents of varied length, as .txt files."""
    import random
    rng = random.Random(seed)
    words = ("the king and queen of a far land spoke to their people about bread war peace love "
             "night day rain sun sea ship gold iron horse field song").split()
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(n_docs):
        lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))).capitalize() + "."
                 for _ in range(rng.randint(2, 30))]
        (directory / f"doc{i:03d}.txt").write_text("\n".join(lines) + "\n")
    return directory


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """data_dir holding 'tiny': the byte-tokenized corpus above, split 90/10 by document."""
    import prepare
    root = tmp_path_factory.mktemp("data")
    corpus = write_corpus(root / "corpus")
    prepare.prepare(str(corpus), name="tiny", tokenizer="bytes", val_fraction=0.1, workers=1, out_dir=str(root / "data"))
    return root / "data"


@pytest.fixture
def hf_cache(tmp_path):
    """A Hugging Face cache of the test's own, so that a test never reads or changes the user's (its own patch,
    which a test's monkeypatch.undo() leaves in place)."""
    import huggingface_hub.constants
    cache = tmp_path / "hf-cache"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
        yield cache


# ----------------------------------------------------------------------------- from test_train

# A model small enough that a step takes milliseconds; log every step so runs can be compared.
TINY = ["model=quickstart", "dim=32", "n_layers=2", "n_heads=2", "ffn_dim=64", "seq_len=32", "batch_size=4",
        "total_tokens=0.004", "warmup_tokens=0.0005", "lr=3e-3", "log_interval=1", "eval_interval=5", "eval_iters=2",
        "sample_tokens=20", "data=tiny", "device=cpu"]


def run_args(tiny_data, out_dir, *extra):
    return TINY + [f"data_dir={tiny_data}", f"out_dir={out_dir}", *extra]


def run_torchrun(args, timeout=300, processes=2):
    """train.py with args under `torchrun --standalone --nproc_per_node=2`, one OpenMP thread a process."""
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                           str(ROOT / "train.py"), *args], cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"),
                          capture_output=True, text=True, timeout=timeout)


def run_under_file_size_limit(argv, limit, timeout=300):
    """A script (argv: its path and arguments) in its own process whose files cannot grow past `limit` bytes
    (ulimit -f), as a disk that fills up mid-write. SIGXFSZ keeps its default action: a script that does not ignore
    it is killed without a word. No progress bars; one OpenMP thread."""
    return subprocess.run([sys.executable, *map(str, argv)], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1"),
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))


def read_log(run_dir):
    lines = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [r for r in lines if "loss" in r], [r for r in lines if "eval_loss" in r]



# ----------------------------------------------------------------------------- from test_control

def wait_for(condition, timeout=120, what="a condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def last_step(run_dir):
    path = run_dir / "log.jsonl"
    if not path.exists():
        return 0
    steps = [json.loads(line)["step"] for line in path.read_text().splitlines() if '"loss"' in line]
    return steps[-1] if steps else 0



# ----------------------------------------------------------------------------- from test_model

VOCAB = 97
EOT = 0  # end-of-text id in these tests; ordinary tokens are drawn from 1..VOCAB-1


def tiny(**overrides):
    """A 2-layer model config small enough for exact comparisons in milliseconds."""
    return ModelConfig(**{"vocab_size": VOCAB, "dim": 64, "n_layers": 2, "n_heads": 4, "ffn_dim": 160,
                          **overrides})


def tokens(n, generator=None):
    return torch.randint(1, VOCAB, (n,), generator=generator)


@torch.no_grad()
def assert_packed_matches_alone(model):
    """Documents packed into rows (row 0 starts mid-document, row 1 packs them in another order) give the
    logits of the same documents run alone, each after an EOT."""
    generator = torch.Generator().manual_seed(1)
    a, b, c = tokens(7, generator), tokens(9, generator), tokens(5, generator)
    eot = torch.tensor([EOT])
    row0 = torch.cat([a, eot, b, eot, c])
    row1 = torch.cat([eot, c, eot, b, eot, a[:6]])
    idx = torch.stack([row0, row1])
    packed = model(idx, doc_ids=document_ids(idx, EOT))

    def alone(*parts):
        return model(torch.cat(parts)[None])[0]

    assert_close(packed[0, :7], alone(a), atol=1e-5, rtol=0)
    assert_close(packed[0, 7:17], alone(eot, b), atol=1e-5, rtol=0)
    assert_close(packed[0, 17:], alone(eot, c), atol=1e-5, rtol=0)
    assert_close(packed[1, :6], alone(eot, c), atol=1e-5, rtol=0)
    assert_close(packed[1, 6:16], alone(eot, b), atol=1e-5, rtol=0)
    assert_close(packed[1, 16:], alone(eot, a)[:7], atol=1e-5, rtol=0)
    # without document ids the same rows give different logits, so the comparison above has teeth
    assert not torch.allclose(model(idx)[0, 7:17], alone(eot, b), atol=1e-3)


def assert_sdpa_matches_eager(sdpa, packed, logits_atol):
    """An eager copy of the sdpa model gives its logits and, to 2e-5 of each tensor's largest value, every
    gradient of a summed loss (which reaches ~10). Returns the sdpa model, gradients in place.
   """
    eager = Transformer(replace(sdpa.config, attn="eager"))
    eager.load_state_dict(sdpa.state_dict())
    generator = torch.Generator().manual_seed(2)
    idx = torch.randint(1, VOCAB, (2, 32), generator=generator)
    idx[0, [5, 17]] = EOT
    idx[1, [0, 11, 12]] = EOT  # includes a one-token document
    targets = torch.randint(0, VOCAB, (2, 32), generator=generator)
    targets[:, ::7] = -1
    doc_ids = document_ids(idx, EOT) if packed else None

    assert_close(sdpa(idx, doc_ids), eager(idx, doc_ids), atol=logits_atol, rtol=1e-5)
    for model in (sdpa, eager):
        model(idx, doc_ids, targets).backward()
    for (name, p_sdpa), (_, p_eager) in zip(sdpa.named_parameters(), eager.named_parameters()):
        scale = p_eager.grad.abs().max().item()
        assert scale > 0, name
        assert (p_sdpa.grad - p_eager.grad).abs().max().item() <= 2e-5 * scale, name
    return sdpa


# A normal cut at +-3 sigma has standard deviation sigma * sqrt(1 - 2*3*pdf(3) / (cdf(3) - cdf(-3))).
TRUNCATED_STD = math.sqrt(1 - 6 * math.exp(-4.5) / math.sqrt(2 * math.pi) / math.erf(3 / math.sqrt(2)))


def check_trunc_normal(weight, std):
    assert abs(weight.mean().item()) < 0.05 * std  # the mean of >= 65k samples is within ~0.01 sigma
    assert weight.std().item() == pytest.approx(std * TRUNCATED_STD, rel=0.02)
    assert weight.abs().max().item() <= 3 * std * (1 + 1e-6)



# ----------------------------------------------------------------------------- from test_variants

# the two block variants of docs/reference.md ("DeepNet and DeepOne", "Canon layers"), as ModelConfig overrides
DEEPONE = {"norm_placement": "deepnet", "ffn_act": "relu", "position": "alibi", "alibi_trainable": True}


CANON = {"canon": "A", "position": "nope", "qk_norm": True}


def tiny_model(seed=0, **overrides):
    """A tiny model with weights scaled up so attention is far from uniform. ALiBi slopes (parameter
    or buffer) are drawn in [0.1, 1): every head then has a bias that visibly changes the logits."""
    torch.manual_seed(seed)
    model = Transformer(tiny(**overrides)).eval()
    with torch.no_grad():
        for name, tensor in model.state_dict(keep_vars=True).items():
            if name.endswith("norm.weight"):
                tensor.uniform_(0.5, 1.5)
            elif name.endswith("alibi_slopes"):
                tensor.uniform_(0.1, 1.0)
            elif name != "embed_tokens.weight":
                tensor.normal_(0.0, 0.25)
    return model



# ----------------------------------------------------------------------------- from test_flex

def same_model(model, attn):
    other = Transformer(replace(model.config, attn=attn)).eval()
    other.load_state_dict(model.state_dict())
    return other



# ----------------------------------------------------------------------------- from test_hub

def key_hash(key):
    """The split rule's hash, computed here without prepare.key_hash."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") / 2**64


def expected_documents(files, val_fraction):
    """[(repo path, is_val, text)] in corpus order: every non-empty row, split by the hash of '<path>:<row>'."""
    return [(rel, key_hash(f"{rel}:{row}") < val_fraction, text)
            for rel, texts in files.items() for row, text in enumerate(texts) if text]


def decode_file(path, meta, enc):
    tokens = np.fromfile(path, dtype=np.dtype(meta["dtype"]).newbyteorder("<"))
    cuts = np.flatnonzero(tokens == enc.eot_token)
    assert len(tokens) == 0 or cuts[-1] == len(tokens) - 1  # every document ends with end-of-text
    starts = np.concatenate([[0], cuts[:-1] + 1])
    return [enc.decode(tokens[s:e].tolist()) for s, e in zip(starts, cuts)]


def read_shards(out, meta, enc):
    """{(shard index, split): decoded documents} of the shards meta.json lists."""
    return {(i, split): decode_file(path, meta, enc)
            for split in ("train", "val") for i, (path, _) in enumerate(data.split_files(out, meta, split))}


WORDS = ("once upon a time there was a little girl named Lily who loved the sun and the sea . "
         "she played with her dog in the park , and they were happy ! 🙂 naïve café").split()


def random_texts(rng, n, max_words=120):
    """Documents of random words, with an empty and a missing one (neither is a document)."""
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, max_words))) for _ in range(n)]
    texts[1], texts[2] = "", None
    return texts


def write_parquet(path, columns, row_group_size=50):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)


COSMOPEDIA_FILE = "cosmopedia-v2/train-00000-of-00104.parquet"


def fake_smollm(root, n_files=2, docs_per_file=120, seed=0):
    """A directory laid out like HuggingFaceTB/smollm-corpus, with its file names and extra columns; returns
    {repo path: texts} of fineweb-edu-dedup."""
    rng = random.Random(seed)
    fineweb = {}
    for i in range(n_files):
        rel = f"fineweb-edu-dedup/train-{i:05d}-of-00234.parquet"
        fineweb[rel] = random_texts(rng, docs_per_file)
        metadata = [{"dump": "CC-MAIN-2024-10", "url": f"https://example.org/{i}/{j}", "date": "2024-02-21",
                     "file_path": "s3://commoncrawl/x.warc.gz", "language": "en", "language_score": 0.97,
                     "token_count": 400 + j, "score": 3.1, "int_score": 3} for j in range(docs_per_file)]
        write_parquet(root / rel, {"text": fineweb[rel], "id": [f"<urn:uuid:{i}-{j}>" for j in range(docs_per_file)],
                                   "metadata": metadata})
    write_parquet(root / COSMOPEDIA_FILE,
                  {"prompt": ["write a story"] * 30, "text": random_texts(rng, 30), "token_length": list(range(30)),
                   "audience": ["young children"] * 30, "format": ["story"] * 30, "seed_data": ["stories"] * 30})
    (root / "README.md").write_text("a dataset card, not data\n")
    return fineweb


def tree(directory):
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def shards_written(monkeypatch):
    """The repo paths that prepare tokenizes into a shard from now on, in order."""
    written, write_shard = [], prepare.write_shard

    def recording(paths, local_path, listed, *rest):
        written.append(listed.path)
        return write_shard(paths, local_path, listed, *rest)

    monkeypatch.setattr(prepare, "write_shard", recording)
    return written


def kill_prepare_in_its_second_shard(args, cwd, shards, env=None):
    """Run prepare.py with args and SIGKILL it while its second shard is half written: the first shard finished,
    the second's .bin files still temp files."""
    process = subprocess.Popen([sys.executable, str(ROOT / "prepare.py"), *args], cwd=cwd, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not ((shards / "00000.json").exists() and list(shards.glob(".00001.train.bin.*.tmp"))):
        assert process.poll() is None and time.monotonic() < deadline, "prepare ended before it could be killed"
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()


def file_versions(directory):
    """{name: (inode, mtime)} of the files in a directory: a file written again, even with the same bytes, differs."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in directory.iterdir()}


def serve(handler):
    """A local HTTP server of the request handler class on a free port, in a daemon thread: (server, its URL)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}"
