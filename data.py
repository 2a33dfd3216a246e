"""The prepared-data format, and token files -> training batches: blocks, packing, mixtures of sources, the global
order.

A prepared directory (written by prepare.py) holds meta.json (the tokenizer's name, its vocab_size, eot_id and token
dtype, the source, and per split its token, byte and document counts) and the token files of each split:
read_meta checks a directory and split_files lists a split's files. Every script that reads prepared data comes here
for them; the tokenizers themselves are tokenizer.py's.

A prepared split (data/<name>/train.bin, or the shard files its meta.json lists) is one long
stream of token ids in which every document is followed by the end-of-text token. A *source* cuts
that stream into blocks of seq_len + 1 tokens, in one of two ways:

- "blocks": block b is tokens [b * seq_len, b * seq_len + seq_len + 1). A block's last token is the
  next block's first, so every token is a target exactly once per epoch; documents are cut at
  block edges and nothing is padded.
- "best_fit": documents are kept whole where they fit. Each [EOT, document] piece goes, longest
  first, into the fullest block it still fits in (best-fit decreasing, within windows of the
  stream); a document longer than a block fills whole blocks and its tail is packed like a short
  one. The unused end of a block is padding whose targets are -1 (ignored by the loss). The plan
  is cached beside the data (packing/<split>_<seq_len>.npz).

Several sources are mixed per *example* (one row of the global batch). The run's `data` names
entries separated by commas; an entry "a+b" is a group of sources drawn as one, in proportion to
what each has left (the reference's interleaved SmolLM mix). A policy picks the entry of every
example (docs/reference.md, "Data"):

- fixed: entry i with probability weight_i; each source starts a new epoch when it runs out.
- balance_remaining: entry i with probability proportional to its unseen examples this epoch.
- soft_sequential: w_i = r_i * prod_{j<i} (1 - r_j), r_i = the share of entry i still unseen:
  entry 0 fades out as exp(-t / N_0) while the rest take over (a soft curriculum).
With balance_remaining and soft_sequential every source is drawn until all are exhausted; then
every source starts its next epoch. Within a source, its k-th draw reads block perm[k % n] of
a permutation seeded by (seed, source, k // n).

The draws are a pure function of the seed and the *global example index*: example g uses the
uniform numbers hash(seed, g), and the policy only looks at how many examples each source has
given so far. Step s consumes examples [s * G, (s + 1) * G) with G = batch_size * grad_accum *
world_size; within a step, micro-step m holds the next batch_size * world_size examples and rank r
reads its batch_size of them. Every rank draws the whole global batch (microseconds) and reads its
own rows, so 1 process with grad_accum=4 and 4 processes see the same examples at every step. The
draw counters are saved in checkpoints (state_dict); without them the order is replayed from 0.
"""
import bisect
import json
import math
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from tqdm import tqdm

import files
import tokenizer as tokenizer_lib
from attention import document_ids
from config import UserError

PACKINGS = ("blocks", "best_fit")
MIXTURES = ("fixed", "balance_remaining", "soft_sequential")
PACK_WINDOW_BLOCKS = 4096  # best-fit packs the documents of this many blocks' worth of stream at a time
PACK_PROGRESS_TOKENS = 50_000_000  # splits this big show a progress bar while their packing plan is made


class DamagedDataError(UserError, ValueError):
    """A token file holds an id at or past the vocabulary (a damaged file, or one that does not belong to its
    meta.json): found as blocks are read, so while training or evaluating. The message is one line naming the file
    (a UserError: the command line reports it as one)."""


# -----------------------------------------------------------------------------
# the prepared-data format: the tokenizers that read it, meta.json and the files of each split

META_FIELDS = ("tokenizer", "vocab_size", "eot_id", "dtype", "source", "val_fraction", "train", "val")


def meta_header(tokenizer, source_name, val_fraction, enc=None):
    """The fields of meta.json that describe the tokens, before the per-split counts. enc: the tokenizer called
    `tokenizer` (needed for a tokenizer.json's, whose name is its sha256: tokenizer_lib)."""
    enc = enc or tokenizer_lib.load_tokenizer(tokenizer)
    return {"tokenizer": tokenizer, "vocab_size": enc.n_vocab, "eot_id": enc.eot_token,
            "dtype": tokenizer_lib.token_dtype(enc.n_vocab).name, "source": source_name, "val_fraction": val_fraction}


def split_files(data_dir, meta, split):
    """[(path, tokens), ...] of one split, in order: the shard files that meta.json lists, else <split>.bin."""
    data_dir = Path(data_dir)
    if "files" in meta[split]:
        return [(data_dir / rel, n_tokens) for rel, n_tokens in meta[split]["files"]]
    return [(data_dir / f"{split}.bin", meta[split]["tokens"])]


def read_meta(data_dir):
    """meta.json of a prepared directory, after checking its tokenizer fields and that every .bin file matches its
    token count (the token ids themselves are checked as data.py reads them)."""
    path = Path(data_dir) / "meta.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: prepare the data first (python prepare.py ...)")
    try:
        meta = json.loads(path.read_text())
        missing = [k for k in META_FIELDS if k not in meta]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        # an unknown name, or a tokenizer.json that is not the one named, is a ValueError
        enc = tokenizer_lib.of_directory(data_dir, meta["tokenizer"], meta["eot_id"])
        for key, value in {"vocab_size": enc.n_vocab, "dtype": tokenizer_lib.token_dtype(enc.n_vocab).name}.items():
            if meta[key] != value or isinstance(meta[key], bool):
                raise ValueError(f"{key} {meta[key]!r} is not {value!r}, that of tokenizer {meta['tokenizer']!r}")
        if not (isinstance(meta["eot_id"], int) and 0 <= meta["eot_id"] < enc.n_vocab):
            raise ValueError(f"eot_id {meta['eot_id']!r} is outside the vocabulary [0, {enc.n_vocab})")
        itemsize = np.dtype(meta["dtype"]).itemsize
        expected = []
        for split in ("train", "val"):
            files = split_files(data_dir, meta, split)
            if sum(n_tokens for _, n_tokens in files) != meta[split]["tokens"]:
                raise ValueError(f"the {split} files do not add up to its {meta[split]['tokens']} tokens")
            expected += [(bin_path, n_tokens * itemsize) for bin_path, n_tokens in files]
    except (ValueError, KeyError, TypeError) as e:
        reason = (f"not valid JSON ({e})" if isinstance(e, json.JSONDecodeError) else
                  f"no field {e} in it" if isinstance(e, KeyError) else e)  # a split without its "tokens", say
        raise ValueError(f"{path}: {reason}; prepare the data again") from None
    for bin_path, size in expected:
        actual = bin_path.stat().st_size if bin_path.is_file() else None
        if actual != size:
            raise ValueError(f"{bin_path} has {actual} bytes but meta.json says {size}; prepare the data again")
    return meta


# -----------------------------------------------------------------------------
# a split as one stream of tokens, over one or several files


class TokenStream:
    """The files of a split read as one array: stream[a:b] may span several shard files. With vocab_size, every
    read checks its ids (one max over the tokens read: ~2 us a read, beside ~30 us to read a 257-token block)."""

    def __init__(self, files, dtype, vocab_size=None):
        self.files, self.dtype, self.vocab_size = [(Path(p), n) for p, n in files], np.dtype(dtype), vocab_size
        self.starts = np.cumsum([0] + [n for _, n in self.files])
        self.n_tokens = int(self.starts[-1])

    def read(self, *ranges):
        """The tokens of ranges (start, stop) of the stream, concatenated into one array (a copy)."""
        # A fresh memmap per call, one per file it touches: numpy memmaps keep every page they touched
        # referenced, so a long-lived one makes the process grow until the whole file is resident.
        maps, pieces, origins = {}, [], []
        for start, stop in ranges:
            i = int(np.searchsorted(self.starts, start, side="right")) - 1
            while start < stop:
                path, n = self.files[i]
                lo, hi = start - self.starts[i], min(stop - self.starts[i], n)
                if hi > lo:  # an empty shard (no val documents, say) cannot be mapped, and holds nothing
                    if i not in maps:
                        maps[i] = np.memmap(path, dtype=self.dtype, mode="r")
                    pieces.append(maps[i][lo:hi])
                    origins.append((path, lo))
                    start += hi - lo
                i += 1
        tokens = np.concatenate(pieces)
        if self.vocab_size is not None and tokens.max(initial=0) >= self.vocab_size:
            for piece, (path, lo) in zip(pieces, origins):  # which file, and where: only when one is bad
                bad = np.flatnonzero(piece >= self.vocab_size)
                if len(bad):
                    raise DamagedDataError(f"{path} holds token id {piece[bad[0]]} at token {lo + bad[0]}, past "
                                           f"the vocabulary of {self.vocab_size}: the file is damaged; prepare the "
                                           "data again")
        return tokens

    def eot_positions(self, eot_id, chunk=1 << 24, progress=None):
        positions = [np.zeros(0, np.int64)]
        for a in range(0, self.n_tokens, chunk):
            positions.append(np.flatnonzero(self.read((a, min(a + chunk, self.n_tokens))) == eot_id) + a)
            if progress is not None:
                progress.update(min(chunk, self.n_tokens - a))
        return np.concatenate(positions)

    def fingerprint(self):
        """Token count and modification time of every file: what a cached packing plan was made from."""
        return np.array([[n, path.stat().st_mtime_ns] for path, n in self.files], dtype=np.int64)


# -----------------------------------------------------------------------------
# best-fit packing


def best_fit_plan(eot_positions, n_tokens, capacity, window_blocks=PACK_WINDOW_BLOCKS, progress=None):
    """Pack the stream's documents into blocks of `capacity` tokens; returns (starts, lengths, offsets).

    Block b holds the pieces starts[offsets[b]:offsets[b+1]] (stream positions, with their lengths),
    in order. A document is [EOT, its tokens]. One longer than a block is cut into full blocks and a
    tail; the tail, and the stream's first document (no EOT before it), open a block of their own
    and lead it, so that no piece without an EOT ever runs on from another document.
    """
    bounds = np.unique(np.concatenate([[0], eot_positions, [n_tokens]]).astype(np.int64))
    starts, lengths, offsets = [], [], [0]
    document = 0
    while document < len(bounds) - 1:
        # the documents that start in the next window of the stream
        last = int(np.searchsorted(bounds, bounds[document] + window_blocks * capacity))
        last = min(max(last, document + 1), len(bounds) - 1)
        bins = []  # [free space, [(start, length), ...]]
        loose = []  # (length, start) of whole documents, to be packed longest first
        for a, b in zip(bounds[document:last].tolist(), bounds[document + 1:last + 1].tolist()):
            if b - a <= capacity and a > 0:
                loose.append((b - a, a))
                continue
            while b - a > capacity:
                bins.append([0, [(a, capacity)]])
                a += capacity
            bins.append([capacity - (b - a), [(a, b - a)]])
        free = sorted((space, i) for i, (space, _) in enumerate(bins) if space > 0)
        for length, a in sorted(loose, key=lambda item: (-item[0], item[1])):
            j = bisect.bisect_left(free, (length, -1))  # the fullest block with room for it
            if j == len(free):
                bins.append([capacity, []])
                i = len(bins) - 1
            else:
                i = free.pop(j)[1]
            bins[i][0] -= length
            bins[i][1].append((a, length))
            if bins[i][0] > 0:
                bisect.insort(free, (bins[i][0], i))
        for _, pieces in bins:
            starts += [a for a, _ in pieces]
            lengths += [n for _, n in pieces]
            offsets.append(len(starts))
        if progress is not None:
            progress.update(int(bounds[last] - bounds[document]))
        document = last
    return np.array(starts, np.int64), np.array(lengths, np.int64), np.array(offsets, np.int64)


# -----------------------------------------------------------------------------
# a source: one split of one prepared directory, as blocks


class Source:
    """One split (train or val) of a prepared directory, cut into blocks of seq_len + 1 tokens.

    Its k-th draw reads block perm[k % n_blocks] of a permutation seeded by (seed, index, k // n_blocks):
    every block once per epoch, a fresh order each epoch, a different one for every source.
    """

    def __init__(self, files, dtype, seq_len, eot_id, packing="blocks", seed=0, index=0, plan_path=None,
                 vocab_size=None):
        self.stream = TokenStream(files, dtype, vocab_size)  # with vocab_size, every block read is checked
        self.seq_len, self.eot_id, self.packing = seq_len, eot_id, packing
        self.seed, self.index = seed, index
        if self.stream.n_tokens < seq_len + 1:
            raise ValueError(f"{files[0][0]} holds {self.stream.n_tokens} tokens, "
                             f"fewer than one block of seq_len+1={seq_len + 1}")
        if packing == "blocks":
            self.n_blocks = (self.stream.n_tokens - 1) // seq_len
        else:
            self.starts, self.lengths, self.offsets = self._best_fit(plan_path)
            self.n_blocks = len(self.offsets) - 1
        self._perms = {}

    def _best_fit(self, plan_path):
        fingerprint = self.stream.fingerprint()
        if plan_path is not None and plan_path.is_file():
            try:
                with np.load(plan_path) as plan:
                    if np.array_equal(plan["fingerprint"], fingerprint):  # else the split was prepared again since
                        return plan["starts"], plan["lengths"], plan["offsets"]
            except (OSError, ValueError, KeyError):  # unreadable, or from an older data.py: made again
                pass
        n = self.stream.n_tokens  # ~1 minute for 10B tokens: a bar (a scan for end-of-text, then the packing)
        with tqdm(total=2 * n, unit="tok", unit_scale=True, desc="best-fit packing",
                  disable=n < PACK_PROGRESS_TOKENS) as bar:
            eot_positions = self.stream.eot_positions(self.eot_id, progress=bar)
            plan = best_fit_plan(eot_positions, n, self.seq_len + 1, progress=bar)
        if plan_path is not None:  # every rank may compute it; each writes whole, identical files
            try:
                plan_path.parent.mkdir(exist_ok=True)
                files.write_atomic(plan_path, lambda f: np.savez(f, starts=plan[0], lengths=plan[1], offsets=plan[2],
                                                                 fingerprint=fingerprint))
            except (OSError, UserError) as e:  # a read-only data directory, a full disk: the plan is only a cache
                reason = (e.strerror or e) if isinstance(e, OSError) else e  # a UserError: files.write_error's line
                print(f"warning: cannot cache the packing plan as {plan_path} ({reason}); it is made again next time",
                      file=sys.stderr)
        return plan

    def block_of_draw(self, k):
        epoch, position = divmod(k, self.n_blocks)
        if epoch not in self._perms:
            if len(self._perms) > 1:  # draws only move forward: keep this epoch and the next
                self._perms.pop(min(self._perms))
            self._perms[epoch] = np.random.default_rng([self.seed, self.index, epoch]).permutation(self.n_blocks)
        return int(self._perms[epoch][position])

    def block(self, b):
        """(tokens, targets): seq_len + 1 token ids, and how many of its seq_len targets are real (then padding)."""
        if self.packing == "blocks":
            return self.stream.read((b * self.seq_len, (b + 1) * self.seq_len + 1)), self.seq_len
        first, last = self.offsets[b], self.offsets[b + 1]
        starts, lengths = self.starts[first:last], self.lengths[first:last]
        row = self.stream.read(*zip(starts, starts + lengths))  # its documents, through one memmap
        used = len(row)
        # padding is end-of-text: the first pad is the true next token after the block's last
        # document (its end), the rest are not targets
        row = np.concatenate([row, np.full(self.seq_len + 1 - used, self.eot_id, row.dtype)])
        return row, min(used, self.seq_len)


class Batch(NamedTuple):
    """One batch of rows, on the device it trains on."""
    x: torch.Tensor                # (B, seq_len) int64 token ids
    y: torch.Tensor                # (B, seq_len) int64 next tokens, -1 where there is none (padding)
    doc_ids: torch.Tensor | None   # (B, seq_len) document index of each token; None: no row holds a boundary
    targets: int                   # how many of y are not -1: counted on the host, so no step waits on the device


def make_batch(blocks, eot_id, device="cpu", n_rows=None):
    """[(tokens, targets), ...] -> Batch: y = x shifted, -1 on padding.

    doc_ids is None when no row holds a document boundary (the model then uses plain causal
    attention, its fastest path); otherwise it numbers the documents of each row. n_rows: pad the batch to
    this many rows with rows of no targets (an eval's last batch keeps the shape of the others, so a
    compiled model compiles nothing new for it).
    """
    padding = [(blocks[0][0], 0)] * (n_rows - len(blocks)) if n_rows else []
    tokens = np.stack([tokens for tokens, _ in blocks + padding]).astype(np.int64)
    has_boundary = bool((tokens[:, :-1] == eot_id).any())  # numpy: no torch scalar read, on any device
    rows = torch.from_numpy(tokens)
    x, y = rows[:, :-1], rows[:, 1:].clone()
    for i, (_, targets) in enumerate(blocks + padding):
        y[i, targets:] = -1
    doc_ids = document_ids(x, eot_id) if has_boundary else None
    if torch.device(device).type == "cuda":  # pinned, so that the copies run beside the step
        x, y = x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        doc_ids = None if doc_ids is None else doc_ids.pin_memory().to(device, non_blocking=True)
    return Batch(x, y, doc_ids, sum(targets for _, targets in blocks))


def document_ids_or_zeros(x, doc_ids):
    """doc_ids, or for a batch without a boundary (None) zeros like x: one document a row, the same causal mask, as
    a tensor (what a compiled graph, flex's block mask and a pipeline's stages take every time)."""
    return torch.zeros_like(x) if doc_ids is None else doc_ids


# -----------------------------------------------------------------------------
# mixtures: which source every global example reads

_MASK64 = (1 << 64) - 1


def _mix64(x):
    """splitmix64's finaliser: a fixed, well-spread 64-bit hash."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def uniform(seed, example, stream):
    """A number in [0, 1) that depends only on (seed, example, stream): the randomness of one draw."""
    return _mix64(_mix64(_mix64(seed & _MASK64) ^ example) ^ stream) / 2.0**64


def pick(weights, u):
    """The index i with cumulative weight share just above u (weights >= 0, not all 0)."""
    target, total = u * sum(weights), 0.0
    for i, w in enumerate(weights):
        total += w
        if target < total:
            return i
    return max(i for i, w in enumerate(weights) if w > 0)  # u * sum rounded up to the sum


class Mixture:
    """Draws (entry, member) for every global example; entries are groups of sources (sizes in blocks).

    The state is the next example index and how many blocks each source has given: a checkpoint
    saves it, and asking for an earlier example replays the draws from 0.
    """

    def __init__(self, sizes, policy="balance_remaining", weights=(), seed=0):
        if policy not in MIXTURES:
            raise ValueError(f"mixture={policy!r} is not one of {', '.join(MIXTURES)}")
        if policy == "fixed" and (len(weights) != len(sizes) or any(w < 0 for w in weights) or sum(weights) <= 0):
            raise ValueError(f"mixture='fixed' needs one non-negative weight per data entry ({len(sizes)}), "
                             f"got {tuple(weights)}")
        self.sizes, self.policy, self.weights, self.seed = [list(group) for group in sizes], policy, list(weights), seed
        self.reset()

    def reset(self):
        self.next_example = 0
        self.drawn = [[0] * len(group) for group in self.sizes]
        self.epochs = [0] * len(self.sizes)  # all equal except under "fixed", where entries cycle on their own

    def state_dict(self):
        return {"sizes": self.sizes, "next_example": self.next_example, "drawn": [list(d) for d in self.drawn],
                "epochs": list(self.epochs)}

    def load_state_dict(self, state):
        if state["sizes"] != self.sizes:
            raise ValueError(f"the data is not the checkpoint's (blocks per source {state['sizes']}, now {self.sizes})")
        self.next_example, self.epochs = state["next_example"], list(state["epochs"])
        self.drawn = [list(d) for d in state["drawn"]]

    def remaining(self, i):
        """Unseen blocks of each member of entry i in its current epoch."""
        return [n * (self.epochs[i] + 1) - d for n, d in zip(self.sizes[i], self.drawn[i])]

    def draw(self):
        """(entry, member, k) of the next example: it reads that source's k-th draw."""
        example = self.next_example
        left = [sum(self.remaining(i)) for i in range(len(self.sizes))]
        if self.policy == "fixed":
            i = pick(self.weights, uniform(self.seed, example, 0))
            if left[i] == 0:
                self.epochs[i] += 1
        else:
            if sum(left) == 0:  # every source exhausted: the next epoch of all of them
                self.epochs = [e + 1 for e in self.epochs]
                left = [sum(self.remaining(i)) for i in range(len(self.sizes))]
            if self.policy == "balance_remaining":
                weights = left
            else:  # soft_sequential
                shares = [r / sum(n) for r, n in zip(left, self.sizes)]
                weights = [share * math.prod(1 - s for s in shares[:i]) for i, share in enumerate(shares)]
            i = pick(weights, uniform(self.seed, example, 0))
        j = pick(self.remaining(i), uniform(self.seed, example, 1))  # within a group: balance_remaining
        k = self.drawn[i][j]
        self.drawn[i][j] += 1
        self.next_example += 1
        return i, j, k

    def draws(self, start, count):
        """[(entry, member, k), ...] of examples start .. start + count - 1."""
        if start < self.next_example:
            self.reset()
        while self.next_example < start:
            self.draw()
        return [self.draw() for _ in range(count)]


# -----------------------------------------------------------------------------
# the run's data: sources named in the config, their mixture, the eval sets


def parse_entries(spec):
    """'tinystories, fineweb+cosmopedia' -> [['tinystories'], ['fineweb', 'cosmopedia']]."""
    entries = [[name.strip() for name in entry.split("+")] for entry in spec.split(",")]
    if any(not name for entry in entries for name in entry):
        raise ValueError(f"{spec!r} is not a list of data names ('a', 'a,b' or 'a,b+c')")
    names = [name for entry in entries for name in entry]
    if len(set(names)) != len(names):
        raise ValueError(f"{spec!r} names a source twice")
    return entries


def check_meta(data_dir, meta):
    """Cross-check meta.json (as read_meta returns it: its tokenizer, vocabulary size and dtype known, its
    files of the sizes its token counts say) against the tokenizer and against itself: a count that cannot be true
    would skew eval_bpb or the blocks without a word. ValueError, one line naming the field."""
    def lie(problem):
        return ValueError(f"{Path(data_dir) / 'meta.json'}: {problem}; prepare the data again")

    eot_id = tokenizer_lib.of_directory(data_dir, meta["tokenizer"], meta["eot_id"]).eot_token
    if meta["eot_id"] != eot_id:
        raise lie(f"eot_id {meta['eot_id']} is not {eot_id}, the end-of-text id of tokenizer {meta['tokenizer']!r}")
    for split in ("train", "val"):
        counts = meta[split]
        for key in ("tokens", "bytes", "documents"):
            if not is_count(counts.get(key)):
                raise lie(f"{split}.{key} is {counts.get(key)!r}, not a count")
        for path, n_tokens in split_files(data_dir, meta, split):
            if not is_count(n_tokens):
                raise lie(f"{split}.files gives {path.name} {n_tokens!r} tokens, not a count")
        # every document is at least one token of text, then end-of-text; every token of text is at least one byte
        text_tokens = counts["tokens"] - counts["documents"]
        if counts["documents"] > text_tokens:
            raise lie(f"{split}.documents {counts['documents']} is more than its {counts['tokens']} tokens hold (a "
                      "document is a token or more, then end-of-text)")
        if counts["bytes"] < text_tokens:
            raise lie(f"{split}.bytes {counts['bytes']} is fewer than its {text_tokens} tokens of text")
        if meta["tokenizer"] == "bytes" and counts["bytes"] != text_tokens:
            raise lie(f"{split}.bytes {counts['bytes']} is not {text_tokens}, its tokens of text (tokenizer 'bytes')")


def is_count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def open_split(data_dir, name, split, meta, seq_len, packing, seed, index):
    directory = Path(data_dir) / name
    plan_path = directory / "packing" / f"{split}_{seq_len}.npz" if packing == "best_fit" else None
    files = split_files(directory, meta, split)
    return Source(files, meta["dtype"], seq_len, meta["eot_id"], packing, seed, index, plan_path, meta["vocab_size"])


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


class TrainingData:
    """The training sources mixed by a policy, and the validation split of every source named for eval.

    Library errors are ValueError / OSError with one line naming the data; train.py reports them.
    """

    def __init__(self, data_dir, spec, seq_len, seed=0, packing="blocks", mixture="balance_remaining", weights=(),
                 eval_spec="", tokenizer=None):
        if packing not in PACKINGS:
            raise ValueError(f"packing={packing!r} is not one of {', '.join(PACKINGS)}")
        self.entries = parse_entries(spec)
        self.names = [name for entry in self.entries for name in entry]
        # eval_loss pools the named eval set (default: the training sources); every source is evaluated on its own too
        self.pooled_names = [n for entry in parse_entries(eval_spec) for n in entry] if eval_spec else self.names
        self.eval_names = list(dict.fromkeys(self.names + self.pooled_names))
        self.meta = {}
        for name in self.eval_names:
            try:
                self.meta[name] = read_meta(Path(data_dir) / name)
                check_meta(Path(data_dir) / name, self.meta[name])
            except (FileNotFoundError, ValueError) as e:
                raise ValueError(f"data {name!r}: {e}") from None
        first = self.meta[self.names[0]]
        for name, meta in self.meta.items():
            if tokenizer is not None and meta["tokenizer"] != tokenizer:
                raise ValueError(f"tokenizer={tokenizer!r} but data {name!r} was prepared with {meta['tokenizer']!r}")
            if (meta["tokenizer"], meta["vocab_size"]) != (first["tokenizer"], first["vocab_size"]):
                raise ValueError(f"data {name!r} was prepared with {meta['tokenizer']!r}, data {self.names[0]!r} "
                                 f"with {first['tokenizer']!r}: every source needs the same tokenizer")
        self.tokenizer, self.vocab_size, self.eot_id = first["tokenizer"], first["vocab_size"], first["eot_id"]
        # the tokenizer itself (a tokenizer.json's is read from beside the data, checked against its sha256)
        self.encoding = tokenizer_lib.of_directory(Path(data_dir) / self.names[0], self.tokenizer, self.eot_id)
        train = {name: self._open(data_dir, name, "train", seq_len, packing, seed, index)
                 for index, name in enumerate(self.names)}
        self.val = {name: self._open(data_dir, name, "val", seq_len, packing, seed, 0) for name in self.eval_names}
        self.sources = [[train[name] for name in entry] for entry in self.entries]
        self.mixture = Mixture([[s.n_blocks for s in entry] for entry in self.sources], mixture, weights, seed)
        self._step_draws = (None, None)

    def _open(self, data_dir, name, split, seq_len, packing, seed, index):
        try:
            return open_split(data_dir, name, split, self.meta[name], seq_len, packing, seed, index)
        except (ValueError, OSError) as e:
            raise ValueError(f"data {name!r} ({split}): {e}") from None

    def micro_batch(self, step, micro_step, rank, batch_size, grad_accum, world_size, device="cpu"):
        """(x, y, doc_ids) that `rank` trains on at this micro-step: its rows of the step's global batch."""
        examples_per_step = batch_size * grad_accum * world_size
        if self._step_draws[0] != step:  # every rank draws the whole global batch of the step, once
            self._step_draws = (step, self.mixture.draws(step * examples_per_step, examples_per_step))
        draws = self._step_draws[1]
        examples = micro_batch_examples(step, micro_step, rank, batch_size, grad_accum, world_size)
        blocks = []
        for g in examples:
            i, j, k = draws[g - step * examples_per_step]
            source = self.sources[i][j]
            blocks.append(source.block(source.block_of_draw(k)))
        return make_batch(blocks, self.eot_id, device)

    def drawn(self):
        """{source: examples it has given so far} (the mixture's counters; for the log)."""
        return {name: d for entry, counts in zip(self.entries, self.mixture.drawn) for name, d in zip(entry, counts)}

    def eval_batches(self, name, n_rows, rank, world_size, batch_size, device="cpu"):
        """This rank's share of a fixed, evenly spread set of n_rows validation blocks of `name`, in Batches of
        batch_size rows (a last, partial one padded with rows of no targets)."""
        source = self.val[name]
        rows = eval_blocks(source.n_blocks, n_rows)[rank::world_size]
        for i in range(0, len(rows), batch_size):
            yield make_batch([source.block(b) for b in rows[i:i + batch_size]], self.eot_id, device, n_rows=batch_size)

    def eval_summary(self, totals):
        """{name: (loss sum, targets)} -> (loss per token, bits per byte, {"eval_loss/<name>": loss per token}).

        The first two pool the named eval set: the loss over all its targets, the bits over all its text
        (each source's bytes per token from its meta.json). Per-source losses when there are several sources.
        """
        pooled = [(*totals[name], self.meta[name]["val"]) for name in self.pooled_names]
        loss_sum, targets = sum(s for s, _, _ in pooled), sum(n for _, n, _ in pooled)
        text_bytes = sum(n * val["bytes"] / val["tokens"] for _, n, val in pooled)
        per_source = {f"eval_loss/{name}": s / n for name, (s, n) in totals.items()} if len(totals) > 1 else {}
        return loss_sum / targets, loss_sum / math.log(2) / text_bytes, per_source
