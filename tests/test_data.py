"""data.py: blocks over one or several files, best-fit packing, mixtures, the global order and each rank's slice."""
import json
import math

import numpy as np
import pytest
import torch

import data
import tokenizer as tokenizer_lib
from attention import document_ids

EOT = 9


def stream_tokens(n=10_001, every=37, seed=None):
    """n tokens with an end-of-text every `every` tokens (or at random places, given a seed)."""
    tokens = (np.arange(n) % 7).astype(np.uint16)
    if seed is None:
        tokens[::every] = EOT
    else:
        rng = np.random.default_rng(seed)
        tokens[rng.choice(n, n // every, replace=False)] = EOT
    return tokens


def write_files(directory, tokens, cuts):
    """tokens written as shard files cut at `cuts`; returns [(path, n_tokens), ...]."""
    directory.mkdir(parents=True, exist_ok=True)
    files = []
    for i, (a, b) in enumerate(zip([0] + cuts, cuts + [len(tokens)])):
        path = directory / f"{i:05d}.bin"
        tokens[a:b].tofile(path)
        files.append((path, b - a))
    return files


def write_prepared(data_dir, name, train, val, tokenizer="cl100k_32k", val_bytes_per_token=3):
    """A data directory as prepare.py writes it, from token arrays: one document a split, its counts true to the
    tokenizer (the bytes tokenizer has one byte a token, whatever val_bytes_per_token says)."""
    directory = data_dir / name
    directory.mkdir(parents=True)
    train.astype(np.uint16).tofile(directory / "train.bin")
    val.astype(np.uint16).tofile(directory / "val.bin")
    enc = tokenizer_lib.load_tokenizer(tokenizer)

    def counts(tokens, bytes_per_token):
        text_bytes = len(tokens) - 1 if tokenizer == "bytes" else bytes_per_token * len(tokens)
        return {"tokens": len(tokens), "bytes": text_bytes, "documents": 1}

    meta = {"tokenizer": tokenizer, "vocab_size": enc.n_vocab, "eot_id": enc.eot_token, "dtype": "uint16",
            "source": "test", "val_fraction": 0.1, "train": counts(train, 2), "val": counts(val, val_bytes_per_token)}
    (directory / "meta.json").write_text(json.dumps(meta))
    return directory


@pytest.fixture
def token_file(tmp_path):
    tokens = stream_tokens()
    return write_files(tmp_path, tokens, []), tokens


# -----------------------------------------------------------------------------
# blocks


def test_blocks_are_slices_of_the_stream(token_file):
    files, tokens = token_file
    source = data.Source(files, "uint16", seq_len=50, eot_id=EOT)
    assert source.n_blocks == (len(tokens) - 1) // 50
    blocks = [0, 3, source.n_blocks - 1]
    x, y, doc_ids, targets = data.make_batch([source.block(b) for b in blocks], EOT)
    assert targets == 3 * 50  # counted on the host: every target of a "blocks" row is real
    for row, b in enumerate(blocks):
        assert x[row].tolist() == tokens[b * 50: b * 50 + 50].tolist()
        assert y[row].tolist() == tokens[b * 50 + 1: b * 50 + 51].tolist()
    assert x.dtype == y.dtype == torch.int64
    assert torch.equal(doc_ids, document_ids(x, EOT))


def test_shard_files_read_as_one_stream(tmp_path, token_file):
    """A split cut into shard files gives the same blocks as one file, blocks across a cut included."""
    files, tokens = token_file
    shards = write_files(tmp_path / "shards", tokens, [1234, 1250, 1250, 7000])  # one shard empty
    one, many = data.Source(files, "uint16", 50, EOT), data.Source(shards, "uint16", 50, EOT)
    assert one.n_blocks == many.n_blocks
    for b in range(one.n_blocks):
        assert np.array_equal(one.block(b)[0], many.block(b)[0])
    assert np.array_equal(many.stream.eot_positions(EOT, chunk=999), np.flatnonzero(tokens == EOT))


def test_doc_ids_are_none_without_a_boundary(tmp_path):
    files = write_files(tmp_path, np.arange(1, 501, dtype=np.uint16), [])
    source = data.Source(files, "uint16", seq_len=10, eot_id=0)
    x, y, doc_ids, _ = data.make_batch([source.block(0), source.block(1)], 0)
    assert doc_ids is None and x.shape == (2, 10)


def test_every_block_once_per_epoch_and_epochs_differ(token_file):
    files, _ = token_file
    source = data.Source(files, "uint16", seq_len=50, eot_id=EOT, seed=3)
    n = source.n_blocks
    epoch0 = [source.block_of_draw(k) for k in range(n)]
    epoch1 = [source.block_of_draw(k) for k in range(n, 2 * n)]
    assert sorted(epoch0) == sorted(epoch1) == list(range(n))
    assert epoch0 != epoch1 and epoch0 != list(range(n))
    again = data.Source(files, "uint16", seq_len=50, eot_id=EOT, seed=3)
    assert [again.block_of_draw(k) for k in reversed(range(2 * n))] == list(reversed(epoch0 + epoch1))
    for other in (data.Source(files, "uint16", 50, EOT, seed=4),
                  data.Source(files, "uint16", 50, EOT, seed=3, index=1)):
        assert [other.block_of_draw(k) for k in range(n)] != epoch0


def test_too_short_a_file_is_a_clear_error(tmp_path):
    files = write_files(tmp_path, np.arange(10, dtype=np.uint16), [])
    with pytest.raises(ValueError, match="fewer than one block"):
        data.Source(files, "uint16", seq_len=64, eot_id=0)


def test_eval_blocks_spread_and_capped():
    rows = data.eval_blocks(1000, 10)
    assert len(set(rows)) == 10 and rows[0] == 0 and rows[-1] == 999
    assert data.eval_blocks(5, 10) == [0, 1, 2, 3, 4]
    assert len(set(data.eval_blocks(11, 10))) == 10


# -----------------------------------------------------------------------------
# best-fit packing


def documents_of(tokens):
    """(start, stop) of every document: each opened by an EOT, the first by the stream's start."""
    bounds = sorted(set([0] + np.flatnonzero(tokens == EOT).tolist() + [len(tokens)]))
    return list(zip(bounds[:-1], bounds[1:]))


@pytest.mark.parametrize("window_blocks", [1, 3, 1000])
def test_best_fit_keeps_documents_whole_and_covers_the_stream_once(tmp_path, window_blocks):
    tokens = stream_tokens(20_000, every=40, seed=0)  # random document lengths, some longer than a block
    seq_len = 63
    capacity = seq_len + 1
    files = write_files(tmp_path, tokens, [5000])
    starts, lengths, offsets = data.best_fit_plan(np.flatnonzero(tokens == EOT), len(tokens), capacity, window_blocks)
    # every token of the stream is in exactly one block, and no block overflows
    covered = np.zeros(len(tokens), np.int64)
    for a, n in zip(starts, lengths):
        covered[a:a + n] += 1
    assert (covered == 1).all()
    used = np.add.reduceat(lengths, offsets[:-1])
    assert used.max() <= capacity and (np.diff(offsets) > 0).all()
    # a document that fits a block is one piece; a piece without an EOT in front leads its block
    piece_starts = set(starts.tolist())
    for a, b in documents_of(tokens):
        if b - a <= capacity:
            assert a in piece_starts and lengths[starts.tolist().index(a)] == b - a
    for block in range(len(offsets) - 1):
        for p in range(offsets[block] + 1, offsets[block + 1]):
            assert tokens[starts[p]] == EOT
    # the only loss is padding, and a wide window leaves almost none
    assert len(tokens) / (capacity * (len(offsets) - 1)) > {1: 0.6, 3: 0.8, 1000: 0.99}[window_blocks]

    # a source packs with the default window and caches its plan
    source = data.Source(files, "uint16", seq_len, EOT, packing="best_fit", plan_path=tmp_path / "packing" / "plan.npz")
    default = data.best_fit_plan(np.flatnonzero(tokens == EOT), len(tokens), capacity)
    assert np.array_equal(source.offsets, default[2]) and (tmp_path / "packing" / "plan.npz").is_file()
    cached = data.Source(files, "uint16", seq_len, EOT, packing="best_fit", plan_path=tmp_path / "packing" / "plan.npz")
    assert np.array_equal(cached.starts, source.starts) and np.array_equal(cached.offsets, source.offsets)
    (tmp_path / "packing" / "plan.npz").write_bytes(b"torn")  # an unreadable plan is made again
    remade = data.Source(files, "uint16", seq_len, EOT, "best_fit", plan_path=tmp_path / "packing" / "plan.npz")
    assert np.array_equal(remade.offsets, source.offsets)
    # a split prepared again (same size, other tokens) is packed again, not read from the stale plan
    other = stream_tokens(20_000, every=25, seed=1)
    files = write_files(tmp_path, other, [5000])
    repacked = data.Source(files, "uint16", seq_len, EOT, "best_fit", plan_path=tmp_path / "packing" / "plan.npz")
    expected = data.best_fit_plan(np.flatnonzero(other == EOT), len(other), capacity)
    assert np.array_equal(repacked.offsets, expected[2]) and not np.array_equal(repacked.offsets, source.offsets)


def test_packing_plan_goes_through_the_one_atomic_write(tmp_path, monkeypatch):
    """The cached plan is written by files.write_atomic (temp file, fsync, rename): a kill leaves no torn plan."""
    import files
    written, original = [], files.write_atomic

    def recording(path, write):
        written.append(path)
        return original(path, write)

    monkeypatch.setattr(files, "write_atomic", recording)
    source_files = write_files(tmp_path, stream_tokens(), [])
    data.Source(source_files, "uint16", 50, EOT, packing="best_fit", plan_path=tmp_path / "packing" / "plan.npz")
    assert written == [tmp_path / "packing" / "plan.npz"]
    assert sorted(p.name for p in (tmp_path / "packing").iterdir()) == ["plan.npz"]


def test_an_unwritable_packing_cache_is_only_a_warning(tmp_path, monkeypatch, capsys):
    """A read-only data directory (a shared data set, say) still trains: the plan is a cache, made again next time."""
    import files

    def read_only(path, write):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(files, "write_atomic", read_only)
    source_files = write_files(tmp_path, stream_tokens(), [])
    plan_path = tmp_path / "packing" / "plan.npz"
    source = data.Source(source_files, "uint16", 50, EOT, packing="best_fit", plan_path=plan_path)
    assert source.n_blocks > 0 and not plan_path.exists()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "warning: " in err and "Read-only file system" in err and str(plan_path) in err


def test_best_fit_rows_pad_with_ignored_targets(tmp_path):
    tokens = np.array([1, 2, 3, EOT, 4, 5, EOT, 6, EOT, 7, 8, 1, 2, 3], np.uint16)
    files = write_files(tmp_path, tokens, [])
    source = data.Source(files, "uint16", 7, EOT, packing="best_fit")  # blocks of 8 tokens
    x, y, doc_ids, targets = data.make_batch([source.block(b) for b in range(source.n_blocks)], EOT)
    assert targets == int((y != -1).sum())
    # [1 2 3] leads a block (no EOT before it); [EOT 7 8 1 2 3] takes a block of its own; [EOT 4 5]
    # then [EOT 6] fill the first block exactly. The second block's first pad (EOT) is the true next
    # token after its document, so it stays a target; the pad after it is not one.
    assert x.tolist() == [[1, 2, 3, EOT, 4, 5, EOT], [EOT, 7, 8, 1, 2, 3, EOT]]
    assert y.tolist() == [[2, 3, EOT, 4, 5, EOT, 6], [7, 8, 1, 2, 3, EOT, -1]]
    assert torch.equal(doc_ids, document_ids(x, EOT))


# -----------------------------------------------------------------------------
# mixtures


def shares_drawn(mixture, checkpoints):
    """Fraction of each entry drawn at each checkpoint (in examples)."""
    out, t = [], 0
    for c in checkpoints:
        mixture.draws(t, c - t)
        t = c
        out.append([sum(d) / sum(n) for d, n in zip(mixture.drawn, mixture.sizes)])
    return out


def test_balance_remaining_drains_sources_at_the_same_rate():
    sizes = [[30_000], [10_000]]
    mixture = data.Mixture(sizes, "balance_remaining", seed=0)
    quarters = [10_000, 20_000, 30_000, 40_000]
    for big, small in shares_drawn(mixture, quarters):
        assert abs(big - small) < 0.02
    assert mixture.drawn == [[30_000], [10_000]]  # continues until every source is exhausted
    # then a new epoch of both
    mixture.draws(40_000, 4000)
    assert mixture.epochs == [1, 1] and sum(map(sum, mixture.drawn)) == 44_000


def test_a_group_drains_its_members_together():
    """An entry 'a+b' shares its draws between its members by what each has left."""
    mixture = data.Mixture([[6000, 2000], [100]], "fixed", weights=(0.5, 0.5), seed=1)
    mixture.draws(0, 4000)
    (a, b), _ = mixture.drawn
    assert abs(a / 6000 - b / 2000) < 0.05


def test_soft_sequential_fades_the_first_source_exponentially():
    n_first = 2000
    mixture = data.Mixture([[n_first], [10**9]], "soft_sequential", seed=0)
    t_points = [500, 1000, 2000, 4000, 8000]
    expected_var = 0.0
    t = 0
    for point in t_points:
        mixture.draws(t, point - t)
        for s in range(t, point):
            p = math.exp(-s / n_first)
            expected_var += p * (1 - p)
        t = point
        drawn_first = mixture.drawn[0][0]
        expected = n_first * (1 - math.exp(-point / n_first))  # integral of p(t) = exp(-t / N)
        assert abs(drawn_first - expected) < 4 * math.sqrt(expected_var) + 2, (point, drawn_first, expected)
    # the probability itself: share of first-source draws in a late window against exp(-t/N)
    window = mixture.draws(8000, 2000)
    late = sum(i == 0 for i, _, _ in window) / 2000
    p = sum(math.exp(-s / n_first) for s in range(8000, 10000)) / 2000
    assert abs(late - p) < 4 * math.sqrt(p / 2000) + 1e-3


def test_fixed_weights_hold_within_three_standard_errors():
    weights = (0.5, 0.3, 0.2)
    mixture = data.Mixture([[50], [70], [1000]], "fixed", weights=weights, seed=5)
    n = 20_000
    counts = np.bincount([i for i, _, _ in mixture.draws(0, n)], minlength=3)
    for count, w in zip(counts, weights):
        assert abs(count / n - w) < 3 * math.sqrt(w * (1 - w) / n)
    assert mixture.epochs[0] >= n * 0.5 // 50 - 1  # small sources cycle through their epochs on their own


def test_draws_are_a_pure_function_of_seed_and_example():
    sizes = [[300], [100, 50]]
    straight = data.Mixture(sizes, "soft_sequential", seed=7).draws(0, 900)
    # resumed from saved counters, and replayed from scratch when asked for an earlier example
    first = data.Mixture(sizes, "soft_sequential", seed=7)
    first.draws(0, 400)
    resumed = data.Mixture(sizes, "soft_sequential", seed=7)
    resumed.load_state_dict(first.state_dict())
    assert first.draws(0, 400) + resumed.draws(400, 500) == straight
    assert data.Mixture(sizes, "soft_sequential", seed=8).draws(0, 900) != straight
    with pytest.raises(ValueError, match="not the checkpoint's"):
        data.Mixture([[301], [100, 50]], "soft_sequential", seed=7).load_state_dict(first.state_dict())


def test_mixture_errors_are_one_line():
    with pytest.raises(ValueError, match="one non-negative weight per data entry"):
        data.Mixture([[1], [2]], "fixed", weights=(1.0,))
    with pytest.raises(ValueError, match="is not one of"):
        data.Mixture([[1]], "uniform")
    with pytest.raises(ValueError, match="names a source twice"):
        data.parse_entries("a,b+a")


# -----------------------------------------------------------------------------
# the run's data: several prepared directories


@pytest.fixture
def two_sources(tmp_path):
    rng = np.random.default_rng(0)
    write_prepared(tmp_path, "big", rng.integers(0, 9, 30_000), rng.integers(0, 9, 3000), val_bytes_per_token=2)
    write_prepared(tmp_path, "small", rng.integers(10, 19, 10_000), rng.integers(10, 19, 1000))
    return tmp_path


@pytest.mark.parametrize("world_size", [2, 4])
def test_global_batch_is_independent_of_process_count(two_sources, world_size):
    """1 process x grad_accum 4 reads exactly the rows that world_size processes read between them."""
    batch_size, global_rows = 2, 8

    def global_batch(step, n_processes):
        training_data = data.TrainingData(two_sources, "big,small", 50, seed=1)
        grad_accum = global_rows // (batch_size * n_processes)
        return torch.cat([training_data.micro_batch(step, m, r, batch_size, grad_accum, n_processes)[0]
                          for m in range(grad_accum) for r in range(n_processes)])

    for step in (0, 1, 7, 100):  # step 100 is past the first epoch of both sources
        assert torch.equal(global_batch(step, 1), global_batch(step, world_size))
    # rows come from both sources (tokens < 9 are "big"'s, >= 10 "small"'s)
    rows = global_batch(3, 1)
    assert (rows.max(dim=1).values < 9).any() and (rows.min(dim=1).values >= 10).any()


def test_eval_sets_per_source_and_named(two_sources):
    """Every source is evaluated; eval_loss and eval_bpb pool the named eval set (default: the training sources)."""
    write_prepared(two_sources, "held_out", np.full(1000, 20), np.full(1000, 20), val_bytes_per_token=4)
    training_data = data.TrainingData(two_sources, "big+small", 50, eval_spec="small+held_out")
    assert training_data.eval_names == ["big", "small", "held_out"]
    assert list(training_data.val) == training_data.eval_names
    batches = list(training_data.eval_batches("small", 7, rank=0, world_size=1, batch_size=4))
    assert all((x >= 10).all() for x, _, _, _ in batches)
    # the last batch holds 3 blocks and a padding row of no targets: every batch has the shape a compiled model
    # was compiled for
    assert [len(x) for x, _, _, _ in batches] == [4, 4] and [targets for *_, targets in batches] == [4 * 50, 3 * 50]
    assert (batches[1].y[3] == -1).all() and (batches[1].y[:3] != -1).all()
    loss, bpb, per_source = training_data.eval_summary({"big": (10.0, 10), "small": (60.0, 30), "held_out": (30.0, 10)})
    assert loss == 90.0 / 40  # small and held_out pooled; big is not in the named set
    assert bpb == pytest.approx(90.0 / math.log(2) / (30 * 3 + 10 * 4))  # the bytes of each source's text
    assert per_source == {"eval_loss/big": 1.0, "eval_loss/small": 2.0, "eval_loss/held_out": 3.0}
    alone = data.TrainingData(two_sources, "small", 50)
    assert alone.eval_names == ["small"] and alone.eval_summary({"small": (60.0, 30)})[::2] == (2.0, {})
    default = data.TrainingData(two_sources, "big,small", 50)
    loss, bpb, _ = default.eval_summary({"big": (10.0, 10), "small": (90.0, 30)})
    assert loss == 2.5 and bpb == pytest.approx(100.0 / math.log(2) / (10 * 2 + 30 * 3))


def test_mismatched_tokenizers_are_refused(two_sources):
    write_prepared(two_sources, "other", np.zeros(1000), np.zeros(1000), tokenizer="bytes")
    with pytest.raises(ValueError, match="every source needs the same tokenizer"):
        data.TrainingData(two_sources, "big,other", 50)
    with pytest.raises(ValueError, match="data 'missing'"):
        data.TrainingData(two_sources, "big,missing", 50)


@pytest.mark.parametrize("packing", ["blocks", "best_fit"])
@pytest.mark.parametrize("split", ["train", "val"])
def test_a_token_id_past_the_vocabulary_names_the_file(tmp_path, packing, split):
    """A damaged .bin (an id >= vocab_size) stops with one line naming the file and the id, as the blocks are read
    (or while the packing plan is made), never an IndexError in the model's embedding."""
    rng = np.random.default_rng(0)
    train, val = rng.integers(0, 9, 3000), rng.integers(0, 9, 1000)
    (train if split == "train" else val)[777] = 300  # the bytes tokenizer has 257 ids
    write_prepared(tmp_path, "bad", train, val, tokenizer="bytes")
    bad_file = tmp_path / "bad" / f"{split}.bin"
    with pytest.raises(ValueError) as info:
        training_data = data.TrainingData(tmp_path, "bad", 50, packing=packing)
        for step in range(2):  # a global batch of 64 rows: every train block of the first epoch
            training_data.micro_batch(step, 0, 0, 64, 1, 1)
        list(training_data.eval_batches("bad", 100, 0, 1, 8))
    message = str(info.value)
    assert f"{bad_file} holds token id 300 at token 777" in message and "vocabulary of 257" in message, message
    assert "\n" not in message
    if packing == "blocks":  # found while training or evaluating: a type train.py catches around those calls
        assert isinstance(info.value, data.DamagedDataError)
