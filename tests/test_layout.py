"""The package's shape, as helpers/__init__.py draws it: subpackages in the order of a run, every import
pointing down that order (function-level imports included), no cycle between modules, and no
function-level import without the reason it is deferred on the line above."""

from __future__ import annotations

import ast
from pathlib import Path

from helpers.paths import REPO_ROOT

HELPERS = REPO_ROOT / "helpers"
# bottom first: a module may import from its own layer and the layers before it
LAYERS = (("errors", "paths", "results"), ("tasks",), ("models",), ("analyses",), ("figures",), ("notebook",), ("run",))


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return 0  # the package itself
    return next(i for i, names in enumerate(LAYERS) if parts[1] in names)


def exists(module: str) -> bool:
    path = REPO_ROOT.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports_of(path: Path) -> list[tuple[int, str, bool]]:
    """(line, module, at module level) for each import of a helpers module in ``path``; ``from a import b``
    counts as an import of ``a.b`` where ``b`` is a module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [f"{node.module}.{a.name}" if exists(f"{node.module}.{a.name}") else node.module for a in node.names]
        for name in names:
            if name == "helpers" or name.startswith("helpers."):
                found.append((node.lineno, name, id(node) in top))
    return found


MODULES = sorted(HELPERS.rglob("*.py"))


def upward_imports(modules: dict[str, list[tuple[int, str, bool]]]) -> list[str]:
    return [f"{source}:{line} imports {target}" for source, found in modules.items() for line, target, _ in found
            if layer_of(target) > layer_of(source)]


def cycles(modules: dict[str, list[tuple[int, str, bool]]]) -> list[str]:
    graph = {source: sorted({target for _, target, _ in found} - {source}) for source, found in modules.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    found_cycles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                path = trail + [node]
                found_cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, trail + [node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return found_cycles


def all_imports() -> dict[str, list[tuple[int, str, bool]]]:
    return {module_name(path): imports_of(path) for path in MODULES}


def test_every_module_sits_in_a_layer_and_every_import_points_down() -> None:
    modules = all_imports()
    missing = [f"{source}:{line} imports {target}" for source, found in modules.items() for line, target, _ in found
               if not exists(target)]
    assert not missing, "imports of modules that do not exist:\n" + "\n".join(missing)
    assert not upward_imports(modules), "imports that point up the layers:\n" + "\n".join(upward_imports(modules))


def test_no_two_modules_import_each_other_through_any_chain() -> None:
    assert not cycles(all_imports()), "import cycles:\n" + "\n".join(cycles(all_imports()))


def test_a_function_level_import_says_why_it_is_deferred() -> None:
    unexplained = []
    for path in MODULES:
        lines = path.read_text(encoding="utf-8").split("\n")
        tree = ast.parse("\n".join(lines))
        top = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top:
                above = [line.strip() for line in lines[: node.lineno - 1] if line.strip()][-4:]
                if "#" not in lines[node.lineno - 1] and not any(line.startswith("#") for line in above):
                    unexplained.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert not unexplained, "function-level imports without a reason:\n" + "\n".join(unexplained)


def test_the_layout_test_sees_an_upward_import_and_a_cycle(tmp_path: Path) -> None:
    """The checks above on modules written to fail them: tasks importing from figures, in a function, and
    two analyses importing each other."""
    assert layer_of("helpers.tasks.spec") < layer_of("helpers.figures.dla")
    assert layer_of("helpers.results") == 0 and layer_of("helpers.run.cli") == len(LAYERS) - 1
    probe = tmp_path / "probe.py"
    probe.write_text("from helpers.analyses import dla\n\ndef f():\n    from helpers.figures import dla\n")
    found = imports_of(probe)
    assert found == [(1, "helpers.analyses.dla", True), (4, "helpers.figures.dla", False)]
    assert upward_imports({"helpers.tasks.spec": found}) == ["helpers.tasks.spec:1 imports helpers.analyses.dla",
                                                             "helpers.tasks.spec:4 imports helpers.figures.dla"]
    assert upward_imports({"helpers.analyses.vectors": found}) == ["helpers.analyses.vectors:4 imports helpers.figures.dla"]
    assert upward_imports({"helpers.figures.viz": found}) == []
    pair = {"helpers.analyses.dla": [(3, "helpers.analyses.stats", True)],
            "helpers.analyses.stats": [(9, "helpers.analyses.dla", False)]}
    assert cycles(pair) == ["helpers.analyses.dla -> helpers.analyses.stats -> helpers.analyses.dla"]
    assert cycles(all_imports()) == []


def test_every_error_the_suite_defines_is_under_its_root() -> None:
    """The runner reports a SuiteError in one message and lets anything else show its traceback (a bug)."""
    import importlib
    import inspect

    from helpers.errors import SuiteError

    defined = {}
    for path in MODULES:
        if path.name == "__main__.py":
            continue
        module = importlib.import_module(module_name(path))
        for name, value in vars(module).items():
            if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == module.__name__:
                defined[f"{module.__name__}.{name}"] = value
    assert len(defined) >= 10, sorted(defined)
    outside = sorted(name for name, cls in defined.items() if not issubclass(cls, SuiteError))
    assert not outside, f"errors not under helpers.errors.SuiteError: {outside}"
