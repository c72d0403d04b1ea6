"""Optional: the scoring engine compiled with mypyc, for about 1.6 times its pure-Python speed (bench/engine.py).

    pip install .                          # pure Python (the default, everywhere)
    LEADSCORE_COMPILE=1 pip install .      # the engine's modules compiled to C extensions

With LEADSCORE_COMPILE=1 the build asks for mypy (which carries mypyc) as a build requirement and
compiles connector/engine's pure modules; the .py files ship alongside, so a machine where the
extensions cannot load still runs. When mypyc or a C compiler is missing, the build says so on
stderr and installs the pure-Python engine. Everything else (metadata, dependencies) is in
pyproject.toml.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from setuptools import setup

ENGINE = [
    "connector/engine/compiled.py",
    "connector/engine/rules.py",
    "connector/engine/values.py",
    "connector/engine/decay.py",
    "connector/engine/result.py",
]
# Type errors in the modules the engine imports (not compiled) must not stop the build.
MYPY_OPTIONS = ["--follow-imports=silent"]
COMPILE = os.environ.get("LEADSCORE_COMPILE", "") == "1"
# Only the commands that build code compile it (not the metadata and requirement passes).
BUILDING = any(c in sys.argv for c in ("bdist_wheel", "build_ext", "build", "install", "develop", "editable_wheel"))


def ext_modules() -> list[Any]:
    if not (COMPILE and BUILDING):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        # the first pass of a build (collecting build requirements) runs before mypy is there
        print("leadscore: mypyc is not available; the engine stays pure Python", file=sys.stderr)  # noqa: T201
        return []
    try:
        return list(mypycify([*MYPY_OPTIONS, *ENGINE], opt_level="3"))
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - any failure to compile (mypyc exits on a type error) falls back to pure Python
        print(f"leadscore: compiling the engine failed ({exc}); it stays pure Python", file=sys.stderr)  # noqa: T201
        return []


setup(
    ext_modules=ext_modules(),
    # pydantic: the engine's types reach into the mapping schemas, which mypy reads without compiling
    setup_requires=["mypy>=1.11", "pydantic>=2.7,<3"] if COMPILE else [],
)
