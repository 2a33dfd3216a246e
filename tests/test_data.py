"""data.py: blocks, the global order and each rank's slice."""
import numpy as np
import pytest
import torch

import data
from model import document_ids

EOT = 9


@pytest.fixture
def token_file(tmp_path):
    """A stream of 10,001 tokens with an end-of-text every 37 tokens."""
    tokens = (np.arange(10_001) % 7).astype(np.uint16)
    tokens[::37] = EOT
    path = tmp_path / "train.bin"
    tokens.tofile(path)
    return path, tokens


def test_blocks_are_slices_of_the_stream(token_file):
    path, tokens = token_file
    source = data.BlockSource(path, "uint16", seq_len=50, eot_id=EOT, seed=0)
    assert source.n_blocks == (len(tokens) - 1) // 50
    x, y, doc_ids = source.blocks([0, 3, source.n_blocks - 1])
    for row, b in enumerate([0, 3, source.n_blocks - 1]):
        assert x[row].tolist() == tokens[b * 50: b * 50 + 50].tolist()
        assert y[row].tolist() == tokens[b * 50 + 1: b * 50 + 51].tolist()
    assert x.dtype == y.dtype == torch.int64
    assert torch.equal(doc_ids, document_ids(x, EOT))


def test_doc_ids_are_none_without_a_boundary(tmp_path):
    path = tmp_path / "train.bin"
    np.arange(1, 501, dtype=np.uint16).tofile(path)
    x, y, doc_ids = data.BlockSource(path, "uint16", seq_len=10, eot_id=0).blocks([0, 1])
    assert doc_ids is None and x.shape == (2, 10)


def test_every_block_once_per_epoch_and_epochs_differ(token_file):
    source = data.BlockSource(token_file[0], "uint16", seq_len=50, eot_id=EOT, seed=3)
    n = source.n_blocks
    epoch0 = [source.block_of_example(g) for g in range(n)]
    epoch1 = [source.block_of_example(g) for g in range(n, 2 * n)]
    assert sorted(epoch0) == sorted(epoch1) == list(range(n))
    assert epoch0 != epoch1 and epoch0 != list(range(n))
    # a pure function of (seed, example): asking out of order gives the same answer, another seed another order
    again = data.BlockSource(token_file[0], "uint16", seq_len=50, eot_id=EOT, seed=3)
    assert [again.block_of_example(g) for g in reversed(range(2 * n))] == list(reversed(epoch0 + epoch1))
    other = data.BlockSource(token_file[0], "uint16", seq_len=50, eot_id=EOT, seed=4)
    assert [other.block_of_example(g) for g in range(n)] != epoch0


@pytest.mark.parametrize("world_size", [2, 4])
def test_global_batch_is_independent_of_process_count(token_file, world_size):
    """1 process x grad_accum 4 reads exactly the rows that world_size processes read between them."""
    source = data.BlockSource(token_file[0], "uint16", seq_len=50, eot_id=EOT, seed=1)
    batch_size, global_rows = 2, 8
    for step in (0, 1, 7, 25):  # step 25 crosses into the second epoch
        single = [g for m in range(global_rows // batch_size)
                  for g in data.micro_batch_examples(step, m, 0, batch_size, global_rows // batch_size, 1)]
        grad_accum = global_rows // (batch_size * world_size)
        multi = [g for m in range(grad_accum) for r in range(world_size)
                 for g in data.micro_batch_examples(step, m, r, batch_size, grad_accum, world_size)]
        assert single == multi == list(range(step * global_rows, (step + 1) * global_rows))
        x_single = source.examples(single)[0]
        x_multi = torch.cat([source.examples(data.micro_batch_examples(step, m, r, batch_size, grad_accum, world_size))[0]
                             for m in range(grad_accum) for r in range(world_size)])
        assert torch.equal(x_single, x_multi)


def test_eval_blocks_spread_and_capped():
    rows = data.eval_blocks(1000, 10)
    assert len(set(rows)) == 10 and rows[0] == 0 and rows[-1] == 999
    assert data.eval_blocks(5, 10) == [0, 1, 2, 3, 4]
    assert len(set(data.eval_blocks(11, 10))) == 10


def test_too_short_a_file_is_a_clear_error(tmp_path):
    path = tmp_path / "val.bin"
    np.arange(10, dtype=np.uint16).tofile(path)
    with pytest.raises(ValueError, match="fewer than one block"):
        data.BlockSource(path, "uint16", seq_len=64, eot_id=0)
