"""Import rules the import-linter contracts do not state: no module reaches for another's
`_private` names, and no two modules import each other, even through function-level
imports (which hide a circle from the reader, not from the import graph)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("server", "worker", "evaluation")


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_imports(path: Path) -> list[str]:
    """`from a import _b` and `import a._b` in one file: each as 'line: what'."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            names = [a.name for a in node.names]
            for what in [*parts, *names]:
                if _private(what):
                    found.append(f"{node.lineno}: from {node.module} import {', '.join(names)}")
                    break
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if any(_private(p) for p in alias.name.split(".")):
                    found.append(f"{node.lineno}: import {alias.name}")
    return found


def test_no_module_imports_a_private_name_of_another() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{hit}"
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        for hit in private_imports(path)
    ]
    assert offenders == []


def test_the_check_sees_a_private_import(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text("from worker.pipeline import _docker, run_job\nimport a._b\nfrom a import b\n")
    assert private_imports(f) == [
        "1: from worker.pipeline import _docker, run_job",
        "2: import a._b",
    ]


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.find_modules_directly_imported_by(w)))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def test_no_two_modules_import_each_other() -> None:
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    assert _cycles(graph) == []


def test_the_cycle_check_sees_a_circle() -> None:
    graph = grimp.ImportGraph()
    for a, b in [("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.c", "p.d")]:
        graph.add_import(importer=a, imported=b)
    assert _cycles(graph) == [["p.a", "p.b", "p.c"]]


# The Docker backend is one package: worker/executor/docker.py (runs) and docker_engine.py
# (images, builds). Every other worker module reaches the engine through the Backend
# interface (worker/executor/engine.py), so a second backend is one more module.
DOCKER_BACKEND = re.compile(r"^worker/executor/docker[a-z_]*\.py$")


def docker_imports(path: Path) -> list[str]:
    """Imports of the Docker SDK in one file, function-level ones included: 'line: what'."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] == "docker":
                found.append(f"{node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.Import):
            found += [
                f"{node.lineno}: import {a.name}"
                for a in node.names
                if a.name.split(".")[0] == "docker"
            ]
    return found


def test_only_the_docker_backend_imports_the_docker_sdk() -> None:
    offenders = [
        f"{rel}:{hit}"
        for path in sorted((ROOT / "worker").rglob("*.py"))
        if not DOCKER_BACKEND.match(rel := path.relative_to(ROOT).as_posix())
        for hit in docker_imports(path)
    ]
    assert offenders == []


def test_the_docker_check_sees_an_import(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text("import docker.errors\ndef f():\n    from docker.types import Mount\n")
    assert docker_imports(f) == ["1: import docker.errors", "3: from docker.types import ..."]
    assert DOCKER_BACKEND.match("worker/executor/docker_engine.py")
    assert not DOCKER_BACKEND.match("worker/intake.py")
