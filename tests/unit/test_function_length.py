"""Functions stay short: one over MAX_LINES says why at its top, in a `# long: ...` comment
between its signature and its first statement (after the docstring)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("server", "worker", "evaluation")
MAX_LINES = 60
REASON = re.compile(r"^\s*# long: \S")


def unexplained(path: Path) -> list[str]:
    """Functions of more than MAX_LINES lines with no reason, each as 'path:line name (n)'."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    out = []
    for node in ast.walk(ast.parse(text, str(path))):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        assert node.end_lineno is not None
        length = node.end_lineno - node.lineno + 1
        if length <= MAX_LINES:
            continue
        body = node.body
        docstring = isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
        first = body[1] if docstring and len(body) > 1 else body[0]
        top = lines[node.lineno : first.lineno - 1]  # signature end to the first statement
        if not any(REASON.match(line) for line in top):
            where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
            out.append(f"{where}:{node.lineno} {node.name} ({length})")
    return out


def test_every_long_function_says_why() -> None:
    offenders = [
        hit
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        for hit in unexplained(path.resolve())
    ]
    assert offenders == []


def test_the_check_sees_a_long_function(tmp_path: Path) -> None:
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_LINES))
    f = tmp_path / "sample.py"
    f.write_text(f'def bare():\n{body}\n\ndef told():\n    """Doc."""\n    # long: why\n{body}')
    assert unexplained(f) == [f"sample.py:1 bare ({MAX_LINES + 1})"]
