"""Generate text from a trained run.

    python sample.py out/quickstart --prompt "ROMEO:" --tokens 300 --temperature 0.8 --top-k 200 --num-samples 2

Loads the newest checkpoint of a run directory (or a checkpoint file), continues the prompt as a
fresh document (end-of-text first, as in training) and prints each sample. The model sees at most the
context it was trained on (the run's seq_len): a longer sample is continued from its last seq_len tokens,
as nanoGPT crops to block_size. --extrapolate lets it see them all, past what it was trained on.
"""
import math
import sys

import torch

import files
import memory
import model as model_lib
import tokenizer as tokenizer_lib
from config import ArgumentParser, UserError, run_main


def check_arguments(args):
    """Every bad value as one line (config.UserError)."""
    for name, low in (("tokens", 1), ("num_samples", 1), ("top_k", 0), ("seed", 0)):
        if getattr(args, name) < low:
            raise UserError(f"--{name.replace('_', '-')} must be at least {low}, got {getattr(args, name)}")
    if not math.isfinite(args.temperature) or args.temperature < 0:
        raise UserError(f"--temperature must be a finite number of at least 0, got {args.temperature}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {args.device} but no CUDA device is available")
    try:
        torch.device(args.device)
    except RuntimeError:
        raise UserError(f"--device {args.device!r} is not a device (cpu, cuda, cuda:N)") from None


def check_memory(config, prompt_len, tokens, window, device):
    """Refuse, before the weights are put on the device, a sample that would not fit there (one line: the estimate,
    what is available, the most tokens that fit). window: the most tokens the model sees (None: all)."""
    available = memory.available_memory(device)
    needed = memory.generation_estimate(config, prompt_len, tokens, window=window)
    if available is not None and needed["peak"] > available:
        fits = memory.tokens_that_fit(config, prompt_len, available)
        raise UserError(f"--tokens {tokens} after a {prompt_len}-token prompt needs about "
                        f"{memory.human_bytes(needed['peak'])} ({memory.format_memory(needed)}) but {device} has "
                        f"{memory.human_bytes(available)} available; "
                        + (f"--tokens {fits} fits" if fits > 0 else "not even one token fits"))


def main(argv):
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("path", help="a run directory (out/<run_name>) or a checkpoint file")
    parser.add_argument("--prompt", default="", help="text to continue")
    parser.add_argument("--tokens", type=int, default=300, help="new tokens per sample")
    parser.add_argument("--num-samples", type=int, default=1)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=200, help="sample among the k likeliest tokens; 0 = all")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--tokenizer", default=None, help="tokenizer name or tokenizer.json; default: the one the "
                        "checkpoint records")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--extrapolate", action="store_true",
                        help="let the model see the whole sample, past the context it was trained on (seq_len)")
    args = parser.parse_args(argv)  # a malformed option: a UserError too
    check_arguments(args)
    checkpoint_path, checkpoint = files.load_checkpoint(args.path)
    tokenizer_name = args.tokenizer or checkpoint.get("tokenizer")
    if tokenizer_name is None:  # e.g. imported from a Hugging Face folder that does not say
        raise UserError(f"{checkpoint_path} records no tokenizer; name one with --tokenizer")
    try:
        tokenizer = tokenizer_lib.of_checkpoint(checkpoint, args.tokenizer)
    except ValueError as e:  # an unknown name (gpt2's failed download is an OSError: run_main reports it)
        raise UserError(str(e)) from None
    window = None if args.extrapolate else model_lib.trained_context(checkpoint)
    prompt_len = 1 + len(tokenizer.encode_ordinary(args.prompt))  # end-of-text first
    check_memory(model_lib.checkpoint_config(checkpoint, checkpoint_path), prompt_len, args.tokens, window,
                 torch.device(args.device))
    model = model_lib.model_from_checkpoint(checkpoint, device=args.device, source=checkpoint_path)
    if model.config.vocab_size < tokenizer.n_vocab:
        raise UserError(f"the {tokenizer_name} tokenizer has {tokenizer.n_vocab} tokens but the model only "
                        f"{model.config.vocab_size}: name the tokenizer it was trained with (--tokenizer)")
    trained = model_lib.trained_context(checkpoint)
    if trained is None:
        print(f"note: {checkpoint_path} records no trained context (seq_len): the model sees the whole sample",
              file=sys.stderr)
    elif args.extrapolate and prompt_len + args.tokens > trained:
        print(f"note: --extrapolate: samples run to {prompt_len + args.tokens} tokens, past the {trained} the model "
              f"was trained on", file=sys.stderr)
    print(model_lib.sample_texts(model, tokenizer, [args.prompt] * args.num_samples, args.tokens, args.temperature,
                                 args.top_k or None, args.seed, window=window), end="")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, sys.argv[1:]))
