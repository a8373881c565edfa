"""The import graph matches the layering picture in docs/architecture.md.

The doc's ```layers block lists, bottom up, which modules sit on which layer; a module
may import modules of its own layer and of the layers below, never above. On top:
no import cycles at run time (imports under ``if TYPE_CHECKING:`` do not count; imports
inside functions do), and the sans-I/O cores import no I/O or clock modules.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "ipsecd"
DOC = ROOT / "docs" / "architecture.md"
# RFC-side cores: bytes and time in, bytes, timers and events out (DEVELOPERS brief, architecture)
SANS_IO = ("ipsecd.ike", "ipsecd.esp")
NO_IO_IMPORTS = {"asyncio", "socket", "select", "selectors", "time", "threading", "subprocess"}


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = p
    return out


def _imports(path: Path) -> set[str]:
    """Everything a module imports at run time (function-local imports included)."""
    found: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
                for n in node.orelse:
                    self.visit(n)
                return
            self.generic_visit(node)

        def visit_Import(self, node: ast.Import) -> None:
            found.update(a.name for a in node.names)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.module:
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)

    Visitor().visit(ast.parse(path.read_text()))
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: {i for i in _imports(p) if i in mods and i != m} for m, p in mods.items()}


def _layers() -> list[list[str]]:
    block = re.search(r"```layers\n(.*?)```", DOC.read_text(), re.S)
    assert block, "docs/architecture.md has no ```layers block"
    layers = []
    for line in block.group(1).splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            _num, _, names = line.partition(":")
            layers.append(names.split())
    return layers


def _layer_of(module: str, layers: list[list[str]]) -> int:
    """The layer of the longest listed prefix of ``module`` (``ike`` covers ``ipsecd.ike.*``)."""
    best, level = -1, -1
    for i, names in enumerate(layers):
        for n in names:
            if n == "ipsecd":  # the package itself (its __init__: the version), not everything below it
                if module == "ipsecd" and best < 0:
                    best, level = 0, i
                continue
            full = f"ipsecd.{n}"
            if (module == full or module.startswith(full + ".")) and len(full) > best:
                best, level = len(full), i
    return level


def test_every_module_has_a_layer() -> None:
    layers = _layers()
    missing = sorted(m for m in _modules() if _layer_of(m, layers) < 0)
    assert not missing, f"add these to the layers block in docs/architecture.md: {missing}"


def test_no_import_goes_up_a_layer() -> None:
    layers = _layers()
    wrong = []
    for mod, deps in _graph().items():
        for dep in deps:
            if _layer_of(dep, layers) > _layer_of(mod, layers):
                wrong.append(f"{mod} (layer {_layer_of(mod, layers)}) imports {dep} "
                             f"(layer {_layer_of(dep, layers)})")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_runtime_import_cycles() -> None:
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_sans_io_cores_touch_no_sockets_or_clock() -> None:
    bad = []
    for mod, path in _modules().items():
        if mod.startswith(SANS_IO):
            used = {i.split(".")[0] for i in _imports(path)} & NO_IO_IMPORTS
            if used:
                bad.append(f"{mod}: {sorted(used)}")
    assert not bad, bad
