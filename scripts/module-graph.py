#!/usr/bin/env python3
"""The imports among the modules of plugins/cni/src (or the folder given): every `crate::<module>`
path of a module's files (`use` lines and inline paths, tests included; comments left out),
printed as `module -> modules`. Exits 1, naming them, when modules import each other in a
circle; the layers must point one way (README, Layout)."""
import os
import re
import sys

root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "plugins/cni/src")
files = {}
for d, _, names in os.walk(root):
    for f in names:
        if f.endswith(".rs"):
            parts = os.path.relpath(os.path.join(d, f), root)[:-3].split(os.sep)
            files.setdefault(parts[0], []).append(os.path.join(d, f))
edges = {m: set() for m in files}
for m, paths in files.items():
    for p in paths:
        src = re.sub(r"//[^\n]*", "", open(p, encoding="utf-8").read())
        names = re.findall(r"crate::([a-z_][a-z0-9_]*)", src)
        for group in re.findall(r"crate::\{([^}]*)\}", src):
            names += re.findall(r"(?:^|,)\s*([a-z_][a-z0-9_]*)", group)
        edges[m] |= {n for n in names if n in files and n != m}
for m in sorted(edges):
    print(f"{m:10} -> {', '.join(sorted(edges[m])) or '-'}")

# Tarjan's strongly connected components: one of more than one module is a circle.
index, low, stack, on_stack, circles = {}, {}, [], set(), []
def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(edges[v]):
        if w not in index:
            visit(w)
            low[v] = min(low[v], low[w])
        elif w in on_stack:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        scc = []
        while True:
            w = stack.pop()
            on_stack.discard(w)
            scc.append(w)
            if w == v:
                break
        if len(scc) > 1:
            circles.append(sorted(scc))
for v in sorted(edges):
    if v not in index:
        visit(v)
for c in circles:
    print("circle among:", ", ".join(c))
if circles:
    sys.exit(1)
print(f"no circle among {len(edges)} modules")
