"""The package's import structure: the compatibility shims sit on top and nothing below imports them,
no two modules import each other (directly or round a longer loop), and the core layers (diffusion,
models) import nothing from the layers that use them.

Imports are read from the source with `ast`, at any depth (inside functions too), except under
`if TYPE_CHECKING:`; relative imports are resolved against the importing module.
"""
from __future__ import annotations

import ast
from pathlib import Path

import guided_diffusion

PACKAGE = "guided_diffusion"
ROOT = Path(guided_diffusion.__file__).parent

# The original's module names: they only re-export or map arguments.
SHIMS = {f"{PACKAGE}.{name}" for name in (
    "dist_util", "fp16_util", "gaussian_diffusion", "image_datasets", "logger", "losses", "nn", "resample",
    "respace", "script_util", "train_util", "unet",
)}
CORE = ("diffusion", "models")
UPPER = ("sampling", "training", "cli", "evaluation", "demo", "editing")
ABOVE_CORE = ("config", "weights", "data")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST):
    """Every Import / ImportFrom node, skipping the bodies of `if TYPE_CHECKING:`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    base = package.split(".")
    if node.level > 1:
        base = base[: -(node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _package_module(name: str) -> str | None:
    """The package module `name` refers to (the longest known prefix), or None outside the package."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports_of(module: str) -> set[str]:
    """The package modules `module` imports (`from pkg import mod` counts as importing pkg.mod)."""
    tree = ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))
    found: set[str] = set()
    for node in _import_nodes(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = _resolve(module, node)
            targets = [f"{base}.{alias.name}" for alias in node.names] or [base]
        for target in targets:
            resolved = _package_module(target)
            if resolved is not None and resolved != module:
                found.add(resolved)
    return found


GRAPH = {module: _imports_of(module) for module in MODULES}


def _in_layer(module: str, layer: str) -> bool:
    return module == f"{PACKAGE}.{layer}" or module.startswith(f"{PACKAGE}.{layer}.")


def test_the_walk_sees_the_package():
    assert SHIMS <= set(MODULES), sorted(SHIMS - set(MODULES))
    assert f"{PACKAGE}.diffusion.gaussian" in GRAPH[f"{PACKAGE}.gaussian_diffusion"]  # absolute, from-import
    assert f"{PACKAGE}.models.factory" in GRAPH[f"{PACKAGE}.config"]  # the configs build through the factories


def test_the_top_level_holds_only_the_original_modules_and_layer_packages():
    top_modules = {module for module, path in MODULES.items()
                   if module.count(".") == 1 and path.name != "__init__.py"}
    assert top_modules - SHIMS == {f"{PACKAGE}.__main__"}, sorted(top_modules - SHIMS)
    packages = {module.split(".")[1] for module in MODULES if module.count(".") >= 1} - {m.split(".")[1] for m in top_modules}
    assert packages == {name for layer in LAYERS for name in layer} - {"__main__"}, sorted(packages)


def test_nothing_below_the_shims_imports_a_shim():
    offenders = sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items() if module not in SHIMS and module != PACKAGE
        for target in targets if target in SHIMS
    )
    assert not offenders, "modules below the compatibility layer import it:\n" + "\n".join(offenders)


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    for start in sorted(graph):
        if state.get(start):
            continue
        path = [start]
        iterators = [iter(sorted(graph[start]))]
        state[start] = 1
        while iterators:
            nxt = next(iterators[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                iterators.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                iterators.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_no_import_cycles():
    # The package's __init__ may import its own modules; a module importing the package root is not a cycle.
    graph = {module: {t for t in targets if t != PACKAGE} for module, targets in GRAPH.items()}
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_reports_a_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_core_layers_import_nothing_above_them():
    offenders = sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items() if any(_in_layer(module, layer) for layer in CORE)
        for target in targets if target in SHIMS or any(_in_layer(target, layer) for layer in (*ABOVE_CORE, *UPPER))
    )
    assert not offenders, "diffusion/ and models/ must not import the layers built on them:\n" + "\n".join(offenders)


# The layers of docs/ARCHITECTURE.md, bottom (0) to top: a module may import its own layer or lower ones.
LAYERS = (
    ("runtime",),
    ("diffusion", "models"),
    ("config", "weights", "data"),
    ("sampling", "evaluation", "editing", "training", "demo"),
    ("cli", "__main__"),
)


def _rank(module: str) -> int:
    if module in SHIMS:
        return len(LAYERS)
    for rank, names in enumerate(LAYERS):
        if any(_in_layer(module, name) for name in names):
            return rank
    raise AssertionError(f"{module} is in no layer of docs/ARCHITECTURE.md: place it there and in LAYERS")


def test_every_module_imports_only_its_layer_or_lower_ones():
    modules = [module for module in GRAPH if module != PACKAGE]
    ranks = {module: _rank(module) for module in modules}
    offenders = sorted(
        f"{module} (layer {ranks[module]}) imports {target} (layer {ranks[target]})"
        for module in modules for target in GRAPH[module] if target != PACKAGE and ranks[target] > ranks[module]
    )
    assert not offenders, "imports that point up the layers:\n" + "\n".join(offenders)
