#!/usr/bin/env python3
"""The Python layer's import graph, read from the code: `make lint` runs this.

Reads every module under greenhub/ with ``ast`` (nothing is imported or run) and
collects its imports of other greenhub modules, of three kinds:

- module level: run when the module is imported (class bodies and ``try`` blocks
  included);
- in a function: run when the function is first called (a lazy import);
- under ``if TYPE_CHECKING:``: never run; not part of the graph.

Then it checks docs/design.md's layer table (the code block of its "Layers"
section), which lists the Python modules from the top layer down:

1. every module is in the table, and every ``.py`` row of the table exists;
2. module-level imports point down the table: a module imports only modules
   listed below it - so there is no circle - and
3. in-function imports are listed (``--verbose``); one that points up the table is
   allowed (it runs when every module is loaded), but one that would close a circle
   is reported here, so that it stays a deliberate choice.

Exit status 1 on an error of kind 1 or 2, with one line per problem.
``--graph`` prints the whole graph (module: imports) instead.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "greenhub"
DESIGN = ROOT / "docs" / "design.md"

CORE = "greenhub._core"  # the C extension, below every Python module (src/: the C rows)
MODULE = "module level"
LAZY = "in a function"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def table_name(name: str) -> str:
    """greenhub.monkey._api -> monkey/_api.py; greenhub -> __init__.py;
    greenhub.monkey -> monkey/__init__.py (as the layer table writes them)."""
    path = PACKAGE.parent / name.replace(".", "/")
    if path.is_dir():
        path = path / "__init__.py"
    else:
        path = path.with_suffix(".py")
    return str(path.relative_to(PACKAGE))


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and ast.unparse(node.test) in (
        "TYPE_CHECKING",
        "typing.TYPE_CHECKING",
    )


def _walk(node: ast.AST, kind: str):
    """(import node, kind) for every import under `node`."""
    for child in ast.iter_child_nodes(node):
        if _type_checking(child):
            for stmt in child.orelse:  # the else branch runs
                yield from _walk_stmt(stmt, kind)
            continue
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield from _walk(child, LAZY)
            continue
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, kind
        yield from _walk(child, kind)


def _walk_stmt(stmt: ast.AST, kind: str):
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        yield stmt, kind
    yield from _walk(stmt, kind)


def _targets(node: ast.Import | ast.ImportFrom, here: str, is_package: bool, known: set[str]):
    """The greenhub modules an import statement loads."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name == "greenhub" or alias.name.startswith("greenhub."):
                yield alias.name
        return
    if node.level:
        base = here.split(".")
        if not is_package:
            base.pop()
        for _ in range(node.level - 1):
            base.pop()
        module = ".".join(base + ([node.module] if node.module else []))
    else:
        module = node.module or ""
        if module != "greenhub" and not module.startswith("greenhub."):
            return
    found = False
    for alias in node.names:
        sub = f"{module}.{alias.name}"
        if sub in known:  # from package import submodule
            yield sub
        elif not found:
            found = True
            yield module


def read_graph():
    """{module: {imported module: kind}} (module level wins over in a function),
    and {module: path}."""
    paths = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    known = set(paths) | {CORE}
    graph: dict[str, dict[str, str]] = {}
    for name, path in paths.items():
        tree = ast.parse(path.read_text(), str(path))
        edges: dict[str, str] = {}
        for node, kind in _walk(tree, MODULE):
            for target in _targets(node, name, path.name == "__init__.py", known):
                if target in (name, CORE) or target not in known:
                    continue
                if edges.get(target) != MODULE:
                    edges[target] = kind
        graph[name] = edges
    return graph, paths


def layer_table() -> list[str]:
    """The ``.py`` rows of docs/design.md's layer table, top first."""
    text = DESIGN.read_text()
    match = re.search(r"^## Layers\n(.*?)^## ", text, re.S | re.M)
    if match is None:
        return []
    block = re.search(r"^```\n(.*?)^```", match.group(1), re.S | re.M)
    if block is None:
        return []
    rows = []
    for line in block.group(1).splitlines():
        token = line.split()[0] if line.split() else ""
        if token.endswith(".py"):
            rows.append(token)
    return rows


def _reaches(graph, start, goal, kinds):
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        if node == goal:
            return True
        if node in seen:
            continue
        seen.add(node)
        todo.extend(t for t, k in graph.get(node, {}).items() if k in kinds)
    return False


def _cycles(graph):
    """Strongly connected components of the module-level graph with more than one
    module (Tarjan's algorithm, iteratively)."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(t for t, k in graph[root].items() if k == MODULE))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(t for t, k in graph[child].items() if k == MODULE)))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        out.append(sorted(component))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--graph", action="store_true", help="print the graph and exit")
    parser.add_argument("--verbose", action="store_true", help="also list in-function imports")
    args = parser.parse_args(argv)
    graph, paths = read_graph()
    if args.graph:
        for name, edges in graph.items():
            listed = ", ".join(f"{t}{'' if k == MODULE else ' (lazy)'}" for t, k in edges.items())
            print(f"{name}: {listed}")
        return 0

    errors = []
    rows = layer_table()
    position = {row: i for i, row in enumerate(rows)}
    for name in graph:
        if table_name(name) not in position:
            errors.append(
                f"greenhub/{table_name(name)} is not in docs/design.md's layer table "
                f"(section 'Layers'): add a row, in its layer"
            )
    for row in rows:
        if not (PACKAGE / row).is_file():
            errors.append(
                f"docs/design.md's layer table lists greenhub/{row}, which does not exist"
            )
    for component in _cycles(graph):
        errors.append("a circle of module-level imports: " + " -> ".join(component))
    notes = []
    for name, edges in graph.items():
        here = position.get(table_name(name))
        for target, kind in edges.items():
            there = position.get(table_name(target))
            upward = here is not None and there is not None and there < here
            if kind == MODULE and upward:
                errors.append(
                    f"greenhub/{table_name(name)} imports greenhub/{table_name(target)}, "
                    f"which the layer table lists above it: imports point down"
                )
            elif kind == LAZY:
                circle = _reaches(graph, target, name, (MODULE, LAZY))
                note = f"{name} -> {target} (in a function"
                note += ", closes a circle)" if circle else ")"
                if circle:
                    notes.append(note)
                elif args.verbose:
                    print(note)
    for note in notes:
        print("lazy import that closes a circle:", note)
    for error in errors:
        print("error:", error)
    if not errors:
        print(f"check_imports: {len(graph)} modules, imports point down the layer table")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
