"""Shared test set-up: the repository root on sys.path, and a tiny prepared corpus."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a test that takes more than ~10 s")


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
