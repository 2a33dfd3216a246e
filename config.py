"""The config mechanism: override files, key=value, type and range checks, did-you-mean, --help and --list.

The defaults themselves are declared elsewhere (train.py's TrainConfig, model.py's ModelConfig), one per line
with a comment; this file only reads them. It imports nothing of the project, so every script can use it
(nanoGPT's configurator.py plays the same part).

    overrides = read_overrides(["configs/x.py", "lr=3e-4"])   # {name: value}, files first, key=value last
    value = check_type("lr", 3e-4, float)                      # or UserError naming the key
    check_valid(values, {"lr": positive})                      # or UserError naming the key and its range
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
import tokenize
import types
import typing
from pathlib import Path


class UserError(Exception):
    """A mistake in the command, config or data, or a fault of the machine (a full disk): reported as one
    line, exit status 2."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse for the scripts' own options: a bad option is a UserError (one line, exit status 2 where the script
    reports it), not argparse's usage block."""

    def error(self, message):
        raise UserError(f"{message} (see --help)")


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
    """{name: value} from config files (plain Python, run in order) and then key=value pairs."""
    overrides = {}
    for arg in argv:
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


def describe(cls, skip=()):
    """--help text of a dataclass: every field with its default and comment."""
    comments = field_comments(cls)
    lines = []
    for field in cls.__dataclass_fields__.values():
        if field.name in skip:
            continue
        comment = comments.get(field.name, "")
        value = field.default
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
