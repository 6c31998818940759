"""The dependency rule of docs/architecture.md, checked on every import in the package: module level,
inside functions, and `importlib.import_module` with a literal name. No exceptions list."""

import ast
from pathlib import Path

import pytest

import medclf

PACKAGE = Path(medclf.__file__).parent

# Each layer and the layers it may import (its own layer always). Keep in step with docs/architecture.md.
BELOW = {
    "core": set(),
    "evaluate": {"core"},
    "data": {"core"},
    "prepare": {"core", "data"},
    "models": {"core", "data"},
    "engine": {"core", "evaluate", "data", "models"},
    "train": {"core", "evaluate", "data", "models", "engine"},
    "infer": {"core", "evaluate", "data", "models", "engine", "train"},
    "explain": {"core", "evaluate", "data", "models", "engine", "train", "infer"},
    "quality": {"core", "evaluate", "data", "models", "engine", "train", "infer"},
    "serve": {"core", "evaluate", "data", "models", "engine", "train", "infer", "explain", "quality"},
    "workflows": {"core", "evaluate", "data", "prepare", "models", "engine", "train", "infer", "explain", "quality"},
    "commands": {"core", "evaluate", "data", "prepare", "models", "engine", "train", "infer", "explain", "quality",
                 "serve", "workflows"},
    "cli": {"core", "commands"},
    "__main__": {"cli"},
    "__init__": set(),
}
TORCH_FREE = ("core", "evaluate")


def module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module):
    """medclf.<layer>[...] -> layer; the package itself -> __init__."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports_of(path):
    """(line, imported module) of every import in the file, wherever it stands."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            found.append((node.lineno, base))
            # `from medclf.core import errors` imports the submodule medclf.core.errors
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names
                      if (PACKAGE.parent / Path(*f"{base}.{alias.name}".split("."))).with_suffix(".py").exists()]
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
              and node.args):
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.append((node.lineno, arg.value))
            elif isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
                found.append((node.lineno, arg.values[0].value.rstrip(".")))  # a plugin table: its package
    return [(line, name) for line, name in found if name == "medclf" or name.startswith("medclf.")]


def package_files():
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_the_layers_cover_every_module():
    unknown = {module_name(p) for p in package_files() if layer_of(module_name(p)) not in BELOW}
    assert not unknown, f"modules outside every layer of docs/architecture.md: {sorted(unknown)}"


def test_every_import_goes_down_the_layers():
    wrong = []
    for path in package_files():
        here = layer_of(module_name(path))
        for line, name in imports_of(path):
            there = layer_of(name)
            if name != "medclf" and there != here and there not in BELOW[here]:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({here}) imports {name} ({there})")
    assert not wrong, "imports against the dependency rule of docs/architecture.md:\n" + "\n".join(wrong)


def test_no_import_cycles_between_modules():
    """Module-level and function-level imports together form no cycle (a cycle hidden inside a
    function is still a cycle of concepts)."""
    graph = {}
    for path in package_files():
        here = module_name(path)
        graph[here] = {name for _, name in imports_of(path) if name != here and name != "medclf"}
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    # a package's __init__ importing nothing, its modules importing each other's names through it is no cycle
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("layer", TORCH_FREE)
def test_torch_free_layers_import_no_torch(layer):
    heavy = [f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}"
             for path in sorted((PACKAGE / layer).rglob("*.py"))
             for line, name in _all_imports(path) if name.split(".")[0] in ("torch", "torchvision")]
    assert not heavy, f"medclf.{layer} must run without torch:\n" + "\n".join(heavy)


def _all_imports(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.lineno, node.module


def test_the_checker_sees_imports_inside_functions(tmp_path, monkeypatch):
    """The rule would be toothless if a function-level import escaped it: a core module importing
    the CLI inside a function is reported."""
    fake = tmp_path / "medclf"
    (fake / "core").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "core" / "__init__.py").write_text("")
    (fake / "cli.py").write_text("")
    (fake / "core" / "bad.py").write_text("def f():\n    from medclf import cli\n    import importlib\n"
                                          "    importlib.import_module('medclf.workflows.study')\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["PACKAGE"]), "PACKAGE", fake)
    assert imports_of(fake / "core" / "bad.py") == [(2, "medclf"), (2, "medclf.cli"), (4, "medclf.workflows.study")]
    with pytest.raises(AssertionError, match=r"core/bad.py:2 \(core\) imports medclf.cli \(cli\)"):
        test_every_import_goes_down_the_layers()
