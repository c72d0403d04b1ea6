"""The worker process's Runtime: built once from the environment, or installed by the demo."""

from __future__ import annotations

import threading

from connector.bootstrap import Runtime, build_runtime
from connector.config import load_settings

_runtime: Runtime | None = None
_lock = threading.Lock()


def get_runtime() -> Runtime:
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = build_runtime(load_settings())
        return _runtime


def set_runtime(runtime: Runtime | None) -> None:
    global _runtime
    with _lock:
        _runtime = runtime


def close_runtime() -> None:
    global _runtime
    with _lock:
        if _runtime is not None:
            _runtime.close()
            _runtime = None
