"""The data of the two local lm-evaluation-harness tasks in this folder, made from a prepared corpus's val split
(text the run never trained on), written to data/lm_eval/:

    python lm_eval_tasks/shakespeare.py                          # from data/shakespeare (make quickstart prepares it)
    python lm_eval_tasks/shakespeare.py --data data/mine --max-tokens 1024

- passages.jsonl (task shakespeare_passages, loglikelihood_rolling): the first PASSAGES paragraphs of 200-1,000
  bytes; lm_eval reports bits_per_byte, byte_perplexity and word_perplexity over them.
- word_order.jsonl (task shakespeare_word_order, multiple_choice): a line of a play, then the next line as written
  among three copies of it with the words shuffled; acc is the share of questions where the model finds the true
  order likelier (chance: 25%). The four choices have the same bytes, so no length bias. Each question fits in
  --max-tokens tokens (end-of-text included), so lm_eval never cuts one.

Run from the repository root; then lm_eval --include_path lm_eval_tasks ... (docs/export.md,
"Evaluate with lm-evaluation-harness").
"""
import itertools
import json
import random
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # data.py and files.py live one folder up
import data  # noqa: E402
import files  # noqa: E402
import tokenizer as tokenizer_lib  # noqa: E402
from config import ArgumentParser, UserError, run_main  # noqa: E402

PASSAGES = 60  # enough for a stable bits/byte (~30k bytes), few enough to run in seconds on a CPU
QUESTIONS = 100
MIN_LINE_CHARS = 20  # a context line shorter than this ("Exit.", "ACT II.") says little
MIN_WORDS = 5  # distinct words in a question's line: 5! = 120 orders, so three shuffles are always found


def val_documents(data_dir):
    """The val split's documents as text, in order (each is followed by end-of-text in val.bin)."""
    meta = data.read_meta(data_dir)
    enc = tokenizer_lib.of_directory(data_dir, meta["tokenizer"], meta["eot_id"])
    ids = np.concatenate([np.fromfile(path, dtype=meta["dtype"]) for path, _ in data.split_files(data_dir, meta, "val")])
    ends = np.flatnonzero(ids == meta["eot_id"])
    return [enc.decode(doc[:-1].tolist()) for doc in np.split(ids, ends + 1)[:-1]], enc  # each without its end-of-text


def passages(documents):
    paragraphs = (p.strip() for doc in documents for p in re.split(r"\n\s*\n", doc))
    return [{"text": p} for p in paragraphs if 200 <= len(p.encode("utf-8")) <= 1000][:PASSAGES]


def shuffled(words, rng):
    """The words in another order (a line of distinct-enough words has many)."""
    while True:
        order = rng.sample(words, len(words))
        if order != words:
            return order


def word_order_questions(documents, enc, max_tokens, seed=0):
    rng = random.Random(seed)
    pairs = [(previous.strip(), line.strip()) for doc in documents for previous, line in itertools.pairwise(doc.splitlines())
             if len(previous.strip()) >= MIN_LINE_CHARS and len(set(line.split())) >= MIN_WORDS]
    questions = []
    for previous, line in rng.sample(pairs, len(pairs)):
        words, choices = line.split(), {line}
        while len(choices) < 4:
            choices.add(" ".join(shuffled(words, rng)))
        choices = sorted(choices)
        rng.shuffle(choices)
        context = previous + "\n"
        if max(1 + len(enc.encode_ordinary(context + choice)) for choice in choices) <= max_tokens:
            questions.append({"context": context, "choices": choices, "label": choices.index(line)})
        if len(questions) == QUESTIONS:
            return questions
    raise ValueError(f"only {len(questions)} word-order questions fit in {max_tokens} tokens: raise --max-tokens")


def main(argv):
    parser = ArgumentParser(description="Write the local lm-evaluation-harness tasks' data to data/lm_eval/")
    parser.add_argument("--data", default="data/shakespeare", help="a prepared data directory (default data/shakespeare)")
    parser.add_argument("--max-tokens", type=int, default=128, help="the model's context: the run's seq_len (default 128)")
    parser.add_argument("--out", default="data/lm_eval", help="where the .jsonl files go (the task files read them here)")
    args = parser.parse_args(argv)
    if args.max_tokens < 16:
        raise UserError(f"--max-tokens must be at least 16, got {args.max_tokens}")
    try:
        documents, enc = val_documents(Path(args.data))
        tasks = {"passages.jsonl": passages(documents),
                 "word_order.jsonl": word_order_questions(documents, enc, args.max_tokens)}
    except ValueError as e:  # not prepared data, or too little of it; an OSError goes to run_main as it is
        raise UserError(str(e)) from None
    Path(args.out).mkdir(parents=True, exist_ok=True)
    for name, rows in tasks.items():
        files.write_text_atomic(Path(args.out) / name, "".join(json.dumps(row) + "\n" for row in rows))
        print(f"wrote {Path(args.out) / name} ({len(rows)} rows)")


if __name__ == "__main__":
    sys.exit(run_main(main, sys.argv[1:]))
