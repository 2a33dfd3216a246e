"""The house: one home per fact, imports run one way, the config mechanism stands alone, every command goes through
its runner, --help and --list say what there is, and nothing points outside the repository."""
import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

import train
from conftest import ROOT

PROJECT_FILES = sorted(ROOT.glob("*.py"))
SOURCES = PROJECT_FILES + sorted((ROOT / "lm_eval_tasks").glob("*.py"))  # every file of the project's code


def imported_modules(path):
    """Every module name that a file imports, anywhere in it (its first part: "torch" for torch.nn)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def project_imports(path):
    """The project modules that a file imports, anywhere in it (a lazy import inside a function counts too)."""
    return imported_modules(path) & {p.stem for p in PROJECT_FILES} - {path.stem}


# ----------------------------------------------------------------------------- one home per fact

# Each fact, declared once: {name: the file that defines it}; no other file of the project defines the name.
HOMES = {
    "matmul_weights": "model.py", "flops_per_token": "model.py",  # the one FLOP count, beside the parameter count
    "GPU_PEAK_FLOPS": "runs.py", "measured_cpu_peak": "runs.py", "peak_flops": "runs.py",  # where a run is set up
    "TOKENIZERS": "tokenizer.py", "load_tokenizer": "tokenizer.py", "EOT": "tokenizer.py", "token_dtype": "tokenizer.py",
    "read_meta": "data.py", "split_files": "data.py", "META_FIELDS": "data.py", "meta_header": "data.py",  # the format
    "compile_model": "parallel.py", "COMPILE_MODES": "parallel.py",  # torch.compile, for every layout
    "run_main": "config.py", "one_line": "config.py", "ArgumentParser": "config.py",  # the command line
}
# The command-line scripts. model.py, with its summary command, is the model's library first: everything imports it.
SCRIPTS = ["train.py", "prepare.py", "sample.py", "export.py", "plot.py", "bench.py", "gpu_check.py", "sweep.py",
           "lm_eval_tasks/shakespeare.py"]
SCRIPT_IMPORTS = {  # the only scripts that scripts import, each for a reason
    ("plot.py", "train"): "plot.py lr lays a config out as a run would: train.py declares the defaults",
    ("bench.py", "prepare"): "bench.py prepare measures prepare.py's own tokenize-and-write loop",
    ("bench.py", "export"): "bench.py train builds transformers' Llama from export.hf_config",
    ("export.py", "train"): "the model card lists what a run changed from train.py's defaults, which train.py declares",
    ("export.py", "plot"): "the model card's loss curve is plot.py's figure of the run",
    ("gpu_check.py", "train"): "the GPU check runs train.py as a user does: a checkpoint, a resume, a sample",
    ("gpu_check.py", "prepare"): "the GPU check prepares the embedded Shakespeare to train on",
    ("sweep.py", "train"): "a sweep checks every point's config as train.py does, before it starts any",
}


def top_level_names(path):
    """The names a file defines at its top level: functions, classes and assigned names."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def test_each_fact_has_one_home():
    defined = {p.relative_to(ROOT).as_posix(): top_level_names(p) for p in SOURCES}
    assert {name: sorted(f for f, names in defined.items() if name in names) for name in HOMES} == \
        {name: [home] for name, home in HOMES.items()}
    assert not (ROOT / "flops.py").exists()  # its count went to model.py and the devices' peaks to runs.py
    # the summary's "6N" is the count that mfu uses, not a second one
    assert "flops_per_token(config)" in (ROOT / "model.py").read_text().split("def parameter_summary")[1]


def test_torch_compile_is_called_in_parallel_py_only():
    calls = [(p.name, ast.unparse(node)) for p in SOURCES for node in ast.walk(ast.parse(p.read_text()))
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "compile"
             and ast.unparse(node.func.value) != "re"]
    assert {name for name, _ in calls if name != "attention.py"} == {"parallel.py"}
    # attention.py compiles two functions, not a model: flex_attention (a fused kernel only compiled) and the block
    # mask's builder (which eagerly materialises the whole mask)
    assert sorted(call for name, call in calls if name == "attention.py") == ["torch.compile(block_mask)",
                                                                             "torch.compile(flex_attention)"]


def test_every_command_goes_through_the_one_runner():
    commands = []
    for path in SOURCES:
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.If) and ast.unparse(node.test) == "__name__ == '__main__'":
                commands.append(path.relative_to(ROOT).as_posix())
                assert len(node.body) == 1, path.name  # one call: the script's last line
                call = ast.unparse(node.body[0])
                assert re.fullmatch(r"sys\.exit\((config\.)?run_main\(main, sys\.argv\[1:\](, .*)?\)\)", call), call
    assert sorted(commands) == sorted(SCRIPTS + ["model.py", "memory.py"])  # the summaries of model.py and memory.py
    # the one-line error is printed in one place only: config.run_main
    printing = [p.name for p in SOURCES if re.search(r"""(print\(|write\()f?["']error:""", p.read_text())]
    assert printing == ["config.py"]


def test_no_script_imports_another_script():
    scripts = {s: ROOT / s for s in SCRIPTS}
    names = {Path(s).stem for s in SCRIPTS}
    imports = {(s, name) for s, path in scripts.items() for name in imported_modules(path) & names - {Path(s).stem}}
    assert imports <= set(SCRIPT_IMPORTS), imports - set(SCRIPT_IMPORTS)
    # the prepared-data format is data.py's: prepare.py writes it through data.py, not the other way round
    assert "data" in project_imports(ROOT / "prepare.py") and "prepare" not in project_imports(ROOT / "data.py")


def test_no_test_module_imports_another():
    tests = {p.stem for p in (ROOT / "tests").glob("*.py")} - {"conftest"}
    offending = {p.name: imported_modules(p) & tests for p in (ROOT / "tests").glob("*.py")}
    assert {name: found for name, found in offending.items() if found} == {}


def test_submitit_is_imported_by_the_slurm_executor_only():
    """submitit is an optional install (requirements-slurm.txt): one import of it, inside sweep.py's Slurm executor,
    so that every other command, and sweep.py's local executor, runs without it."""
    importing = [p.name for p in SOURCES if "submitit" in imported_modules(p)]
    assert importing == ["sweep.py"]
    body = ast.parse((ROOT / "sweep.py").read_text()).body
    top_level = {alias.name.split(".")[0] for node in body if isinstance(node, ast.Import) for alias in node.names}
    top_level |= {node.module.split(".")[0] for node in body if isinstance(node, ast.ImportFrom) and node.module}
    assert "submitit" not in top_level and "tqdm" in top_level  # (the check sees sweep.py's top-level imports)


# ----------------------------------------------------------------------------- imports run one way

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
