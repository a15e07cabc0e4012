#!/usr/bin/python3
"""call-circles.py [--allow 'A->B' ...] DIR

Holds the layering of DIR's C files (agent/): no circle of calls and no circle of includes.

- Calls: file a.c "uses" b.c when it calls a non-static function defined in b.c (names are
  matched after strings and comments are stripped). Every circle, i.e. strongly connected
  component of more than one file, is printed as "call circle: a b c".
- Includes: every #include "x.h" of a DIR file that names a file of DIR is an edge; every
  circle among DIR's files is printed as "include circle: x.h y.h".

--allow 'A->B' (quoted: > is the shell's) leaves the call edge A -> B (file names without .c) out, for an edge that another
change is known to remove; each one still present is printed as "allowed: A -> B", each one
gone as "allowed but absent: A -> B (drop it)". Exit 1 if there is any circle, else 0.
"""
import os
import re
import sys


def strip(s):
    return re.sub(r'"(\\.|[^"\\])*"|/\*.*?\*/|//[^\n]*', "", s, flags=re.S)


def circles(nodes, edges):
    """Tarjan's strongly connected components of more than one node, each sorted."""
    idx, low, st, on, out, n = {}, {}, [], set(), [], [0]

    def sc(v):
        idx[v] = low[v] = n[0]
        n[0] += 1
        st.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in idx:
                sc(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], idx[w])
        if low[v] == idx[v]:
            comp = []
            while True:
                w = st.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(nodes):
        if v not in idx:
            sc(v)
    return out


def call_edges(d):
    srcs = {f[:-2]: strip(open(os.path.join(d, f), errors="replace").read())
            for f in os.listdir(d) if f.endswith(".c")}
    defs = {}
    for m, s in srcs.items():
        for line in s.splitlines():
            if re.match(r"^(static|typedef|struct\s+\w+\s*\{|#)", line) or not re.match(r"^[A-Za-z_]", line):
                continue
            mm = re.match(r"^[A-Za-z_][\w\s\*]*?\b(\w+)\s*\([^;]*$", line)
            if mm:
                defs.setdefault(mm.group(1), m)
    edges = {m: set() for m in srcs}
    for m, s in srcs.items():
        for name in set(re.findall(r"\b(\w+)\s*\(", s)):
            t = defs.get(name)
            if t and t != m:
                edges[m].add(t)
    return set(srcs), edges


def include_edges(d):
    files = {f for f in os.listdir(d) if f.endswith((".c", ".h"))}
    edges = {f: set() for f in files}
    for f in files:
        for line in open(os.path.join(d, f), errors="replace"):
            mm = re.match(r'\s*#\s*include\s+"([^"/]+)"', line)
            if mm and mm.group(1) in files and mm.group(1) != f:
                edges[f].add(mm.group(1))
    return files, edges


def main(argv):
    allow = set()
    args = []
    i = 0
    while i < len(argv):
        if argv[i] == "--allow" and i + 1 < len(argv):
            a, _, b = argv[i + 1].partition("->")
            allow.add((a.strip(), b.strip()))
            i += 2
        else:
            args.append(argv[i])
            i += 1
    if len(args) != 1 or not os.path.isdir(args[0]):
        sys.stderr.write(__doc__)
        return 2
    d = args[0]
    nodes, edges = call_edges(d)
    for a, b in sorted(allow):
        if b in edges.get(a, set()):
            print("allowed: %s -> %s" % (a, b))
            edges[a].discard(b)
        else:
            print("allowed but absent: %s -> %s (drop it)" % (a, b))
    bad = 0
    for c in circles(nodes, edges):
        print("call circle:", " ".join(c))
        bad = 1
    inodes, iedges = include_edges(d)
    for c in circles(inodes, iedges):
        print("include circle:", " ".join(c))
        bad = 1
    if not bad:
        print("call-circles: no circle among the %d C files and %d files with includes of %s"
              % (len(nodes), len(inodes), d))
    return bad


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
