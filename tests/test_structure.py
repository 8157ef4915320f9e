"""Rules of the code's shape that no other test would notice breaking.

* No import cycles among the modules of host/ and firmware/: a cycle means a definition sits in
  the wrong module (and forces lazy imports to break it at run time). Imports inside functions
  count; those under ``if TYPE_CHECKING:`` do not (they never run).
* Nothing outside host/ike/engine.py touches the IKE engine's or its context's private members:
  exchanges and rules use the public context (host/ike/context.py), drivers the engine's verbs.
* The runtime package (host/, what a router runs and the wheel carries) imports nothing from the
  test beds (testbed/: charon, namespaces, a throwaway PKI).
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("host", "firmware", "testbed")


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        # a board's native code is a module too, in a .viper file (compiled only with -march)
        for p in [*(ROOT / pkg).rglob("*.py"), *(ROOT / pkg).rglob("*.viper")]:
            out[_module_name(p)] = p
    return out


def _type_checking_only(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or \
        (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Every import statement that may run (TYPE_CHECKING blocks left out)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking_only(child):
                todo.extend(child.orelse)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child
            todo.append(child)


def _resolve(name: str, modules) -> str | None:
    """The in-tree module ``name`` loads (its longest prefix that is one), or None."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {m: set() for m in modules}
    for mod, path in modules.items():
        is_pkg = path.name == "__init__.py"
        for node in _imports(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    pkg = mod if is_pkg else mod.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        pkg = pkg.rpartition(".")[0]
                    base = f"{pkg}.{base}" if base else pkg
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    targets.append(sub if sub in modules else base)
            for t in targets:
                r = _resolve(t, modules)
                if r is not None and r != mod:
                    graph[mod].add(r)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    graph = import_graph()
    assert "host.ike.engine" in graph and "firmware.board" in graph     # the walk found the trees
    assert cycles(graph) == []


def test_the_runtime_package_does_not_import_the_test_beds():
    graph = import_graph()
    assert "testbed.charon" in graph
    bad = sorted(f"{mod} -> {dep}" for mod, deps in graph.items() if mod.split(".")[0] == "host"
                 for dep in deps if dep.split(".")[0] == "testbed")
    assert bad == []


def test_the_cycle_check_sees_a_cycle():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(g) == [["a", "b", "c"]]
    lazy = ast.parse("def f():\n    from host.ike import engine\n")
    assert [n.module for n in _imports(lazy)] == ["host.ike"]           # imports inside functions count
    hidden = ast.parse("if TYPE_CHECKING:\n    from host.ike import engine\n")
    assert list(_imports(hidden)) == []


# The names the code gives the engine and its context; a private member is `_x` after one of them.
_PRIVATE = re.compile(r"\b(?:engine|eng|ctx|context)\._[a-z]\w*")


def private_uses(text: str) -> list[str]:
    return _PRIVATE.findall(text)


def test_nothing_outside_the_engine_touches_its_private_members():
    bad = []
    for top in ("host", "firmware", "testbed", "bench", "tools", "tests", "hil_tests"):
        for p in (ROOT / top).rglob("*.py"):
            if p in (ROOT / "host" / "ike" / "engine.py", Path(__file__).resolve()):
                continue
            for n, line in enumerate(p.read_text().splitlines(), 1):
                for hit in private_uses(line):
                    bad.append(f"{p.relative_to(ROOT)}:{n}: {hit}")
    assert bad == []


def test_the_private_member_check_sees_them():
    assert private_uses("sa.engine._destroy(sa)  eng._sas.get(spi)  sa.ctx._x") == \
        ["engine._destroy", "eng._sas", "ctx._x"]
    assert private_uses("engine.stats  self.engine.receive_datagram(d)  sa.ctx.emit(e)") == []
