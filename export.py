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

Top to bottom: the Llama-compatibility check, export_hf (and the card's inputs), import_checkpoint (llama.py reads the
folder: its config, weights and tokenizer), atomic folder writing, pushing to the Hub, the command line.
"""

import dataclasses
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save

import card
import files
import tokenizer as tokenizer_lib
from config import ArgumentParser, UserError, one_line, run_main
from llama import EOT_IDS, folder_tokenizer, hf_tokenizer, import_hf, rope_parameters
from model import BACKEND_FIELDS, ModelConfig, checkpoint_config

# ModelConfig's fields that have a LlamaConfig equivalent. A field added later (ALiBi, Canon,
# DeepNet, QK-norm variants) is not listed here on purpose: at its default value the model is still
# a Llama, at any other value it is not, and hf_incompatibility says so.
LLAMA_FIELDS = ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "rope_theta", "rope_scaling",
                "norm_eps", "tie_embeddings",
                *BACKEND_FIELDS)  # how the maths is computed, not what it is

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


def tokenizer_config(max_length, eot=tokenizer_lib.EOT):
    """tokenizer_config.json: which transformers class reads tokenizer.json, and the special tokens' roles.
    End-of-text pads too, as in Llama-style models without a pad token: the attention mask hides the padding, so its
    id does not matter. On the left, as transformers asks of a decoder-only model for batched generation: each row's
    new tokens then follow its own prompt, and padding=True works without a setting."""
    return {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": eot, "eos_token": eot,
            "pad_token": eot, "padding_side": "left", "model_max_length": max_length,
            "clean_up_tokenization_spaces": False}  # decode must give back the text's bytes, spaces included


# -----------------------------------------------------------------------------------------------
# Export: our checkpoint -> {config.json, model.safetensors, tokenizer files, small_lm.json}


def hf_config(config, tokenizer=None, max_positions=DEFAULT_MAX_POSITIONS, eot_id=None):
    """The LlamaConfig dict (config.json) of a ModelConfig. eot_id: a tokenizer.json's end-of-text (else our
    tokenizer's, where `tokenizer` is known)."""
    eot_id = EOT_IDS.get(tokenizer) if eot_id is None else eot_id  # None when the tokenizer is not known
    rope = rope_parameters(config)
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
        # transformers 5 reads rope_parameters; 4.x reads rope_theta and rope_scaling
        "rope_parameters": rope,
        "rope_theta": config.rope_theta,
        "rope_scaling": ({key: value for key, value in rope.items() if key != "rope_theta"} if config.rope_scaling
                         else None),
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


def generation_config(tokenizer, eot_id=None):
    """generation_config.json: end-of-text stops generation and pads a batch (without a pad id transformers warns at
    every generate). Sampling is left at transformers' default, greedy. No max_length: transformers already keeps its
    default length within max_position_embeddings (the run's context), and a max_length set here draws a warning at
    every generate(max_new_tokens=...), the common call."""
    eot_id = EOT_IDS.get(tokenizer) if eot_id is None else eot_id
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
        enc = tokenizer_lib.of_checkpoint(checkpoint) if tokenizer else None
        warning = None if enc else "the checkpoint records no tokenizer, so the folder has no tokenizer files"
    except (ValueError, OSError) as e:  # gpt2's one-time download failed; an unknown name
        enc, warning = None, f"no tokenizer files written: {e}"
    # a tokenizer.json is written as it is, its own end-of-text in every role ours has
    own = enc if isinstance(enc, tokenizer_lib.FileTokenizer) else None
    eot_id = own.eot_token if own else None
    log, log_warning = run_log(run_dir)
    tokens = checkpoint.get("tokens")
    figure = "loss.png" if log and tokens and any("loss" in r and r.get("tokens", 0) <= tokens for r in log) else None
    readme = card.model_card(config, checkpoint, log, train_defaults(), source, repo, figure)

    def write(folder):
        files.write_json_atomic(folder / "config.json", hf_config(config, tokenizer, seq_len, eot_id))
        files.write_atomic(folder / "model.safetensors", lambda f: f.write(save(weights, metadata={"format": "pt"})))
        if enc:
            files.write_text_atomic(folder / "tokenizer.json", own.text if own else hf_tokenizer(enc).to_str())
            files.write_json_atomic(folder / "tokenizer_config.json",
                                    tokenizer_config(seq_len, own.eot_text()) if own else tokenizer_config(seq_len))
        files.write_json_atomic(folder / "generation_config.json", generation_config(tokenizer, eot_id))
        files.write_json_atomic(folder / "small_lm.json",
                                {"tokenizer": tokenizer, "eot_id": EOT_IDS.get(tokenizer) if own is None else eot_id})
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
# Import: a Hugging Face Llama folder (llama.import_hf) -> our checkpoint


def import_checkpoint(hf_dir, output_dir, force=False):
    """Write hf_dir as a run directory output_dir holding ckpt_00000000.pt (atomically)."""
    config, state = import_hf(hf_dir)
    recorded = folder_tokenizer(hf_dir)  # a tokenizer.json of its own comes along whole
    tokenizer = recorded.get("tokenizer")
    checkpoint = {"model": state, "model_config": dataclasses.asdict(config), "step": 0, "tokenizer": tokenizer,
                  **recorded}
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
