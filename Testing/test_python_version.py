"""The module, the library, the tests and the benchmarks run on Python 3.9 (Slicer 5.6-5.8 embed 3.9).

Two checks, both over every .py file of LiverLocalization/, Testing/ and benchmarks/:
- vermin (a static checker of the minimum Python version: syntax, standard-library calls, keyword arguments
  such as zip(strict=), members such as sys.stdlib_module_names) with target 3.9. Annotations are not counted in a
  file with `from __future__ import annotations` (they stay strings there); in a file without it they are
  evaluated when the function or class is defined, so vermin evaluates them too.
- `X | Y` unions of types where Python evaluates them: outside annotations (isinstance(x, int | float), an alias
  `A = B | None`), in the annotations of a file without the __future__ import, and in a class that Slicer's
  @parameterNodeWrapper evaluates. A TypeError on 3.9. vermin's own union check (`--feature union-types`) cannot
  tell annotations from runtime code, nor `os.W_OK | os.X_OK` from a type, so this one is an AST walk.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("LiverLocalization", "Testing", "benchmarks")
TARGET = "3.9"
# classes whose annotations are evaluated at runtime even under `from __future__ import annotations`
EVALUATING_DECORATORS = {"parameterNodeWrapper"}
BUILTIN_TYPES = {"bool", "bytes", "complex", "dict", "float", "frozenset", "int", "list", "object", "set", "str",
                 "tuple", "type"}


def _python_files() -> list[Path]:
    return sorted(p for folder in FOLDERS for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)


def _has_future_annotations(tree: ast.Module) -> bool:
    return any(isinstance(n, ast.ImportFrom) and n.module == "__future__" and any(a.name == "annotations" for a in n.names)
               for n in tree.body)


def _vermin_command() -> list[str] | None:
    exe = shutil.which("vermin", path=str(Path(sys.executable).parent)) or shutil.which("vermin")
    return [exe] if exe else None


def _vermin_violations(files: list[Path], eval_annotations: bool) -> list[str]:
    cmd = _vermin_command() + [f"-t={TARGET}-", "--violations", "--no-tips", "--no-config-file",
                               "--no-make-paths-absolute", "--format", "parsable", "--processes=1"]
    if eval_annotations:
        cmd += ["--eval-annotations"]
    cmd += [str(f.relative_to(ROOT)) for f in files]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode in (0, 1), f"vermin failed:\n{run.stdout}\n{run.stderr}"
    # parsable lines: file:line:col:py2:py3:feature; the per-file and the final summary lines have no line number
    return [line for line in run.stdout.splitlines() if line.split(":")[1:2] not in ([""], [])]


def _type_like(node: ast.expr) -> bool:
    """An operand of `|` that is most likely a type: None, a builtin type, a CapWords class, a generic alias."""
    if isinstance(node, ast.Constant):
        return node.value is None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _type_like(node.left) and _type_like(node.right)
    if isinstance(node, ast.Subscript):
        return _type_like(node.value)
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
    if name is None:
        return False
    return name in BUILTIN_TYPES or (name[:1].isupper() and not name.isupper())  # not a CONSTANT flag


def _runtime_unions(tree: ast.Module, future: bool) -> list[int]:
    """Lines of `X | Y` type unions that Python evaluates (annotations only where they are evaluated)."""
    skipped: set[int] = set()  # ids of annotation nodes that stay unevaluated strings
    if future:
        evaluated = {id(stmt.annotation) for node in ast.walk(tree) if isinstance(node, ast.ClassDef) and any(
            (d.id if isinstance(d, ast.Name) else getattr(d, "attr", None)) in EVALUATING_DECORATORS
            for d in node.decorator_list) for stmt in node.body if isinstance(stmt, ast.AnnAssign)}
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args
                for a in args.posonlyargs + args.args + args.kwonlyargs + [args.vararg, args.kwarg]:
                    if a is not None and a.annotation is not None:
                        skipped.add(id(a.annotation))
                if node.returns is not None:
                    skipped.add(id(node.returns))
            elif isinstance(node, ast.AnnAssign) and id(node.annotation) not in evaluated:
                skipped.add(id(node.annotation))
    lines = []

    def visit(node: ast.AST) -> None:
        if id(node) in skipped:
            return
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr) and _type_like(node):
            lines.append(node.lineno)
            return
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return sorted(lines)


def test_code_runs_on_python_39():
    if _vermin_command() is None:
        pytest.skip("vermin is not installed (pip install -e '.[test]' installs it): the Python 3.9 check needs it")
    files, future, evaluated = _python_files(), [], []
    unions = []
    for f in files:
        tree = ast.parse(f.read_text(encoding="utf-8"), filename=str(f))
        has_future = _has_future_annotations(tree)
        (future if has_future else evaluated).append(f)
        unions += [f"{f.relative_to(ROOT)}:{n}: `X | Y` type union evaluated at runtime (3.10)"
                   for n in _runtime_unions(tree, has_future)]
    assert len(files) > 40 and future and evaluated
    violations = (_vermin_violations(future, eval_annotations=False) if future else []) + \
        (_vermin_violations(evaluated, eval_annotations=True) if evaluated else []) + unions
    assert not violations, (f"{len(violations)} uses of Python newer than {TARGET} (Slicer 5.6-5.8 embed 3.9):\n"
                            + "\n".join(violations) + "\n(vermin names the first use of each feature in a file)")


def test_union_check_tells_annotations_from_runtime():
    code = ("from __future__ import annotations\n"
            "def f(a: int | None) -> str | None:\n"
            "    b: dict | None = None\n"
            "    return isinstance(a, int | float)\n"
            "Alias = list[int] | None\n"
            "flags = os.W_OK | os.X_OK\n"
            "mask = a | b\n"
            "@parameterNodeWrapper\n"
            "class P:\n"
            "    node: Node | None\n")
    assert _runtime_unions(ast.parse(code), future=True) == [4, 5, 10]
    assert _runtime_unions(ast.parse(code), future=False) == [2, 2, 3, 4, 5, 10]


def test_minimum_is_stated_where_users_and_builds_read_it():
    cmake = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    assert 'LiverLocalization_MINIMUM_SLICER_VERSION "5.6"' in cmake
    assert "Slicer_VERSION VERSION_LESS LiverLocalization_MINIMUM_SLICER_VERSION" in cmake
    assert "Needs Slicer 5.6 or later" in cmake  # EXTENSION_DESCRIPTION, shown by the Extensions Manager
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    install = readme[readme.index("## Install in 3D Slicer"):]
    assert "Slicer 5.6 or later" in install[:install.index("\n- ")]
    assert re.search(r'^requires-python = ">=3\.9"', (ROOT / "pyproject.toml").read_text(encoding="utf-8"), re.M)
