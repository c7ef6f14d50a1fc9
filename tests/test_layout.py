"""The package's layers: every import of storm_hf (module level and inside functions) goes to the model or to a
layer below, none forms a cycle, the model imports nothing else of storm_hf, and the remote code that
save_pretrained ships is byte for byte the model's files. The old module paths still import, with a warning."""
import ast
import os
import subprocess
import sys
import warnings

import pytest

import storm_hf

from .conftest import tiny_model

PACKAGE_DIR = os.path.dirname(os.path.abspath(storm_hf.__file__))
MODEL_FILES = ("configuration_storm.py", "modeling_storm.py", "processing_storm.py", "video_processing_storm.py",
               "checkpointing_storm.py", "selective_scan.py", "video_io.py")
# Lowest first. A module may import the model, the layers listed before its own, and its own package.
LAYERS = ("miniature", "inference", "training", "evaluation", ("integrations", "apps"))


def module_files() -> dict[str, str]:
    """{module name: file} for every module of the installed storm_hf."""
    found = {}
    for folder, _, files in os.walk(PACKAGE_DIR):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                parts = ["storm_hf", *os.path.relpath(path, PACKAGE_DIR)[:-3].split(os.sep)]
                found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports_of(module: str, path: str, modules) -> set[str]:
    """The storm_hf modules that ``module`` imports anywhere in its file (`from pkg import sub` counts as sub)."""
    is_package = path.endswith("__init__.py")
    found = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: len(module.split(".")) - (node.level - 1) - (0 if is_package else 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target
                     for alias in node.names]
        else:
            continue
        found.update(name for name in names if name == "storm_hf" or name.startswith("storm_hf."))
    return found


def layer_of(module: str) -> int:
    """0 for the model (and the package's root, which imports it), 1 + the index in LAYERS for a subpackage's
    modules, and the top for `python -m storm_hf` (the command)."""
    parts = module.split(".")
    if module == "storm_hf.__main__":
        return len(LAYERS) + 1
    if len(parts) < 2 or parts[1] + ".py" in MODEL_FILES or parts[1] == "_moved":
        return 0
    for index, layer in enumerate(LAYERS, 1):
        if parts[1] in (layer if isinstance(layer, tuple) else (layer,)):
            return index
    raise AssertionError(f"{module} belongs to no layer: add its folder to LAYERS")


@pytest.fixture(scope="module")
def graph():
    modules = module_files()
    return {module: imports_of(module, path, modules) for module, path in modules.items()}


def test_the_checker_sees_imports_inside_functions_and_relative_ones(graph):
    assert "storm_hf.miniature.temporal_qa" in graph["storm_hf.apps.demo"]  # inside main()
    assert "storm_hf.training.checkpoints" in graph["storm_hf.training.job"]
    assert "storm_hf.inference" in graph["storm_hf.integrations.lmms_eval"]


def test_no_import_cycle(graph):
    state, stack = {}, []

    def visit(module):
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                cycle = stack[stack.index(target):] + [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_imports_only_go_down(graph):
    wrong = []
    for module, targets in graph.items():
        own = module.split(".")[:2]
        for target in targets:
            if target == "storm_hf" and module != "storm_hf":
                wrong.append(f"{module} imports the package root (import what it needs from its module)")
            elif layer_of(module) == layer_of(target) == 0 or (len(own) > 1 and target.split(".")[:2] == own):
                continue  # the model's files among themselves; a subpackage's modules among themselves
            elif layer_of(target) >= layer_of(module):
                wrong.append(f"{module} (layer {layer_of(module)}) imports {target} (layer {layer_of(target)})")
    assert not wrong, "\n".join(wrong)


def test_the_model_imports_nothing_else_of_storm_hf(graph):
    model = {"storm_hf." + name[:-3] for name in MODEL_FILES}
    for module in model:
        assert graph[module] <= model, f"{module} imports {sorted(graph[module] - model)}"
    assert graph["storm_hf"] <= model | {"storm_hf._moved"}


def test_at_most_ten_modules_sit_at_the_top():
    top = sorted(name for name in os.listdir(PACKAGE_DIR) if name.endswith(".py"))
    assert len(top) <= 10, top
    assert set(MODEL_FILES) <= set(top)


def test_the_remote_code_is_the_model_files_byte_for_byte(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    shipped = sorted(name for name in os.listdir(tmp_path) if name.endswith(".py"))
    assert shipped == sorted(MODEL_FILES)
    for name in shipped:
        with open(tmp_path / name, "rb") as saved, open(os.path.join(PACKAGE_DIR, name), "rb") as source:
            assert saved.read() == source.read(), name


@pytest.mark.parametrize("old, new, name", [
    ("storm_hf.demo", "storm_hf.apps.demo", "load"),
    ("storm_hf.web_demo", "storm_hf.apps.web_demo", "answer_updates"),
    ("storm_hf.temporal_qa", "storm_hf.miniature.temporal_qa", "write_split"),
    ("storm_hf.tiny", "storm_hf.miniature.tiny", "word_tokenizer"),
    ("storm_hf.train", "storm_hf.training.job", "train"),
    ("storm_hf.eval_runner", "storm_hf.evaluation.runner", "set_token_reduction"),
    ("storm_hf.cli", "storm_hf.apps.cli", "main"),
    ("storm_hf.convert_llava_onevision_to_storm", "storm_hf.integrations.convert_llava_onevision",
     "convert_llava_onevision_to_storm"),
])
def test_old_module_paths_import_the_new_modules_with_a_future_warning(old, new, name):
    import importlib

    sys.modules.pop(old, None)
    with pytest.warns(FutureWarning, match=f"{old} moved to {new}"):
        module = importlib.import_module(old)
    assert module is importlib.import_module(new) and module.__spec__.name == new
    assert hasattr(module, name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        importlib.import_module(old)  # once imported, the module is simply there


def test_old_paths_run_with_python_m(tmp_path):
    result = subprocess.run([sys.executable, "-m", "storm_hf.train", str(tmp_path / "missing.yaml")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "storm_hf.train moved to storm_hf.training.job" in result.stderr
    assert "missing.yaml" in result.stderr and "Traceback" not in result.stderr
    result = subprocess.run([sys.executable, "-m", "storm_hf.convert_llava_onevision_to_storm", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "usage" in result.stdout, result.stderr
