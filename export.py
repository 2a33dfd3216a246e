"""Export a trained model to a Hugging Face Llama folder, and import one back.

    python export.py out/RUN                        # newest checkpoint -> out/RUN/hf
    python export.py out/RUN/ckpt_00001000.pt --output some/dir [--force]
    python export.py out/RUN --push-to-hub user/name    # the folder, then uploaded to the Hugging Face Hub
    python export.py --import HF_DIR --output out/RUN_NAME   # -> out/RUN_NAME/ckpt_00000000.pt

The Hugging Face folder holds config.json (a LlamaConfig), model.safetensors (the weights),
tokenizer.json + tokenizer_config.json (the run's tokenizer), generation_config.json (end-of-text ends
generation and pads a batch), small_lm.json (our tokenizer name and end-of-text id), and README.md, the
model card (card.py), with loss.png, the run's loss curve, where the run's log is beside the checkpoint.
It loads with transformers.AutoModelForCausalLM.from_pretrained(folder) and
AutoTokenizer.from_pretrained(folder), so transformers' pipelines, lm-evaluation-harness and other
tools read it as they read any Llama; --push-to-hub uploads it with huggingface_hub. Our parameter
names are LlamaForCausalLM's without the "model." prefix, so both directions are renaming and copying;
this file does not need transformers.

Top to bottom: the Llama-compatibility check, the tokenizer files, export_hf (and the card's inputs), import_hf,
atomic folder writing, pushing to the Hub, the command line.
"""

import dataclasses
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import tokenizers
import torch
from safetensors.torch import load_file, save
from tokenizers import decoders, models, pre_tokenizers, processors

import card
import data
import files
import memory
from config import ArgumentParser, UserError, one_line, run_main
from model import BACKEND_FIELDS, ModelConfig, checkpoint_config, meta_model, parameter_summary

# ModelConfig's fields that have a LlamaConfig equivalent. A field added later (ALiBi, Canon,
# DeepNet, QK-norm variants) is not listed here on purpose: at its default value the model is still
# a Llama, at any other value it is not, and hf_incompatibility says so.
LLAMA_FIELDS = ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "rope_theta",
                "norm_eps", "tie_embeddings",
                *BACKEND_FIELDS)  # how the maths is computed, not what it is

# End-of-text id of each of our tokenizers (data.TOKENIZERS); the exported config uses it as BOS and EOS.
# A table rather than loading the tokenizer: gpt2's needs a download.
EOT_IDS = {"cl100k_32k": 31999, "cl100k_base": 100257, "bytes": 256, "gpt2": 50256}
VOCAB_SIZES = {"cl100k_32k": 32000, "cl100k_base": 100277, "bytes": 257, "gpt2": 50257}  # enc.n_vocab of each

DEFAULT_MAX_POSITIONS = 4096  # max_position_embeddings when the checkpoint has no training seq_len


def hf_incompatibility(model_config):
    """Why a model of this config (a dict, as checkpoints store it) has no Hugging Face Llama
    equivalent, in a few words; None when it has one."""
    defaults = {field.name: field.default for field in dataclasses.fields(ModelConfig)}
    for name, value in model_config.items():
        if name in LLAMA_FIELDS:
            continue
        if name not in defaults:
            return f"model_config field {name!r} is unknown to this model.py, so it cannot be checked"
        if value != defaults[name]:
            return f"{name}={value!r} has no Hugging Face Llama equivalent"
    return None


# -----------------------------------------------------------------------------------------------
# Tokenizer files: each of our tiktoken tokenizers (data.load_tokenizer) rebuilt with the
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
    eot = (data.EOT, enc.eot_token)
    tokenizer.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{data.EOT} $A", pair=f"{data.EOT} $A {data.EOT} $B",
                                      special_tokens=[eot])])
    return tokenizer


def tokenizer_config(max_length):
    """tokenizer_config.json: which transformers class reads tokenizer.json, and the special tokens' roles.
    End-of-text pads too, as in Llama-style models without a pad token: the attention mask hides the padding, so its
    id does not matter. On the left, as transformers asks of a decoder-only model for batched generation: each row's
    new tokens then follow its own prompt, and padding=True works without a setting."""
    return {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": data.EOT, "eos_token": data.EOT,
            "pad_token": data.EOT, "padding_side": "left", "model_max_length": max_length,
            "clean_up_tokenization_spaces": False}  # decode must give back the text's bytes, spaces included


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
    for name in data.TOKENIZERS:
        if VOCAB_SIZES[name] != size:
            continue
        try:
            enc = data.load_tokenizer(name)
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
# Export: our checkpoint -> {config.json, model.safetensors, tokenizer files, small_lm.json}


def hf_config(config, tokenizer=None, max_positions=DEFAULT_MAX_POSITIONS):
    """The LlamaConfig dict (config.json) of a ModelConfig."""
    eot_id = EOT_IDS.get(tokenizer)  # None when the tokenizer is not known
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.dim,
        "intermediate_size": config.ffn_dim,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": config.norm_eps,
        # transformers 5 reads rope_parameters; 4.x reads rope_theta
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "rope_theta": config.rope_theta,
        "max_position_embeddings": max_positions,
        "tie_word_embeddings": config.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": eot_id,  # documents are opened by end-of-text in training (data.py)
        "eos_token_id": eot_id,
        # no pad_token_id: LlamaModel would make it the embedding's padding_idx, and a fine-tune would then never
        # train the end-of-text row that opens every document (generation_config.json and the tokenizer pad)
        # transformers 5 reads dtype; 4.x reads torch_dtype
        "dtype": "float32",
        "torch_dtype": "float32",
    }


def generation_config(tokenizer):
    """generation_config.json: end-of-text stops generation and pads a batch (without a pad id transformers warns at
    every generate). Sampling is left at transformers' default, greedy. No max_length: transformers already keeps its
    default length within max_position_embeddings (the run's context), and a max_length set here draws a warning at
    every generate(max_new_tokens=...), the common call."""
    eot_id = EOT_IDS.get(tokenizer)
    return {"bos_token_id": eot_id, "eos_token_id": eot_id, "pad_token_id": eot_id} if eot_id is not None else {}


def export_hf(checkpoint, output_dir, force=False, source="the checkpoint", run_dir=None, repo=None):
    """Write the Hugging Face folder of a checkpoint dict to output_dir (atomically), with its model card: the run's
    log and curve read from run_dir (None, or no log.jsonl there: a card without them); repo, the Hub repo it is for.
    Returns warnings (one line each): no tokenizer files, an unreadable log. UserError naming source when its
    weights do not match its model_config."""
    reason = hf_incompatibility(checkpoint["model_config"])
    if reason:
        raise ValueError(f"cannot export to Hugging Face Llama: {reason}")
    config = checkpoint_config(checkpoint, source)
    tokenizer = checkpoint.get("tokenizer")
    seq_len = (checkpoint.get("config") or {}).get("seq_len") or DEFAULT_MAX_POSITIONS
    weights = {}
    for name, tensor in checkpoint["model"].items():
        if name == "lm_head.weight":
            if config.tie_embeddings:
                continue  # the embedding matrix; transformers ties it back from tie_word_embeddings
        else:
            name = "model." + name
        # fp32 as config.json says; contiguous and unshared, as safetensors requires
        weights[name] = tensor.detach().to(torch.float32).contiguous().clone()

    try:
        enc = data.load_tokenizer(tokenizer) if tokenizer else None
        warning = None if enc else "the checkpoint records no tokenizer, so the folder has no tokenizer files"
    except (ValueError, OSError) as e:  # gpt2's one-time download failed; an unknown name
        enc, warning = None, f"no tokenizer files written: {e}"
    log, log_warning = run_log(run_dir)
    tokens = checkpoint.get("tokens")
    figure = "loss.png" if log and tokens and any("loss" in r and r.get("tokens", 0) <= tokens for r in log) else None
    readme = card.model_card(config, checkpoint, log, train_defaults(), source, repo, figure)

    def write(folder):
        files.write_json_atomic(folder / "config.json", hf_config(config, tokenizer, seq_len))
        files.write_atomic(folder / "model.safetensors", lambda f: f.write(save(weights, metadata={"format": "pt"})))
        if enc:
            files.write_text_atomic(folder / "tokenizer.json", hf_tokenizer(enc).to_str())
            files.write_json_atomic(folder / "tokenizer_config.json", tokenizer_config(seq_len))
        files.write_json_atomic(folder / "generation_config.json", generation_config(tokenizer))
        files.write_json_atomic(folder / "small_lm.json", {"tokenizer": tokenizer, "eot_id": EOT_IDS.get(tokenizer)})
        if figure:
            files.save_figure(loss_figure(run_dir, log, tokens), folder / figure)
        files.write_text_atomic(folder / "README.md", readme)

    write_folder(output_dir, write, force, HF_FILES)
    return [w for w in (warning, log_warning) if w]


def run_log(run_dir):
    """(records of run_dir/log.jsonl or None, a warning or None): a run directory without a log (a checkpoint copied
    on its own) has none to report; a damaged one is a warning, since the weights are still worth exporting."""
    if run_dir is None or not (Path(run_dir) / "log.jsonl").is_file():
        return None, None
    try:
        return files.read_log(run_dir), None
    except UserError as e:
        return None, f"the model card has no eval loss or curve: {e}"


def train_defaults():
    """train.py's {key: default}, for the card's list of what a run changed."""
    import train  # lazily: only an export needs it, not --import
    return {field.name: field.default for field in dataclasses.fields(train.TrainConfig)}


def loss_figure(run_dir, log, tokens):
    """plot.py's figure of the run (train and eval loss, and the learning rate, against tokens), up to the tokens the
    checkpoint had seen: ckpt_best.pt or an older checkpoint is drawn as far as it was trained."""
    import plot  # lazily: matplotlib only when there is a curve to draw
    argv = [str(run_dir), "--x-axis", "tokens", "--metrics",
            ",".join(m for m in ("loss", "eval_loss") if any(m in r for r in log))]
    if any(r.get("tokens", 0) > tokens for r in log):
        argv += ["--x-max", str(tokens)]
    return plot.draw_runs(plot.plot_parser().parse_args(argv))


# -----------------------------------------------------------------------------------------------
# Import: a Hugging Face Llama folder -> (ModelConfig, state dict) -> our checkpoint


def import_hf(hf_dir):
    """(ModelConfig, state dict) of a Hugging Face Llama folder (config.json + model.safetensors)."""
    hf_dir = Path(hf_dir)
    config_path, weights_path = hf_dir / "config.json", hf_dir / "model.safetensors"
    if not config_path.is_file():
        raise ValueError(f"no config.json in {hf_dir}")
    if not weights_path.is_file():
        raise ValueError(f"no model.safetensors in {hf_dir} (sharded and .bin weights are not supported)")
    hf = json.loads(config_path.read_text())
    rope = hf.get("rope_parameters") or {}
    refusals = [
        (hf.get("model_type") != "llama", f"model_type is {hf.get('model_type')!r}, not 'llama'"),
        (hf.get("attention_bias", False), "attention_bias is true"),
        (hf.get("mlp_bias", False), "mlp_bias is true"),
        (hf.get("rope_scaling") is not None, "rope_scaling is set"),
        (rope.get("rope_type", "default") != "default", f"rope type is {rope.get('rope_type')!r}"),
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
        rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),  # 10000: LlamaConfig's default
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
    """Which of our tokenizers hf_dir's tokenizer.json is (None when it is none of ours); without one, what an
    earlier export's small_lm.json says."""
    if (hf_dir / "tokenizer.json").is_file():
        return tokenizer_of_folder(hf_dir)
    small_lm_path = hf_dir / "small_lm.json"
    return json.loads(small_lm_path.read_text()).get("tokenizer") if small_lm_path.is_file() else None


def import_checkpoint(hf_dir, output_dir, force=False):
    """Write hf_dir as a run directory output_dir holding ckpt_00000000.pt (atomically)."""
    config, state = import_hf(hf_dir)
    tokenizer = imported_tokenizer(Path(hf_dir))
    checkpoint = {"model": state, "model_config": dataclasses.asdict(config), "tokenizer": tokenizer, "step": 0}
    # the context it was trained for, where a run records it: sample.py keeps within it, export_hf writes it back
    max_positions = json.loads((Path(hf_dir) / "config.json").read_text()).get("max_position_embeddings")
    if max_positions:
        checkpoint["config"] = {"seq_len": max_positions}
    write_folder(output_dir, lambda folder: files.write_atomic(folder / "ckpt_00000000.pt",
                                                               lambda f: torch.save(checkpoint, f)), force,
                 IMPORT_FILES)
    return tokenizer


# -----------------------------------------------------------------------------------------------
# Writing a folder atomically: fill a temporary folder beside it (each file written by files.write_atomic),
# then rename it into place, so an interrupted export leaves either nothing or a complete folder.

HF_FILES = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json",
            "small_lm.json", "README.md", "loss.png"}  # export_hf's
IMPORT_FILES = {"ckpt_00000000.pt"}  # import_checkpoint's


def check_replaceable(output_dir, ours):
    """--force replaces a folder only when it holds nothing but the files this command writes (`ours`: an earlier
    export, or import): never a run, a folder that holds one, or a folder of the user's with other files in it."""
    others = sorted(p.name + ("/" if p.is_dir() else "") for p in output_dir.iterdir()
                    if p.name not in ours or not p.is_file())
    if others:
        raise UserError(f"{output_dir} holds {files.some_names(others, 3)}, not written by export.py: --force replaces "
                        f"only a folder of the files it writes ({', '.join(sorted(ours))}); choose another --output")


def write_folder(output_dir, write, force, ours):
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise UserError(f"output {output_dir} exists and is not a directory")
    if output_dir.is_dir() and any(output_dir.iterdir()):
        if not force:
            raise UserError(f"output directory {output_dir} exists and is not empty (--force replaces it)")
        check_replaceable(output_dir, ours)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    try:
        try:
            write(tmp)
        except UserError as e:  # a failed write (a full disk) names its file in tmp: name the folder it was for
            raise UserError(str(e).replace(str(tmp), str(output_dir))) from None
        if output_dir.is_dir():
            # os.replace cannot overwrite a non-empty directory: move the old one aside first
            old = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.old.", dir=output_dir.parent))
            os.replace(output_dir, old / "old")
            os.replace(tmp, output_dir)
            shutil.rmtree(old)
        else:
            os.replace(tmp, output_dir)
        files.sync_directory(output_dir.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


# -----------------------------------------------------------------------------------------------
# Pushing to the Hugging Face Hub: huggingface_hub's own upload (a repo created where missing, then one commit of
# the folder), so that large weights go the way the Hub wants them (LFS or Xet) and a token is found as everywhere.

REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")  # owner/name: the card's snippet and from_pretrained need the owner


def check_push(repo):
    """Stop before any work when the push cannot go: a repo id without its owner, or no token to write with."""
    import huggingface_hub
    if not REPO_ID.fullmatch(repo) or ".." in repo:
        raise UserError(f"--push-to-hub needs a repo id owner/name (letters, digits, '-', '_', '.'), got {repo!r}")
    if not huggingface_hub.get_token():
        raise UserError("--push-to-hub needs a Hugging Face token with write access: `hf auth login`, or HF_TOKEN")


def push_to_hub(folder, repo, message):
    """Upload folder as one commit to the model repo `repo` (created, private or public as the account's default,
    when missing). Returns the commit's URL; a refusal or an unreachable Hub is one line."""
    from huggingface_hub import HfApi
    try:
        api = HfApi()
        api.create_repo(repo, repo_type="model", exist_ok=True)
        return api.upload_folder(folder_path=folder, repo_id=repo, repo_type="model", commit_message=message).commit_url
    except Exception as e:  # refused (401, 403), offline, a malformed reply: httpx and huggingface_hub errors alike
        raise UserError(f"push to {repo} failed, {folder} is written: {one_line(e)}") from None


# -----------------------------------------------------------------------------------------------
# Command line


def main(argv):
    parser = ArgumentParser(description="Export a run to a Hugging Face Llama folder, or import one.")
    parser.add_argument("source", nargs="?", help="run directory (newest checkpoint) or checkpoint file")
    parser.add_argument("--import", dest="hf_dir", help="a Hugging Face Llama folder to import")
    parser.add_argument("--output", help="output folder (default for export: RUN/hf; required for --import)")
    parser.add_argument("--force", action="store_true", help="replace a non-empty output folder")
    parser.add_argument("--push-to-hub", metavar="REPO",
                        help="then upload the folder to this Hugging Face Hub model repo (owner/name)")
    args = parser.parse_args(argv)
    try:
        if args.hf_dir:
            if args.source:
                raise ValueError("give either a run to export or --import HF_DIR, not both")
            if not args.output:
                raise ValueError("--import needs --output out/RUN_NAME")
            if args.push_to_hub:
                raise ValueError("--push-to-hub pushes an export, not an --import")
            if not Path(args.hf_dir).is_dir():
                raise ValueError(f"no such Hugging Face folder: {args.hf_dir}")
            tokenizer = import_checkpoint(args.hf_dir, args.output, args.force)
            print(f"wrote {Path(args.output) / 'ckpt_00000000.pt'} (tokenizer: "
                  f"{tokenizer or 'not recognised as one of ours; sample.py will need --tokenizer'})")
        else:
            if not args.source:
                raise ValueError("give a run directory or checkpoint file to export (or --import HF_DIR)")
            if args.push_to_hub:
                check_push(args.push_to_hub)
            source = Path(args.source)
            output = Path(args.output) if args.output else (source if source.is_dir() else source.parent) / "hf"
            checkpoint_path, checkpoint = files.load_checkpoint(source)
            warnings = export_hf(checkpoint, output, args.force, checkpoint_path, checkpoint_path.parent,
                                 args.push_to_hub)
            print(f"wrote {output}")
            for warning in warnings:
                print(f"warning: {warning}", file=sys.stderr)
            if args.push_to_hub:
                step = checkpoint.get("step")
                message = f"export.py: {checkpoint_path.name}" + (f" (step {step})" if step is not None else "")
                print(f"pushed to {push_to_hub(output, args.push_to_hub, message)}")
    except (ValueError, KeyError) as e:  # a KeyError: config.json or a checkpoint lacks a field
        raise UserError(f"missing field {e}" if isinstance(e, KeyError) else one_line(e)) from None


if __name__ == "__main__":
    sys.exit(run_main(main, sys.argv[1:]))
