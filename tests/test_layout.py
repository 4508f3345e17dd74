"""Facts about the code's layout that keep it easy to change (issue #22): imports flow one way, modules
stay small, and the public API holds every name README's Python section documents."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import avpcli

PACKAGE = Path(avpcli.__file__).parent
README = PACKAGE.parent / "README.md"
LONGEST_MODULE = 500


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The avpcli modules that `path` imports at run time, anywhere in the file (a function-level import
    that closes a circle is a circle all the same); imports under `if TYPE_CHECKING:` are left out."""
    tree = ast.parse(path.read_text(), str(path))
    skipped = {id(inner) for node in ast.walk(tree) if _type_checking_only(node) for inner in ast.walk(node)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # `from avpcli.engine import loop` imports the module avpcli.engine.loop.
            found |= {f"{node.module}.{alias.name}" for alias in node.names} & known
    return {name for name in found if name in known}


def import_graph() -> dict[str, set[str]]:
    """Module → the avpcli modules its import runs. Importing a.b.c also runs the packages a.b and a,
    except those the importer already sits in (their __init__ is running when it is imported)."""
    found = modules()
    known = set(found)
    graph: dict[str, set[str]] = {}
    for name, path in found.items():
        own_packages = {name.rsplit(".", depth)[0] for depth in range(1, name.count(".") + 1)}
        if path.name == "__init__.py":
            own_packages.add(name)
        targets = set()
        for imported in imported_modules(path, known):
            parts = imported.split(".")
            targets |= {".".join(parts[:end]) for end in range(1, len(parts) + 1)} - own_packages
        graph[name] = (targets & known) - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_planted_circle_and_passes_a_chain():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_import_graph_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from avpcli import jobs\n"
                      "def f():\n    from avpcli.engine import loop\n    import avpcli.key\n")
    assert imported_modules(module, {"avpcli.jobs", "avpcli.engine", "avpcli.engine.loop", "avpcli.key"}) == {
        "avpcli.engine", "avpcli.engine.loop", "avpcli.key"}


def test_no_import_cycle_among_avpcli_modules():
    assert cycles(import_graph()) == []


def test_the_engine_imports_neither_files_nor_targets_nor_keys():
    graph = import_graph()
    engine = [name for name in graph if name == "avpcli.engine" or name.startswith("avpcli.engine.")]
    outside = {imported for name in engine for imported in graph[name] if not imported.startswith("avpcli.engine")}
    assert outside <= {"avpcli.metrics", "avpcli.errors"}


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_module_is_over_500_lines(name):
    lines = modules()[name].read_text().count("\n")
    assert lines <= LONGEST_MODULE, f"{name} has {lines} lines; split it by concept"


def _documented_names() -> set[str]:
    """The names README's Python section shows as things to call or classes to use: `Name(…)`,
    `name(…)` and `Name` in backticks, less the methods of the classes it documents."""
    text = README.read_text()
    section = text[text.index("\n## Python"):]
    section = section[:section.index("\n## ", 1)]
    names = set()
    for token in re.findall(r"`([^`\n]+)`", section):
        match = re.match(r"([A-Za-z_]\w*)\(|([A-Z]\w*)(?:$|\.)", token)
        if match:
            names.add(match.group(1) or match.group(2))
    for line in re.findall(r"^from avpcli import (.+)$", section, re.M):
        names |= {name.strip() for name in line.split(",")}
    methods = {name for cls in (avpcli.Encryptor, avpcli.Ciphertext, avpcli.Key) for name in dir(cls)}
    return names - methods


def test_the_public_api_exports_everything_readme_documents():
    documented = _documented_names()
    assert {"Encryptor", "Key", "decrypt", "encrypt_folder", "decrypt_paths"} <= documented  # the parse works
    missing = sorted(name for name in documented if name not in avpcli.__all__)
    assert missing == []
    for name in documented:
        assert getattr(avpcli, name) is not None


def test_every_module_level_import_is_a_declared_dependency():
    # A package that only an extra pulls in (ray brings click, for one) passes the tests, whose install has the
    # extras, and breaks `pip install -e . && avp demo`. Optional packages are imported inside functions.
    import importlib.metadata
    import sys
    import tomllib

    def normal(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    project = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]
    declared = {normal(re.split(r"[<>=!~\[ ;]", requirement)[0]) for requirement in project["dependencies"]}
    distributions = importlib.metadata.packages_distributions()
    undeclared = []
    for name, path in modules().items():
        for node in ast.parse(path.read_text(), str(path)).body:
            if isinstance(node, ast.Import):
                roots = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                roots = [node.module.split(".")[0]]
            else:
                continue
            for root in roots:
                if root in sys.stdlib_module_names or root in ("avpcli", "__future__"):
                    continue
                if not {normal(dist) for dist in distributions.get(root, [root])} & declared:
                    undeclared.append(f"{name}: {root}")
    assert not undeclared, f"imported at module level but not in pyproject's dependencies: {undeclared}"
