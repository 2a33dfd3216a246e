"""The config mechanism and the command line: override files, key=value, type and range checks, did-you-mean,
--help and --list, and the one runner that every script's command goes through.

The defaults themselves are declared elsewhere (train.py's TrainConfig, model.py's ModelConfig), one per line
with a comment; this file only reads them. It imports nothing of the project, so every script can use it
(nanoGPT's configurator.py plays the same part).

    overrides = read_overrides(["configs/x.py", "lr=3e-4"])   # {name: value}, files first, key=value last
    value = check_type("lr", 3e-4, float)                      # or UserError naming the key
    check_valid(values, {"lr": positive})                      # or UserError naming the key and its range
    sys.exit(run_main(main, sys.argv[1:]))                     # a script's last line: errors as one line
"""
import argparse
import ast
import difflib
import inspect
import io
import math
import os
import re
import runpy
import signal
import sys
import tokenize
import types
import typing
from pathlib import Path


class UserError(Exception):
    """A mistake in the command, config or data, or a fault of the machine (a full disk): reported as one
    line, exit status 2."""


# ----------------------------------------------------------------------------- the command line

def run_main(main, argv, exit_at_once=False):
    """Run a script's main(argv) as a command; returns the exit status: main's own (None: 0); 2 after one line
    "error: ..." on stderr for a UserError or an OSError (the machine's: a full disk, a vanished directory); 130
    after one line for Ctrl-C, wherever it comes. exit_at_once: leave with os._exit(status) once stdout and stderr
    are flushed, skipping the interpreter's teardown: True always (train.py under torchrun says why), or
    "interrupted" after Ctrl-C only (prepare.py: a Hub download still in flight would hold the process)."""
    if hasattr(signal, "SIGXFSZ"):  # POSIX: a write past the file-size limit (ulimit -f) then fails with EFBIG,
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # which is one line, instead of killing without a word
    try:
        status = main(argv) or 0
    # each line in one write: print writes the text and its newline apart, and the ranks of a launch share one
    # stderr, so two ranks' lines could run together
    except (UserError, OSError) as e:
        sys.stderr.write(f"error: {one_line(e)}\n")
        status = 2
    except KeyboardInterrupt as e:  # a message, where there is one, says what the interruption left
        sys.stderr.write("interrupted" + (f": {one_line(e)}" if str(e) else "") + "\n")
        status = 130
    if exit_at_once is True or (exit_at_once == "interrupted" and status == 130):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status


def one_line(error):
    """What went wrong, in one line: an OSError of the machine as "path: reason", anything else its first line."""
    if isinstance(error, OSError) and error.strerror:
        return f"{error.filename}: {error.strerror}" if error.filename else error.strerror
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


class ArgumentParser(argparse.ArgumentParser):
    """argparse for the scripts' own options: a bad option is a UserError (one line, exit status 2 through
    run_main), not argparse's usage block. Options are spelled with hyphens (--top-k); an old spelling with
    underscores (--top_k) is still read, with a one-line notice."""

    def error(self, message):
        raise UserError(f"{message} (see --help)")

    def parse_known_args(self, args=None, namespace=None):  # parse_args and every sub-command's parser come here
        args = sys.argv[1:] if args is None else list(args)
        return super().parse_known_args([self.respelled(arg) for arg in args], namespace)

    def respelled(self, arg):
        """--top_k (or --top_k=5) as --top-k where that is one of this parser's options, with a notice."""
        flag, equals, value = arg.partition("=")
        new = "--" + flag[2:].replace("_", "-")
        if not flag.startswith("--") or "_" not in flag or new not in self._option_string_actions:
            return arg
        print(f"note: {flag} is spelled {new} now", file=sys.stderr)
        return new + equals + value


# ----------------------------------------------------------------------------- reading overrides

def parse_value(text):
    """key=value on the command line: a Python literal where it parses, true/false, else the text itself."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


def read_overrides(argv):
    """{name: value} from config files (plain Python, run in order) and then key=value pairs, wherever each stands
    on the command line: key=value always wins over a file."""
    overrides = {}
    for arg in [a for a in argv if "=" not in a] + [a for a in argv if "=" in a]:
        if "=" in arg:
            key, text = arg.split("=", 1)
            overrides[key] = parse_value(text)
        elif arg.endswith(".py"):
            if not os.path.isfile(arg):
                raise UserError(f"config file {arg} not found")
            try:
                namespace = runpy.run_path(arg)
            except BaseException as e:  # a config is user code: a SyntaxError or a SystemExit in it is one line
                raise UserError(f"config file {arg} failed: {type(e).__name__}: {e}")
            for key, value in namespace.items():
                # a config may import helpers or define _private names; only plain values are keys
                if key.startswith("_") or isinstance(value, (types.ModuleType, types.FunctionType, type)):
                    continue
                overrides[key] = value
        else:
            raise UserError(f"expected a config file (.py) or key=value, got {arg!r}")
    return overrides


def unknown_key(key, known):
    close = difflib.get_close_matches(key, list(known), n=1)
    return UserError(f"unknown config key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))


# ----------------------------------------------------------------------------- types

def check_type(key, value, hint):
    """Return value (ints widened to float where a float is wanted, lists to tuples) or raise UserError naming
    the key. A float must be finite: 1e999 is a typo, not a setting."""
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union \
        else (hint,)
    if value is None and type(None) in allowed:
        return value
    if typing.get_origin(hint) is tuple:  # a list of texts (sample_prompts) or numbers (mixture_weights)
        item = typing.get_args(hint)[0]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and item is float:
            value = (value,)
        if isinstance(value, (list, tuple)) and all(isinstance(v, item) and not isinstance(v, bool) or
                                                    (item is float and is_number(v)) for v in value):
            value = tuple(float(v) for v in value) if item is float else tuple(value)
            if item is float and not all(math.isfinite(v) for v in value):
                raise UserError(f"{key} must hold finite numbers, got {value!r}")
            return value
        raise UserError(f"{key} must be a list of {'strings' if item is str else 'numbers'}, got {value!r}")
    if isinstance(value, bool):  # bool is an int subclass; only a bool may stand for a bool
        if bool in allowed:
            return value
    elif float in allowed and is_number(value):
        if not math.isfinite(value):
            raise UserError(f"{key} must be a finite number, got {value!r}")
        return float(value)
    elif any(t is not type(None) and isinstance(value, t) for t in allowed):
        return value
    names = " or ".join("None" if t is type(None) else t.__name__ for t in allowed)
    raise UserError(f"{key} must be {names}, got {value!r}")


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ----------------------------------------------------------------------------- ranges
# A rule takes a value and returns what is wrong with it ("" when nothing is). None, where a key allows
# it, is never passed to a rule.

def at_least(low):
    def rule(value):
        return "" if value >= low else f"must be at least {low}"
    return rule


def positive(value):
    return "" if value > 0 else "must be greater than 0"


def between(low, high, high_included=True):
    """low <= value <= high, or < high."""
    def rule(value):
        ok = low <= value <= high if high_included else low <= value < high
        return "" if ok else f"must be in [{low}, {high}{']' if high_included else ')'}"
    return rule


def one_of(*choices):
    def rule(value):
        return "" if value in choices else f"is not one of {', '.join(map(str, choices))}"
    return rule


def not_empty(value):
    return "" if len(value) else "must not be empty"


def all_at_least(low):
    """For a list of numbers."""
    def rule(values):
        return "" if all(v >= low for v in values) else f"must hold numbers of at least {low}"
    return rule


def plain_name(value):
    """A name for one directory: not empty, no path separator, not . or .."""
    return "" if value not in ("", ".", "..") and "/" not in value and os.sep not in value \
        else "must be a plain directory name (not empty, no '/', not '.' or '..')"


def directory_or_new(value):
    """A directory that exists, or a path where one can be made."""
    if not value:
        return "must not be empty"
    return "is a file, not a directory" if os.path.isfile(value) else ""


def check_valid(values, rules):
    """Raise UserError for the first value (of a {key: value} dict) that its rule refuses, naming the key."""
    for key, rule in rules.items():
        value = values[key]
        problem = "" if value is None else rule(value)
        if problem:
            raise UserError(f"{key}={value!r} {problem}")


# ----------------------------------------------------------------------------- --help and --list

def field_comments(cls):
    """{field: comment} of a dataclass written one field a line, `name: type = default  # comment`, where the
    comment may go on over the comment lines below it that are indented past the field."""
    lines = inspect.getsource(cls).splitlines()
    comment_at = {token.start[0] - 1: (token.start[1], token.string.lstrip("#").strip())  # row -> (column, text)
                  for token in tokenize.generate_tokens(io.StringIO("\n".join(lines) + "\n").readline)
                  if token.type == tokenize.COMMENT}
    first_field = next(i for i, line in enumerate(lines) if line.lstrip().startswith("class ")) + 1
    body_indent = len(lines[first_field]) - len(lines[first_field].lstrip())
    comments, field = {}, None
    for row, line in enumerate(lines):
        indent = len(line) - len(line.lstrip())
        match = re.match(r"(\w+)\s*:", line.strip())
        if indent == body_indent and match:
            field = match.group(1)
            comments[field] = comment_at.get(row, (0, ""))[1]
        elif line.strip().startswith("#") and field is not None and comment_at[row][0] > body_indent:
            comments[field] = f"{comments[field]} {comment_at[row][1]}".strip()  # the field's comment goes on
        else:  # a section heading, a blank line, a method: the field's comment has ended
            field = None
    return comments


def describe(cls, skip=(), values=None):
    """--help text of a dataclass: every field with its default (or its value in `values`, an instance) and
    comment."""
    comments = field_comments(cls)
    lines = []
    for field in cls.__dataclass_fields__.values():
        if field.name in skip:
            continue
        comment = comments.get(field.name, "")
        value = field.default if values is None else getattr(values, field.name)
        lines.append(f"  {field.name} = {value!r}" + (f"  # {comment}" if comment else ""))
    return "\n".join(lines)


def config_docstrings(directory):
    """[(path, first line of its docstring)] of every config file in directory, read without running it."""
    rows = []
    for path in sorted(Path(directory).glob("*.py")):
        try:
            doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        except (SyntaxError, OSError, UnicodeDecodeError) as e:
            doc = f"(unreadable: {type(e).__name__})"
        rows.append((path, doc.strip().splitlines()[0] if doc.strip() else "(no docstring)"))
    return rows
