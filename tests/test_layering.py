"""The dependency rules, checked over every module of the installed package:

- no module of torch_badnet (the converter aside) imports torch_badnet.convert, TensorFlow, Keras, onnx or
  matplotlib when it is imported: the converter and the heavy extras are imported only inside the functions that use them;
- the import graph (every import statement, at module level or inside functions) has no cycle;
- the modules live in subpackages by role (docs/layout.md), whose `__init__.py` files import nothing;
- `--help` never loads torch.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import torch_badnet

PACKAGE_DIR = Path(torch_badnet.__file__).parent
HEAVY = ("torch_badnet.convert", "tensorflow", "keras", "onnx", "onnxruntime", "tf2onnx", "matplotlib",  # matplotlib: once a plot is drawn
         "ray")  # ray: only for `batch --ray`


def package_modules() -> dict[str, Path]:
    """Module name -> source file for torch_badnet and torch_badnet.convert (shipped from convert/)."""
    import torch_badnet.convert as convert_package

    modules = {}
    for package, root in (("torch_badnet", PACKAGE_DIR), ("torch_badnet.convert", Path(convert_package.__file__).parent)):
        for path in sorted(root.rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if package == "torch_badnet" and parts[0] == "convert":
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package, *parts])] = path
    return modules


def loaded_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True).stdout
    return set(out.split())


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Modules of `known` that the file imports anywhere (module level or inside functions)."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in known)
    return found - {name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a list of modules, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_every_module_imports_without_the_converter_or_heavy_extras():
    names = [n for n in package_modules() if not n.startswith("torch_badnet.convert") and not n.endswith("__main__")]
    assert {"torch_badnet.defense.pipeline", "torch_badnet.cli.main", "torch_badnet.cli.commands.sweep",
            "torch_badnet.demo.train"} <= set(names)
    modules = loaded_after("\n".join(f"import {name}" for name in names))
    assert "torch_badnet.defense.pipeline" in modules
    for forbidden in HEAVY:
        assert forbidden not in modules, forbidden


def test_import_graph_has_no_cycle():
    modules = package_modules()
    graph = {name: imports_of(name, path, set(modules)) for name, path in modules.items()}
    assert "torch_badnet.report.results" in graph["torch_badnet.defense.pipeline"]  # the graph sees imports
    assert "torch_badnet.convert.keras_h5" in graph["torch_badnet.defense.pipeline"]  # ... inside functions too
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


ROLES = ("data", "nets", "engine", "defense", "report", "batch", "cli", "cli.commands")  # docs/layout.md


def test_modules_live_in_subpackages_by_role():
    top = sorted(p.stem for p in PACKAGE_DIR.glob("*.py"))
    assert top == ["__init__", "__main__", "errors"], f"a flat module belongs in one of {ROLES}: {top}"
    folders = sorted(p.parent.relative_to(PACKAGE_DIR).as_posix().replace("/", ".") for p in PACKAGE_DIR.glob("*/**/__init__.py"))
    assert folders == sorted((*ROLES, "demo"))


@pytest.mark.parametrize("role", ROLES)
def test_role_packages_import_nothing(role):
    init = PACKAGE_DIR.joinpath(*role.split("."), "__init__.py")
    tree = ast.parse(init.read_text())
    assert not [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))], init
    assert loaded_after(f"import torch_badnet.{role}") & {"torch", "numpy", "h5py"} == set()


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("command", [[], ["batch"]])
def test_help_does_not_import_torch(command):
    modules = loaded_after("import contextlib, io\nfrom torch_badnet.cli.main import build_parser\n"
                           "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
                           f"    build_parser().parse_args({command + ['--help']})")
    assert "torch" not in modules and "torch_badnet.convert" not in modules and "ray" not in modules


def test_no_top_level_convert_module_is_installed():
    out = subprocess.run([sys.executable, "-c", "import importlib.util; print(importlib.util.find_spec('convert'))"],
                         capture_output=True, text=True, check=True, cwd="/").stdout.strip()
    assert out == "None"
