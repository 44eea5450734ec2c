"""No import circles in albef/: the module graph, read from the source with ``ast``, is acyclic.

Every ``import`` / ``from ... import`` of an albef module counts, at module level and inside
functions alike (a function-level import only postpones a circle to the first call; it does
not remove it), as does ``importlib.import_module("albef....")`` with a literal name. Imports
under ``if TYPE_CHECKING:`` never run and are left out.

Edges, for an import of module X made in module M:

- ``import albef.a.b`` / ``from albef.a.b import name``: M -> albef.a.b; ``from albef.a import b``
  where ``b`` is a submodule: M -> albef.a.b (else M -> albef.a). Relative imports are resolved.
- Importing X first runs the ``__init__`` of each package above X, so M -> each of those
  packages too -- except the packages above M itself: they are already in ``sys.modules``
  (being initialised) whenever M's code runs, so importing them from M runs nothing.

A package ``albef.x`` is its ``__init__.py``.
"""
from __future__ import annotations

import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = "albef"


def discover_modules(repo: str = REPO, root: str = ROOT) -> dict[str, tuple[str, bool]]:
    """``{dotted module name: (file path, is_package)}`` for every ``.py`` file under ``repo/root``."""
    modules = {}
    for dirpath, dirnames, files in os.walk(os.path.join(repo, root)):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__pycache__")))
        rel = os.path.relpath(dirpath, repo).split(os.sep)
        for f in sorted(files):
            if not f.endswith(".py"):
                continue
            if f == "__init__.py":
                modules[".".join(rel)] = (os.path.join(dirpath, f), True)
            else:
                modules[".".join(rel + [f[:-3]])] = (os.path.join(dirpath, f), False)
    return modules


def _is_type_checking_guard(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _walk_runtime(tree: ast.AST):
    """``ast.walk`` that skips the body of ``if TYPE_CHECKING:`` (its ``else`` still runs)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if _is_type_checking_guard(node):
            stack.extend(node.orelse)
        else:
            stack.extend(ast.iter_child_nodes(node))


def imported_names(module: str, path: str, is_package: bool) -> list[tuple[str, int]]:
    """The modules ``module`` imports, as ``(dotted name, line)``; a ``from X import y`` gives
    ``X.y`` as well as ``X`` (which of them is a module is decided by the caller)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    package = module if is_package else module.rpartition(".")[0]
    out: list[tuple[str, int]] = []
    for node in _walk_runtime(tree):
        if isinstance(node, ast.Import):
            out.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base_parts = parts[: len(parts) - (node.level - 1)]
                assert base_parts, f"{path}:{node.lineno}: relative import above the top-level package"
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            out.append((base, node.lineno))
            out.extend((f"{base}.{alias.name}", node.lineno) for alias in node.names if alias.name != "*")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, (ast.Attribute, ast.Name))
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            out.append((node.args[0].value, node.lineno))
    return out


def _ancestors(name: str) -> list[str]:
    """``a.b.c`` -> ``[a, a.b]``."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def build_graph(modules: dict[str, tuple[str, bool]]) -> dict[str, dict[str, int]]:
    """``{module: {imported module: first line}}`` over the albef modules (see the module docstring)."""
    graph: dict[str, dict[str, int]] = {m: {} for m in modules}
    for mod, (path, is_pkg) in modules.items():
        already_running = set(_ancestors(mod)) | {mod}
        for name, line in imported_names(mod, path, is_pkg):
            if name not in modules:  # not albef, or ``from albef.x import some_function``
                continue
            for target in _ancestors(name) + [name]:
                if target in modules and target not in already_running:
                    graph[mod].setdefault(target, line)
    return graph


def strongly_connected_components(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative: no recursion limit); components in discovery order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.append(m)
                    if m == node:
                        break
                out.append(sorted(comp))
    return out


def _one_cycle(graph: dict[str, dict[str, int]], comp: list[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first), closed: [a, ..., a]."""
    members, start = set(comp), comp[0]
    prev: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for child in sorted(graph[node]):
                if child not in members:
                    continue
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return [start] + path[::-1][1:] + [start] if len(path) > 1 else [start, start]
                if child not in prev:
                    prev[child] = node
                    nxt.append(child)
        frontier = nxt
    raise AssertionError(f"no cycle through {start} in {comp}")


def import_cycles(repo: str = REPO) -> list[str]:
    """One line per circle: the modules of a strongly connected component and one cycle with lines."""
    modules = discover_modules(repo)
    graph = build_graph(modules)
    lines = []
    for comp in strongly_connected_components(graph):
        if len(comp) == 1 and comp[0] not in graph[comp[0]]:
            continue
        cycle = _one_cycle(graph, comp)
        steps = " -> ".join(
            f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])
        ) + f" -> {cycle[-1]}"
        lines.append(f"{len(comp)} module(s) {comp}: e.g. {steps}")
    return lines


def test_albef_has_no_import_cycles():
    cycles = import_cycles()
    assert not cycles, "import circles in albef/ (a function-level import counts too):\n" + "\n".join(cycles)


# ---------------------------------------------------------------------- the checker itself
def _write(root, files: dict[str, str]) -> str:
    for rel, src in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(src)
    return str(root)


def test_checker_finds_a_function_level_circle_and_resolves_relative_imports(tmp_path):
    repo = _write(tmp_path, {
        "albef/__init__.py": "",
        "albef/a.py": "def f():\n    from albef import b\n",
        "albef/b.py": "from .a import f\n",
        "albef/c.py": "import albef.a\n",  # into the circle, not on it
    })
    (line,) = import_cycles(repo)
    assert "['albef.a', 'albef.b']" in line and "albef.a (line 2) -> albef.b (line 1) -> albef.a" in line


def test_checker_counts_the_init_of_an_imported_package_but_not_the_importers_own(tmp_path):
    own = {
        # a family package importing its members, which import a sibling: the usual, not a circle
        "albef/__init__.py": "",
        "albef/fam/__init__.py": "from albef.fam import member\n",
        "albef/fam/base.py": "",
        "albef/fam/member.py": "from albef.fam.base import X\nfrom albef.fam import base\n",
    }
    assert import_cycles(_write(tmp_path / "own", own)) == []
    other = dict(own, **{
        # importing albef.fam.base from outside runs albef/fam/__init__.py, which imports back
        "albef/fam/member.py": "from albef import user\n",
        "albef/user.py": "def f():\n    from albef.fam.base import X\n",
    })
    (line,) = import_cycles(_write(tmp_path / "other", other))
    assert "'albef.fam'" in line and "'albef.user'" in line


def test_checker_skips_type_checking_imports_and_sees_import_module(tmp_path):
    repo = _write(tmp_path, {
        "albef/__init__.py": "",
        "albef/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from albef import b\n",
        "albef/b.py": "import albef.a\n",
    })
    assert import_cycles(repo) == []
    (tmp_path / "albef/a.py").write_text("import importlib\ndef f():\n    importlib.import_module('albef.b')\n")
    assert len(import_cycles(repo)) == 1
