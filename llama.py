"""A Hugging Face Llama folder read into this project: its config.json as our ModelConfig, its model.safetensors as
our state dict, and its tokenizer.json recognised as one of our tokenizers (or kept as a tokenizer of its own). export.py writes such folders and
imports them as a run directory; runs.py starts a run from one (init_from). Kept apart from export.py, which reads
train.py's defaults for its model card, so that runs.py can read a folder without importing train.py back.

Our parameter names are LlamaForCausalLM's without the "model." prefix; this file does not need transformers.
"""

import json
import re
from pathlib import Path

import tokenizers
import torch
from safetensors.torch import load_file
from tokenizers import decoders, models, pre_tokenizers, processors

import memory
import tokenizer as tokenizer_lib
from attention import rope_scaling_parameters
from model import ModelConfig, meta_model, parameter_summary


# End-of-text id of each of our tokenizers (tokenizer_lib.TOKENIZERS); the exported config uses it as BOS and EOS.
# A table rather than loading the tokenizer: gpt2's needs a download.
EOT_IDS = {"cl100k_32k": 31999, "cl100k_base": 100257, "bytes": 256, "gpt2": 50256}
VOCAB_SIZES = {"cl100k_32k": 32000, "cl100k_base": 100277, "bytes": 257, "gpt2": 50257}  # enc.n_vocab of each


# -----------------------------------------------------------------------------------------------
# Tokenizer files: each of our tiktoken tokenizers (tokenizer_lib.load_tokenizer) rebuilt with the
# `tokenizers` library as the byte-level BPE that tokenizer.json describes. Both are the same
# algorithm: cut the text with one regex, then merge each piece's bytes pairwise, lowest rank first.


def byte_characters():
    """GPT-2's table from byte to character: tokenizer.json spells each token's bytes with these printable
    characters (a printable Latin-1 byte stands for itself, the others are shifted past 255)."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]  # '!'..'~', '¡'..'¬', '®'..'ÿ'
    shifted = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(shifted)) for b in range(256)]


BYTE_CHARACTERS = byte_characters()


def spelled(piece):
    return "".join(BYTE_CHARACTERS[b] for b in piece)


def vocab_and_merges(ranks):
    """tokenizer.json's vocabulary and merge list of tiktoken's {token bytes: rank}. tiktoken merges, anywhere in a
    piece, the adjacent pair whose joined bytes have the lowest rank; the merge list says the same when every way of
    cutting a token into two tokens is listed at that token's rank."""
    vocab = {spelled(piece): rank for piece, rank in ranks.items()}
    merges = []
    for piece, rank in sorted(ranks.items(), key=lambda item: item[1]):
        halves = [(piece[:i], piece[i:]) for i in range(1, len(piece)) if piece[:i] in ranks and piece[i:] in ranks]
        merges += [(spelled(left), spelled(right))
                   for left, right in sorted(halves, key=lambda pair: (ranks[pair[0]], ranks[pair[1]]))]
    return vocab, merges


def oniguruma_pattern(pattern):
    """tiktoken's regex in the dialect `tokenizers` compiles (Oniguruma), where `x{1,3}+` means (x{1,3})+ rather
    than a possessive x{1,3}: cl100k's numbers would otherwise be cut '2', '000' instead of '200', '0'."""
    return re.sub(r"(\\p\{\w+\}|\[[^\]]*\]|\\.)(\{\d+(?:,\d+)?\})\+", r"(?>\1\2)", pattern)


def hf_tokenizer(enc):
    """A tokenizers.Tokenizer that encodes text to exactly enc's ids and decodes them back to the same bytes, and puts
    end-of-text first, as every training document starts (data.py), when asked for special tokens."""
    vocab, merges = vocab_and_merges(enc._mergeable_ranks)
    vocab.update(enc._special_tokens)  # in the vocabulary, so each keeps its id (cl100k_base leaves gaps)
    # ignore_merges: a piece that is one token whole is that token, as tiktoken looks pieces up before merging
    tokenizer = tokenizers.Tokenizer(models.BPE(vocab, merges, ignore_merges=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(tokenizers.Regex(oniguruma_pattern(enc._pat_str)), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])  # bytes -> characters, no more cutting
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([tokenizers.AddedToken(token, special=True) for token in enc._special_tokens])
    eot = (tokenizer_lib.EOT, enc.eot_token)
    tokenizer.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{tokenizer_lib.EOT} $A", pair=f"{tokenizer_lib.EOT} $A {tokenizer_lib.EOT} $B",
                                      special_tokens=[eot])])
    return tokenizer

def tokenizer_of_folder(hf_dir):
    """The name of our tokenizer that hf_dir/tokenizer.json is, or None when it is none of ours. The vocabulary,
    merges, regex and special tokens are compared; only a tokenizer of the same size is built to compare."""
    path = Path(hf_dir) / "tokenizer.json"
    try:
        spec = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:  # a damaged file: say so, rather than import without it unasked
        raise ValueError(f"{path} is not valid JSON ({e}); remove it to import the weights without a tokenizer") from None
    try:
        vocab, merges = spec["model"]["vocab"], spec["model"]["merges"]
        merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in merges]  # both formats
        added = {token["content"]: token["id"] for token in spec["added_tokens"]}
        size = max([*vocab.values(), *added.values()]) + 1
    except (KeyError, TypeError, AttributeError, ValueError):
        return None  # not a BPE tokenizer.json
    for name in tokenizer_lib.TOKENIZERS:
        if VOCAB_SIZES[name] != size:
            continue
        try:
            enc = tokenizer_lib.load_tokenizer(name)
        except OSError:  # gpt2's one-time download failed: it cannot be compared, so it is not recognised
            continue
        ours = json.loads(hf_tokenizer(enc).to_str())
        our_merges = [tuple(m) for m in ours["model"]["merges"]]
        our_added = {token["content"]: token["id"] for token in ours["added_tokens"]}
        if (ours["model"]["vocab"], our_merges, our_added, ours["pre_tokenizer"]) == (
                vocab, merges, added, spec.get("pre_tokenizer")):
            return name
    return None



# -----------------------------------------------------------------------------------------------
# A folder's config and weights -> (ModelConfig, state dict)


# RoPE scalings this model holds (attention.rope_frequencies): the rope_parameters fields of each, in the order
# of ModelConfig.rope_scaling's numbers
ROPE_SCALING_FIELDS = {"default": (), "linear": ("factor",),
                       "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}


def rope_scaling_text(rope_type, rope):
    """ModelConfig.rope_scaling of a folder's rope parameters: "" for the default, "linear:F", "llama3:F,L,H,C"."""
    fields = ROPE_SCALING_FIELDS[rope_type]
    if not fields:
        return ""
    missing = [f for f in fields if not isinstance(rope.get(f), (int, float))]
    if missing:
        raise ValueError(f"not a plain Llama model: rope type {rope_type!r} without {', '.join(missing)}")
    return f"{rope_type}:" + ",".join(f"{rope[f]:g}" if float(rope[f]).is_integer() else repr(float(rope[f]))
                                      for f in fields)


def rope_parameters(config):
    """config.json's rope_parameters of a ModelConfig (its base, and its scaling's fields)."""
    kind, values = rope_scaling_parameters(config.rope_scaling)
    return {"rope_type": kind or "default", "rope_theta": config.rope_theta,
            **dict(zip(ROPE_SCALING_FIELDS[kind or "default"], values))}


def import_hf(hf_dir):
    """(ModelConfig, state dict) of a Hugging Face Llama folder (config.json + model.safetensors)."""
    hf_dir = Path(hf_dir)
    config_path, weights_path = hf_dir / "config.json", hf_dir / "model.safetensors"
    if not config_path.is_file():
        raise ValueError(f"no config.json in {hf_dir}")
    if not weights_path.is_file():
        raise ValueError(f"no model.safetensors in {hf_dir} (sharded and .bin weights are not supported)")
    hf = json.loads(config_path.read_text())
    # transformers 5 writes rope_parameters (the base and any scaling); 4.x, rope_theta and a rope_scaling dict
    rope = {"rope_theta": hf.get("rope_theta", 10000.0), **(hf.get("rope_scaling") or {}),  # 10000: LlamaConfig's
            **(hf.get("rope_parameters") or {})}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    refusals = [
        (hf.get("model_type") != "llama", f"model_type is {hf.get('model_type')!r}, not 'llama'"),
        (hf.get("attention_bias", False), "attention_bias is true"),
        (hf.get("mlp_bias", False), "mlp_bias is true"),
        (rope_type not in ROPE_SCALING_FIELDS, f"rope type is {rope_type!r} (this model holds "
                                               f"{', '.join(ROPE_SCALING_FIELDS)})"),
        (hf.get("hidden_act", "silu") != "silu", f"hidden_act is {hf.get('hidden_act')!r}, not 'silu'"),
        (hf.get("head_dim") not in (None, hf["hidden_size"] // hf["num_attention_heads"]),
         "head_dim is not hidden_size // num_attention_heads"),
    ]
    for refused, reason in refusals:
        if refused:
            raise ValueError(f"not a plain Llama model: {reason}")
    n_kv_heads = hf.get("num_key_value_heads") or hf["num_attention_heads"]
    config = ModelConfig(
        vocab_size=hf["vocab_size"], dim=hf["hidden_size"], n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"],
        n_kv_heads=None if n_kv_heads == hf["num_attention_heads"] else n_kv_heads,
        ffn_dim=hf["intermediate_size"],
        rope_theta=float(rope["rope_theta"]), rope_scaling=rope_scaling_text(rope_type, rope),
        norm_eps=hf.get("rms_norm_eps", 1e-6),  # LlamaConfig's default
        tie_embeddings=hf.get("tie_word_embeddings", False))  # LlamaConfig's default

    needed, available = import_memory(config, weights_path), memory.available_memory(torch.device("cpu"))
    if available is not None and needed > available:
        raise ValueError(f"importing {weights_path} needs about {memory.human_bytes(needed)} of memory (the weights "
                         f"as stored, and in fp32) but {memory.human_bytes(available)} is available")
    state = {}
    for name, tensor in load_file(weights_path).items():
        if name.startswith("model."):
            name = name[len("model."):]
        state[name] = tensor.to(torch.float32)
    if config.tie_embeddings and "embed_tokens.weight" in state:
        state["lm_head.weight"] = state["embed_tokens.weight"]  # one tensor, as in our tied model
    expected = {name: p.shape for name, p in meta_model(config).state_dict().items()}
    got = {name: tensor.shape for name, tensor in state.items()}
    if got != expected:
        missing, unexpected = sorted(expected.keys() - got.keys()), sorted(got.keys() - expected.keys())
        wrong = sorted(n for n in expected.keys() & got.keys() if expected[n] != got[n])
        raise ValueError(f"weights in {hf_dir} do not match config.json: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}, wrong shape {wrong[:3]}")
    return config, state


def import_memory(config, weights_path):
    """Bytes import_hf holds at once: the file's tensors as read, and their fp32 copies where they are stored in a
    narrower dtype (a file smaller than the fp32 weights)."""
    stored, fp32 = weights_path.stat().st_size, 4 * parameter_summary(config)["total"]
    return stored + (fp32 if stored < fp32 else 0)


def imported_tokenizer(hf_dir):
    """The name of hf_dir's tokenizer: one of ours that its tokenizer.json is, else that file's own name (its
    sha256, tokenizer_lib), whether or not its end-of-text is known; without one, what an earlier export's
    small_lm.json says (or None)."""
    path = Path(hf_dir) / tokenizer_lib.TOKENIZER_FILE
    if path.is_file():  # a damaged file is a ValueError (tokenizer_of_folder)
        return tokenizer_of_folder(hf_dir) or tokenizer_lib.file_name(path.read_bytes().decode("utf-8"))
    return folder_tokenizer(hf_dir).get("tokenizer")


def folder_tokenizer(hf_dir):
    """What a checkpoint records of hf_dir's tokenizer: {"tokenizer": name} for one of ours, and for any other
    tokenizer.json also its text and end-of-text id ("tokenizer_json", "eot_id"; tokenizer_lib.checkpoint_fields).
    The end-of-text is an earlier export's small_lm.json's, else the file's own (tokenizer_lib.find_eot), else
    config.json's eos_token_id; with none of them the tokenizer is not recorded ({})."""
    hf_dir = Path(hf_dir)
    small_lm_path = hf_dir / "small_lm.json"
    small_lm = json.loads(small_lm_path.read_text()) if small_lm_path.is_file() else {}
    path = hf_dir / tokenizer_lib.TOKENIZER_FILE
    if not path.is_file():
        return {"tokenizer": small_lm["tokenizer"]} if small_lm.get("tokenizer") else {}
    ours = tokenizer_of_folder(hf_dir)
    if ours:
        return {"tokenizer": ours}
    text = path.read_bytes().decode("utf-8")
    eot_id = small_lm.get("eot_id")
    if eot_id is None:
        try:
            eot_id = tokenizer_lib.find_eot(text, path)
        except ValueError:
            config_path = hf_dir / "config.json"
            eos = json.loads(config_path.read_text()).get("eos_token_id") if config_path.is_file() else None
            eot_id = eos if isinstance(eos, int) else None
    if eot_id is None:
        return {}
    return {"tokenizer": tokenizer_lib.file_name(text),
            **tokenizer_lib.checkpoint_fields(tokenizer_lib.from_json(text, eot_id))}
