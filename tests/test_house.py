"""The house: imports run one way, the config mechanism stands alone, --help and --list say what there is, and
nothing points outside the repository."""
import ast
import re
import subprocess
import sys

import pytest

import train
from conftest import ROOT

PROJECT_FILES = sorted(ROOT.glob("*.py"))


def project_imports(path):
    """The project modules that a file imports, anywhere in it (a lazy import inside a function counts too)."""
    names = {p.stem for p in PROJECT_FILES}
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & names - {path.stem}


def test_no_import_circles():
    graph = {p.stem: project_imports(p) for p in PROJECT_FILES}
    circles = []

    def visit(module, stack):
        for dependency in sorted(graph[module]):
            if dependency in stack:
                circles.append(stack[stack.index(dependency):] + [dependency])
            else:
                visit(dependency, stack + [dependency])

    for module in graph:
        visit(module, [module])
    assert circles == []
    assert graph["model"] & {"train", "data", "prepare", "optim", "sched"} == set()  # the model stays plain


def test_the_config_module_imports_nothing_of_the_project():
    assert project_imports(ROOT / "config.py") == set()
    assert project_imports(ROOT / "files.py") == {"config"}
    # model.py's summary command reads key=value through config.py, not train.py
    assert "train" not in project_imports(ROOT / "model.py")


@pytest.mark.integration  # a script in its own process
def test_help_prints_every_key_with_its_comment():
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and result.stderr == ""
    for key in list(train.TRAIN_KEYS) + list(train.MODEL_KEYS):
        line = next((l for l in result.stdout.splitlines() if l.startswith(f"  {key} = ")), None)
        assert line is not None, key
        assert re.search(r"  # \S", line), f"{key} has no comment: {line}"
    assert "  seq_len = 256  # tokens per training sequence" in result.stdout
    assert '"a+b" (one entry drawn as a balance_remaining group)' in result.stdout  # a comment over two lines


@pytest.mark.integration  # a script in its own process
def test_list_prints_every_config_with_its_docstring():
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "--list"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and result.stderr == ""
    lines = result.stdout.splitlines()
    configs = sorted((ROOT / "configs").glob("*.py"))
    assert len(lines) == len(configs)
    for line, path in zip(lines, configs):
        first = ast.get_docstring(ast.parse(path.read_text())).splitlines()[0]
        assert line.startswith(f"configs/{path.name}") and line.endswith(first)


def test_nothing_points_outside_the_repository():
    """The formulas and figures the code relies on are in docs/reference.md, not in files beside the repository."""
    pattern = re.compile(r"REFERENCE\.md|DESIGN\.md|STYLE\.md|seed-small|\.\./shared")
    sources = [*PROJECT_FILES, *(ROOT / "tests").glob("*.py"), *(ROOT / "configs").glob("*.py"), ROOT / "README.md",
               *(ROOT / "docs").glob("*.md")]
    offending = [f"{p.relative_to(ROOT)}:{i}" for p in sources
                 for i, line in enumerate(p.read_text().splitlines(), 1)
                 if pattern.search(line) and p.name != "test_house.py"]
    assert offending == []
