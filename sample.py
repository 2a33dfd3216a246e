"""Generate text from a trained run.

    python sample.py out/quickstart --prompt "ROMEO:" --tokens 300 --temperature 0.8 --top_k 200 --num_samples 2

Loads the newest checkpoint of a run directory (or a checkpoint file), continues the prompt as a
fresh document (end-of-text first, as in training) and prints each sample.
"""
import argparse
import sys

import torch

import model as model_lib
import prepare


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


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("path", help="a run directory (out/<run_name>) or a checkpoint file")
    parser.add_argument("--prompt", default="", help="text to continue")
    parser.add_argument("--tokens", type=int, default=300, help="new tokens per sample")
    parser.add_argument("--num_samples", type=int, default=1)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    parser.add_argument("--top_k", type=int, default=200, help="sample among the k likeliest tokens; 0 = all")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--tokenizer", default=None, help="tokenizer name; default: the one the checkpoint records")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    try:
        checkpoint_path = model_lib.checkpoint_file(args.path)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    model = model_lib.load_model(checkpoint_path, device=args.device)
    # mmap: read just the tokenizer's name without loading the weights a second time
    tokenizer_name = args.tokenizer or torch.load(checkpoint_path, mmap=True, weights_only=True)["tokenizer"]
    if tokenizer_name is None:  # e.g. imported from a Hugging Face folder that does not say
        print(f"error: {checkpoint_path} records no tokenizer; name one with --tokenizer", file=sys.stderr)
        return 2
    try:
        tokenizer = prepare.load_tokenizer(tokenizer_name)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(sample_texts(model, tokenizer, [args.prompt] * args.num_samples, args.tokens, args.temperature,
                       args.top_k or None, args.seed), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
