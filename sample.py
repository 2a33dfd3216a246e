"""Generate text from a trained run.

    python sample.py out/quickstart --prompt "ROMEO:" --tokens 300 --temperature 0.8 --top_k 200 --num_samples 2

Loads the newest checkpoint of a run directory (or a checkpoint file), continues the prompt as a
fresh document (end-of-text first, as in training) and prints each sample.
"""
import math
import sys

import torch

import files
import memory
import model as model_lib
import prepare
from config import ArgumentParser, UserError


def generate_text(model, tokenizer, prompt, tokens, temperature, top_k, generator):
    """The prompt and its continuation as text; the continuation stops where the model ends the document."""
    prompt_ids = [tokenizer.eot_token] + tokenizer.encode_ordinary(prompt)
    device = next(model.parameters()).device
    out = model.generate(torch.tensor([prompt_ids], device=device), tokens, temperature=temperature, top_k=top_k,
                         generator=generator)
    new_ids = out[0, len(prompt_ids):].tolist()
    if tokenizer.eot_token in new_ids:
        new_ids = new_ids[:new_ids.index(tokenizer.eot_token)]
    return prompt + tokenizer.decode(new_ids, errors="replace")


def sample_texts(model, tokenizer, prompts, tokens, temperature, top_k, seed, heading="sample"):
    """Each prompt continued, under a "----- heading i/n -----" line; reproducible from the seed."""
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    return "".join(f"----- {heading} {i}/{len(prompts)} -----\n"
                   f"{generate_text(model, tokenizer, prompt, tokens, temperature, top_k, generator)}\n"
                   for i, prompt in enumerate(prompts, 1))


def check_arguments(args):
    """Every bad value as one line (config.UserError)."""
    for name, low in (("tokens", 1), ("num_samples", 1), ("top_k", 0), ("seed", 0)):
        if getattr(args, name) < low:
            raise UserError(f"--{name} must be at least {low}, got {getattr(args, name)}")
    if not math.isfinite(args.temperature) or args.temperature < 0:
        raise UserError(f"--temperature must be a finite number of at least 0, got {args.temperature}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {args.device} but no CUDA device is available")
    try:
        torch.device(args.device)
    except RuntimeError:
        raise UserError(f"--device {args.device!r} is not a device (cpu, cuda, cuda:N)") from None


def check_memory(config, prompt_len, tokens, device):
    """Refuse, before the weights are put on the device, a sample that would not fit there (one line: the estimate,
    what is available, the most tokens that fit)."""
    available = memory.available_memory(device)
    needed = memory.generation_estimate(config, prompt_len, tokens)
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
    parser.add_argument("--num_samples", type=int, default=1)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    parser.add_argument("--top_k", type=int, default=200, help="sample among the k likeliest tokens; 0 = all")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--tokenizer", default=None, help="tokenizer name; default: the one the checkpoint records")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    try:
        args = parser.parse_args(argv)  # a malformed option: a UserError too
        check_arguments(args)
        checkpoint_path, checkpoint = files.load_checkpoint(args.path)
        tokenizer_name = args.tokenizer or checkpoint.get("tokenizer")
        if tokenizer_name is None:  # e.g. imported from a Hugging Face folder that does not say
            raise UserError(f"{checkpoint_path} records no tokenizer; name one with --tokenizer")
        try:
            tokenizer = prepare.load_tokenizer(tokenizer_name)
        except (ValueError, OSError) as e:
            raise UserError(str(e)) from None
        config = model_lib.ModelConfig(**checkpoint["model_config"])
        check_memory(config, 1 + len(tokenizer.encode_ordinary(args.prompt)), args.tokens, torch.device(args.device))
        model = model_lib.model_from_checkpoint(checkpoint, device=args.device)
        if model.config.vocab_size < tokenizer.n_vocab:
            raise UserError(f"the {tokenizer_name} tokenizer has {tokenizer.n_vocab} tokens but the model only "
                            f"{model.config.vocab_size}: name the tokenizer it was trained with (--tokenizer)")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(sample_texts(model, tokenizer, [args.prompt] * args.num_samples, args.tokens, args.temperature,
                       args.top_k or None, args.seed), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
