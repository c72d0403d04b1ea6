"""Small things every module that keeps state in Redis needs, in one place.

- `text(value)`: a Redis reply (bytes, or str on a client with decode_responses) as str.
- `UNLOCK`: the Lua script that deletes a lock only while it still holds the caller's token,
  so a holder whose lock expired and was taken over never frees the new holder's lock.
"""

from __future__ import annotations

from typing import Any

UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def text(value: Any) -> str:
    """A Redis reply as str, whether the client decodes responses or not."""
    return value.decode() if isinstance(value, bytes) else str(value)
