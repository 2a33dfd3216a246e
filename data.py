"""Token files -> training batches.

A prepared split (data/<name>/train.bin) is one long stream of token ids in which documents are
separated by the end-of-text token. We cut it into blocks of seq_len + 1 tokens (a block's last
token is the next block's first, so every token is a target exactly once per epoch) and shuffle
the blocks once per epoch with a generator seeded by (seed, epoch).

The global order is a pure function of the seed and the *global example index*: example g is
block perm_epoch[g % n_blocks] of epoch g // n_blocks. Step s consumes the examples
[s * G, (s + 1) * G) where G = batch_size * grad_accum * world_size; within a step, micro-batch m
holds the next batch_size * world_size examples and rank r reads its batch_size of them. So one
process with grad_accum=2 and two processes with grad_accum=1 see the same examples at every
step, and a resumed run needs nothing but the step number to continue the same order.
"""
import numpy as np
import torch

from model import document_ids


class BlockSource:
    """One token file seen as shuffled blocks of seq_len + 1 tokens."""

    def __init__(self, path, dtype, seq_len, eot_id, seed=0):
        self.path, self.dtype, self.seq_len, self.eot_id, self.seed = path, np.dtype(dtype), seq_len, eot_id, seed
        self.n_tokens = len(self._tokens())
        self.n_blocks = (self.n_tokens - 1) // seq_len
        if self.n_blocks < 1:
            raise ValueError(f"{path} holds {self.n_tokens} tokens, fewer than one block of seq_len+1={seq_len + 1}")
        self._epoch, self._perm = None, None

    def _tokens(self):
        # A fresh memmap per read: numpy memmaps keep every page they touched referenced, so a
        # long-lived one makes the process grow until the whole file is resident.
        return np.memmap(self.path, dtype=self.dtype, mode="r")

    def block_of_example(self, example):
        """The block index that global example `example` reads (a fresh permutation each epoch)."""
        epoch, position = divmod(example, self.n_blocks)
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._epoch, self._perm = epoch, rng.permutation(self.n_blocks)
        return int(self._perm[position])

    def blocks(self, block_indices, device="cpu"):
        """(x, y, doc_ids) for the given blocks: x and y are (B, seq_len) int64, y is x shifted by one.

        doc_ids is None when no row holds a document boundary (the model then uses plain causal
        attention, its fastest path); otherwise it numbers the documents of each row.
        """
        tokens = self._tokens()
        rows = np.stack([tokens[b * self.seq_len: b * self.seq_len + self.seq_len + 1] for b in block_indices])
        rows = torch.from_numpy(rows.astype(np.int64))
        x, y = rows[:, :-1], rows[:, 1:]
        doc_ids = document_ids(x, self.eot_id) if bool((x == self.eot_id).any()) else None
        if torch.device(device).type == "cuda":
            x, y = x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
            doc_ids = None if doc_ids is None else doc_ids.to(device, non_blocking=True)
        return x, y, doc_ids

    def examples(self, example_indices, device="cpu"):
        return self.blocks([self.block_of_example(g) for g in example_indices], device)


def micro_batch_examples(step, micro_step, rank, batch_size, grad_accum, world_size):
    """Global example indices that `rank` reads at micro-step `micro_step` of optimizer step `step`."""
    examples_per_micro_step = batch_size * world_size
    start = (step * grad_accum + micro_step) * examples_per_micro_step + rank * batch_size
    return range(start, start + batch_size)


def eval_blocks(n_blocks, n_rows):
    """A fixed set of validation blocks spread evenly over the split (all of them if it is small).

    Evenly spread rather than the first n_rows, so a short eval still samples the whole split.
    """
    if n_rows >= n_blocks:
        return list(range(n_blocks))
    return np.linspace(0, n_blocks - 1, n_rows).round().astype(np.int64).tolist()
