"""The limits that keep the code readable (issue #18): no function of the study runner takes more
than 8 parameters (a record passes the rest: StudyOptions, StudyPlan, WorkerOptions), and no module
of resattn/ is over 400 lines. Fast: the source is parsed, nothing is imported."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "resattn"
MAX_PARAMETERS = 8  # self and cls not counted; *args and **kwargs count one each
MAX_LINES = 400


def _modules() -> list[str]:
    return sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py"))


def parameters(function: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    """The names of ``function``'s parameters, ``self`` and ``cls`` left out."""
    a = function.args
    names = [p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg) if p is not None]
    return [n for n in names if n not in ("self", "cls")]


def test_no_function_of_the_study_runner_takes_more_than_8_parameters():
    wide = []
    for path in sorted((PACKAGE / "study").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and len(parameters(node)) > MAX_PARAMETERS:
                wide.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({len(parameters(node))})")
    assert wide == []


def test_the_parameter_count_counts_every_kind():
    (function,) = ast.parse("def f(self, a, /, b, *args, c, **kw): pass").body
    assert parameters(function) == ["a", "b", "c", "args", "kw"]


@pytest.mark.parametrize("module", _modules())
def test_no_module_is_over_400_lines(module):
    lines = len((PACKAGE / module).read_text().splitlines())
    assert lines <= MAX_LINES, f"resattn/{module}: {lines} lines"
