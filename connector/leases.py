"""Leases: Redis keys that last while the process holding them lives, and run out soon after it dies.

A holder sets a key to a token of its own with a short expiry (LEASE_S); a thread
in the holder's process renews every lease the process holds every RENEW_S. A
worker killed with -9, OOM-killed as a whole or on a lost machine renews nothing
more, so its leases run out within LEASE_S and another worker takes its work over,
instead of waiting for the broker's visibility timeout (tasks/app.py) or for a
fixed lock expiry sized for the slowest holder.

Renewal and release touch a key only while it still holds the holder's token (Lua),
so a holder whose lease ran out (a process frozen for longer than LEASE_S) never
extends or frees its successor's. Such a holder learns it from `Lease.held()`,
which the code checks before a side effect that must happen once.

Used for page claims (connector/runs.py) and routing's per-lead lock
(connector/routing/service.py).
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis

from connector.redisutil import UNLOCK
from connector.redisutil import text as _s

# A lease lives this long without renewal: how long a dead holder's work waits before another takes it.
LEASE_S = 15.0
# Renewed this often: several renewals fit in one LEASE_S, so a busy or briefly slow holder keeps its lease.
RENEW_S = 3.0

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
end
return 0
"""


@dataclass(eq=False)
class Lease:
    """A key this process holds with `token`; renewed by the process's renewer until released."""

    client: redis.Redis
    key: str
    token: str
    ttl_ms: int
    lost: bool = field(default=False)

    def held(self) -> bool:
        """Whether the key still holds our token (asks Redis). Once lost, a lease stays lost."""
        if self.lost:
            return False
        value = self.client.get(self.key)
        if value is None or _s(value) != self.token:
            self.lost = True
        return not self.lost


class _Renewer:
    """One per process: a daemon thread renewing the process's leases every RENEW_S."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.leases: set[Lease] = set()
        self.scripts: dict[int, Any] = {}
        self.thread: threading.Thread | None = None

    def add(self, lease: Lease) -> None:
        with self.lock:
            self.leases.add(lease)
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="leadscore-leases", daemon=True)
                self.thread.start()

    def remove(self, lease: Lease) -> None:
        with self.lock:
            self.leases.discard(lease)

    def _script(self, client: redis.Redis) -> Any:
        script = self.scripts.get(id(client))
        if script is None:
            script = self.scripts[id(client)] = client.register_script(_RENEW)
        return script

    def renew_all(self) -> None:
        with self.lock:
            leases = list(self.leases)
        for lease in leases:
            try:
                if not self._script(lease.client)(keys=[lease.key], args=[lease.token, lease.ttl_ms]):
                    lease.lost = True  # taken over, or ran out: stop renewing it
                    self.remove(lease)
            except redis.RedisError:
                pass  # Redis unreachable for a moment: the next round tries again

    def _run(self) -> None:
        while True:
            time.sleep(RENEW_S)
            self.renew_all()


_renewer: _Renewer | None = None
_renewer_lock = threading.Lock()


def _current() -> _Renewer:
    """This process's renewer (a forked pool child starts its own: threads do not survive fork)."""
    global _renewer
    with _renewer_lock:
        if _renewer is None or _renewer.pid != os.getpid():
            _renewer = _Renewer()
        return _renewer


def token() -> str:
    """A holder's token that says who holds it (host and process), for whoever looks at a lock in Redis."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def keep(client: redis.Redis, key: str, token: str, ttl_s: float = LEASE_S) -> Lease:
    """Renew `key` (already set to `token` by the caller) from now on, until `release`."""
    lease = Lease(client, key, token, int(ttl_s * 1000))
    _current().add(lease)
    return lease


def acquire(client: redis.Redis, key: str, token: str, ttl_s: float = LEASE_S) -> Lease | None:
    """Take `key` if nobody holds it; None when another holder's lease is still running."""
    if not client.set(key, token, nx=True, px=int(ttl_s * 1000)):
        return None
    return keep(client, key, token, ttl_s)


def release(lease: Lease, *, delete: bool = True) -> None:
    """Stop renewing; with `delete`, free the key too (only while it still holds our token)."""
    _current().remove(lease)
    if delete and not lease.lost:
        lease.client.register_script(UNLOCK)(keys=[lease.key], args=[lease.token])


__all__ = ["LEASE_S", "RENEW_S", "Lease", "acquire", "keep", "release", "token"]
