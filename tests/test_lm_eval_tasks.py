"""Tests for lm_eval_tasks/shakespeare.py, the data of the local lm-evaluation-harness tasks: passages and
questions come from the val split only, whole and clean; each question has one true line and three shuffles of
it, and fits in the model's context; the task files read what it writes; bad input is one line. lm_eval itself
is an optional install (requirements-eval.txt), not needed here."""
import json
import re
import subprocess
import sys

import pytest

import data
import prepare
import sources
import tokenizer as tokenizer_lib
from config import run_main
from conftest import ROOT
from lm_eval_tasks import shakespeare

pytestmark = pytest.mark.integration  # scripts in their own processes


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_eval")
    prepared = prepare.prepare("shakespeare", tokenizer="bytes", workers=2, out_dir=str(root / "data"))
    done = subprocess.run([sys.executable, "lm_eval_tasks/shakespeare.py", "--data", str(prepared), "--max-tokens",
                           "96", "--out", str(root / "tasks")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    meta = data.read_meta(prepared)
    is_val = prepare.plan_split("shakespeare", "text", meta["val_fraction"])[0]
    split = {False: [], True: []}
    for key, text in sources.documents("shakespeare"):
        split[is_val(key)].append(text)
    rows = {name: [json.loads(line) for line in (root / "tasks" / name).read_text().splitlines()]
            for name in ("passages.jsonl", "word_order.jsonl")}
    return rows, split


def test_passages_are_whole_paragraphs_of_val_plays_only(tasks):
    rows, split = tasks
    passages = [row["text"] for row in rows["passages.jsonl"]]
    assert len(passages) == 60 and len(set(passages)) == 60
    for text in passages:
        assert 200 <= len(text.encode("utf-8")) <= 1000 and tokenizer_lib.EOT not in text
        assert any(text in play for play in split[True])
        assert not any(text in play for play in split[False])


def test_word_order_questions_hold_one_true_line_and_three_shuffles(tasks):
    rows, split = tasks
    val_lines = {line.strip() for play in split[True] for line in play.splitlines()}
    enc = tokenizer_lib.load_tokenizer("bytes")
    assert len(rows["word_order.jsonl"]) == 100
    for row in rows["word_order.jsonl"]:
        true_line = row["choices"][row["label"]]
        assert row["context"].endswith("\n") and row["context"].strip() in val_lines and true_line in val_lines
        assert len(set(row["choices"])) == 4
        for choice in row["choices"]:
            assert sorted(choice.split()) == sorted(true_line.split())
            assert 1 + len(enc.encode_ordinary(row["context"] + choice)) <= 96  # end-of-text, context, choice
    labels = [row["label"] for row in rows["word_order.jsonl"]]
    assert len(set(labels)) == 4  # the true line is not always in one place


def test_the_task_files_read_what_the_script_writes():
    for task, data_file in (("shakespeare_passages", "passages.jsonl"), ("shakespeare_word_order", "word_order.jsonl")):
        text = (ROOT / "lm_eval_tasks" / f"{task}.yaml").read_text()
        assert re.search(rf"^task: {task}$", text, re.M)
        assert re.search(rf"^    test: data/lm_eval/{data_file}$", text, re.M)


def test_bad_input_is_one_line(tmp_path, capsys):
    """Through run_main, as the command runs (test_cli.py runs the script in a process of its own)."""
    for args, message in ((["--data", str(tmp_path / "nothing")], "meta.json not found"),
                          (["--max-tokens", "3"], "--max-tokens must be at least 16")):
        assert run_main(shakespeare.main, [*args, "--out", str(tmp_path / "o")]) == 2
        out, err = capsys.readouterr()
        assert out == "" and len(err.splitlines()) == 1 and err.startswith("error: ") and message in err
    assert not (tmp_path / "o").exists()
