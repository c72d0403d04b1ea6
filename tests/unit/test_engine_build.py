"""The optional compiled engine (LEADSCORE_COMPILE=1 pip install .) stays compilable.

mypyc compiles only modules that type-check strictly; a type error in one of them does not fail
the install, it quietly installs the pure-Python engine instead. This runs the same check mypyc's
build runs (setup.py's list of modules and options, the project's mypy settings).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _build_arguments() -> list[str]:
    """What setup.py hands mypycify: its MYPY_OPTIONS, then its ENGINE modules."""
    lists = {
        target.id: ast.literal_eval(node.value)
        for node in ast.parse((ROOT / "setup.py").read_text()).body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name) and target.id in ("MYPY_OPTIONS", "ENGINE")
    }
    return [*lists["MYPY_OPTIONS"], *lists["ENGINE"]]


@pytest.mark.slow
def test_the_compiled_engines_modules_type_check_as_mypyc_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    api = pytest.importorskip("mypy.api")
    monkeypatch.chdir(ROOT)  # the project's [tool.mypy] settings, as in a build
    out, err, status = api.run(_build_arguments())
    assert status == 0, out + err
