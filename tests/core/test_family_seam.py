"""Every model-family fact lives in the family seam (``awares_lmms/core/family.py``): no other module
of the product holds a chat-template token string or a patch/merge/pixel-budget constant of its own."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SEAM = "awares_lmms/core/family.py"
# Modules allowed to hold family constants, and why.
EXEMPT = {
    # Checkpoint builders: the per-family architecture and vocabulary of a synthetic checkpoint; what
    # the rest of the code reads about a family (patch, merge, budget, template) comes from the seam.
    "awares_lmms/data/random_models.py",
    # The synthetic benchmarks draw their images on Qwen2.5-VL's 28-px token grid by design (a dataset fact).
    "awares_lmms/data/synthetic.py", "awares_lmms/data/synthetic2.py",
}
TOKENS = ("<|im_start|>", "<|im_end|>", "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>",
          "<|vision_pad|>", "<|endoftext|>")
FAMILY_NUMBERS = {14, 16, 28, 32, 3136, 12845056, 65536, 16777216}
FAMILY_NAME = re.compile(r"patch|merge|factor|pixel", re.I)


def _docstring_nodes(tree) -> set[int]:
    """Bare string statements (docstrings and the like): prose, not constants."""
    return {id(node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)}


def _numbers(node) -> list[int]:
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and type(n.value) is int
            and n.value in FAMILY_NUMBERS]


def _violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    prose = _docstring_nodes(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose:
            tokens = [t for t in TOKENS if t in node.value]
            if tokens:
                found.append(f"line {node.lineno}: token string {tokens}")
        # A family number given to something named like a patch, merge, factor or pixel budget.
        named = []
        if isinstance(node, ast.keyword) and node.arg and FAMILY_NAME.search(node.arg):
            named.append((node.arg, node.value))
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [t.id if isinstance(t, ast.Name) else getattr(t, "attr", "") for t in targets]
            if node.value is not None and any(FAMILY_NAME.search(n) for n in names):
                named.append((names[0], node.value))
        elif isinstance(node, ast.arguments):
            positional = node.posonlyargs + node.args
            for arg, default in zip(positional[len(positional) - len(node.defaults):], node.defaults):
                if FAMILY_NAME.search(arg.arg):
                    named.append((arg.arg, default))
            for arg, default in zip(node.kwonlyargs, node.kw_defaults):
                if default is not None and FAMILY_NAME.search(arg.arg):
                    named.append((arg.arg, default))
        for name, value in named:
            if _numbers(value):
                found.append(f"line {getattr(value, 'lineno', '?')}: {name} = {_numbers(value)}")
    return found


def test_no_family_constant_outside_the_seam():
    files = sorted(p for folder in ("awares_lmms", "training", "tasks_config") for p in (ROOT / folder).rglob("*.py"))
    assert len(files) > 50
    report = {}
    for path in files:
        rel = path.relative_to(ROOT).as_posix()
        if rel == SEAM or rel in EXEMPT:
            continue
        if found := _violations(path):
            report[rel] = found
    assert not report, "family facts outside awares_lmms/core/family.py:\n" + "\n".join(
        f"  {f}: {v}" for f, items in report.items() for v in items)


def test_the_check_sees_what_it_looks_for(tmp_path):
    """The scanner itself: it flags each kind of family constant and passes prose."""
    sample = tmp_path / "m.py"
    sample.write_text('"""Docstring naming <|im_end|> and a 28-px grid."""\n'
                      'HEADER = "<|im_start|>assistant\\n"\n'
                      'MIN_PIXELS = 32 * 28 * 28\n'
                      'def f(x, patch_size=14):\n    return g(factor=28, batch=32)\n')
    found = _violations(sample)
    assert sorted(v.split(":")[0] for v in found) == ["line 2", "line 3", "line 4", "line 5"], found
