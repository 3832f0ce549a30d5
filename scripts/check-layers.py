#!/usr/bin/env python3
"""Checks the module graph of the runtime crates: no import cycles between the modules of a
crate (at every folder level), and no plugin concept in the Connect crate.

A module's dependencies are the paths it names: `crate::a::b`, `super::x`, `self::y`, and the
crate-root re-exports (`crate::Client` counts as a use of the module `Client` is exported from,
as read from `pub use` lines of lib.rs). Tests (`#[cfg(test)] mod tests`) are left out, and so is
generated code (`gen/`). Run by scripts/test.sh; prints the graph with --graph.
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CRATES = {
    "connect-plugin-rpc": ROOT / "runtime/rpc/src",
    "connect-plugin": ROOT / "runtime/plugin/src",
}
# Words that name a plugin concept; the Connect crate's code must not use them as identifiers.
PLUGIN_WORDS = re.compile(
    r"\b(connect_plugin\b(?!_rpc)|Plugin[A-Z]\w*|Registry|Handshake|Broker|RuntimeIdentity|"
    r"magic_cookie|MAGIC_COOKIE)"
)


def module_of(src: Path, file: Path) -> tuple:
    """The module path of a file, e.g. host/registry.rs -> ("host", "registry")."""
    rel = file.relative_to(src).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] in ("mod", "lib"):
        parts.pop()
    return tuple(parts)


def strip(text: str) -> str:
    """Source without comments, string literals and the unit-test module."""
    text = re.sub(r"(?m)^\s*#\[cfg\(test\)\]\s*\n\s*mod tests\s*\{.*", "", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    return text


def expand_uses(text: str):
    """Yields every path named by `use` trees and inline paths, braces expanded."""
    for m in re.finditer(r"\buse\s+([^;]+);", text):
        yield from expand_tree(m.group(1).replace("\n", " "))
    for m in re.finditer(r"\b((?:crate|super|self)(?:::[A-Za-z_]\w*)+)", text):
        yield m.group(1)


def expand_tree(tree: str):
    tree = tree.strip()
    if "{" not in tree:
        yield tree.split(" as ")[0].strip()
        return
    head, _, rest = tree.partition("{")
    inner = rest.rsplit("}", 1)[0]
    depth, item = 0, ""
    for ch in inner + ",":
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            if item.strip():
                for sub in expand_tree(item):
                    yield head + sub if sub != "self" else head.rstrip(":")
            item = ""
        else:
            item += ch


def root_exports(lib: Path) -> dict:
    """Names re-exported at the crate root -> the top-level module they come from."""
    out = {}
    for path in expand_uses(strip(lib.read_text())):
        parts = path.replace(" ", "").split("::")
        if len(parts) >= 2 and parts[0] not in ("crate", "std", "self", "super"):
            out[parts[-1]] = parts[0]
    return out


def resolve(path: str, here: tuple, modules: set, exports: dict):
    """The module a path points into, or None outside the crate."""
    parts = path.replace(" ", "").split("::")
    if parts[0] == "crate":
        base, rest = (), parts[1:]
    elif parts[0] == "super":
        base, rest = here[:-1], parts[1:]
        while rest and rest[0] == "super":
            base, rest = base[:-1], rest[1:]
    elif parts[0] == "self":
        base, rest = here, parts[1:]
    else:
        return None
    if not base and rest and rest[0] in exports and (rest[0],) not in modules:
        return (exports[rest[0]],)
    target = base
    for part in rest:
        if target + (part,) in modules:
            target = target + (part,)
        else:
            break
    return target


def cycles(graph: dict):
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def check(name: str, src: Path, show: bool) -> list:
    files = [f for f in src.rglob("*.rs") if "gen" not in f.relative_to(src).parts]
    modules = {module_of(src, f) for f in files}
    exports = root_exports(src / "lib.rs")
    edges = {}
    problems = []
    for f in files:
        here = module_of(src, f)
        text = strip(f.read_text())
        for path in expand_uses(text):
            target = resolve(path, here, modules, exports)
            if target is None or target == here:
                continue
            edges.setdefault(here, set()).add(target)
        if name == "connect-plugin-rpc" and here != ("__private",):
            for m in PLUGIN_WORDS.finditer(text):
                problems.append(f"{name}: {f.relative_to(ROOT)} names {m.group(0)!r}, a plugin concept")
    # A cycle at any folder level: compare modules by their ancestor under a common parent.
    levels = {}
    for a, targets in edges.items():
        for b in targets:
            common = 0
            while common < min(len(a), len(b)) and a[common] == b[common]:
                common += 1
            if common == len(a) or common == len(b):
                continue  # a parent and its own child
            parent = a[:common]
            levels.setdefault(parent, {}).setdefault(a[common], set()).add(b[common])
    for parent, graph in sorted(levels.items()):
        for comp in cycles(graph):
            where = "::".join(parent) or "the crate root"
            problems.append(f"{name}: import cycle among modules {comp} under {where}")
    if show:
        print(f"# {name}")
        for parent, graph in sorted(levels.items()):
            for a in sorted(graph):
                print(f"  {'::'.join(parent + (a,))} -> {sorted(graph[a])}")
    return problems


def main() -> int:
    show = "--graph" in sys.argv
    problems = []
    for name, src in CRATES.items():
        problems += check(name, src, show)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    print(f"module layers ok: {len(CRATES)} crates, no import cycles, no plugin concept in connect-plugin-rpc")
    return 0


if __name__ == "__main__":
    sys.exit(main())
