"""A private redis-server on a free port, for the demo and the benchmarks: nothing shared is touched, nothing kept."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import redis

from connector.errors import UserError


@contextlib.contextmanager
def private_redis_server(exe: str) -> Iterator[str]:
    """Start `exe` on a free loopback port with no persistence; yield its URL; stop it on exit."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="leadscore-demo-") as tmp:
        proc = subprocess.Popen(  # noqa: S603 - our own argv, no shell
            [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"redis://127.0.0.1:{port}/0"
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    redis.Redis.from_url(url).ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise UserError("could not start a private redis-server.") from None
                    time.sleep(0.05)
            yield url
        finally:
            proc.terminate()
            proc.wait(10)
