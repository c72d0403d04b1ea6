"""The shared pool state in Redis: smooth-WRR current weights and daily capacity counters.

One Lua script does a whole pick: it drops the reps whose capacity counter for
their local day is used up, runs one smooth weighted round robin step over the
rest, writes the new current weights, counts one unit of the winner's
capacity, numbers the turn and remembers how to undo it. Redis runs scripts
one at a time, so any number of workers picking at the same moment get
consecutive turns: none is taken twice, none is skipped, and a counter never
goes past its capacity.

A turn can be given back (`release`): the winner's weight gets the total back
and every participant loses its weight again, and the capacity unit is
returned. These are additions, so the undo is exact even after other picks
happened in between; the turn's key makes it happen at most once.

The selection is the same as `MemoryPool` in `connector.routing.policy` (its
Python twin); tests check that both agree on random sequences.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import redis

from connector.redisutil import text as _text
from connector.routing.policy import Pick, Slot, Turn, ordered

PREFIX = "leadscore:routing:"
CAP_TTL_S = 3 * 24 * 3600  # a capacity day ends within 2 days of starting in any time zone
TURN_TTL_S = 7 * 24 * 3600  # a turn can be given back for a week

# KEYS: pool hash, seq counter, turn key, then one capacity counter per slot.
# ARGV: n, cap_ttl, turn_ttl, pool name, then per slot: rep id, weight, capacity (-1: none).
_PICK = """
local n = tonumber(ARGV[1])
local full = {}
local ids, cur, ws, caps = {}, {}, {}, {}
local total = 0
local best = 0
for i = 1, n do
  local base = 4 + (i - 1) * 3
  local id = ARGV[base + 1]
  local w = tonumber(ARGV[base + 2])
  local cap = tonumber(ARGV[base + 3])
  local used = tonumber(redis.call('GET', KEYS[3 + i]) or '0')
  if cap >= 0 and used >= cap then
    full[#full + 1] = id
  else
    local k = #ids + 1
    ids[k] = id
    ws[k] = w
    caps[k] = 3 + i
    cur[k] = tonumber(redis.call('HGET', KEYS[1], id) or '0') + w
    total = total + w
    if best == 0 or cur[k] > cur[best] then best = k end
  end
end
if best == 0 then
  return cjson.encode({chosen = '', full = full})
end
cur[best] = cur[best] - total
local parts = {}
for k = 1, #ids do
  redis.call('HSET', KEYS[1], ids[k], cur[k])
  parts[#parts + 1] = ids[k]
  parts[#parts + 1] = ws[k]
end
local capkey = KEYS[caps[best]]
redis.call('INCR', capkey)
redis.call('EXPIRE', capkey, tonumber(ARGV[2]))
local seq = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[3], cjson.encode({chosen = ids[best], total = total, parts = parts}),
  'EX', tonumber(ARGV[3]))
return cjson.encode({chosen = ids[best], total = total, parts = parts, full = full, seq = seq,
  cap = caps[best] - 3})
"""

# KEYS: turn key, pool hash, capacity counter of the winner.
_RELEASE = """
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
redis.call('DEL', KEYS[1])
local t = cjson.decode(v)
redis.call('HINCRBY', KEYS[2], t.chosen, t.total)
for i = 1, #t.parts, 2 do
  redis.call('HINCRBY', KEYS[2], t.parts[i], -tonumber(t.parts[i + 1]))
end
local used = tonumber(redis.call('GET', KEYS[3]) or '0')
if used > 0 then redis.call('DECR', KEYS[3]) end
return 1
"""


def _list(value: Any) -> list[Any]:
    # cjson encodes an empty Lua table as {}.
    return value if isinstance(value, list) else []


class RedisPool:
    """The `Pool` protocol on Redis; safe to share between threads, processes and machines."""

    def __init__(self, client: redis.Redis, prefix: str = PREFIX) -> None:
        self.client = client
        self.prefix = prefix
        self._pick = client.register_script(_PICK)
        self._release = client.register_script(_RELEASE)

    def pool_key(self, pool: str) -> str:
        return f"{self.prefix}pool:{pool}"

    def cap_key(self, cap_key: str) -> str:
        return f"{self.prefix}cap:{cap_key}"

    def pick(self, pool: str, slots: Sequence[Slot], turn_id: str) -> Pick:
        slots = ordered(slots)
        keys = [self.pool_key(pool), f"{self.prefix}seq:{pool}", f"{self.prefix}turn:{turn_id}"]
        keys += [self.cap_key(s.cap_key) for s in slots]
        args: list[str | int] = [len(slots), CAP_TTL_S, TURN_TTL_S, pool]
        for s in slots:
            args += [s.rep_id, s.weight, -1 if s.capacity is None else s.capacity]
        raw = self._pick(keys=keys, args=args)
        out = json.loads(raw)
        full = tuple(str(r) for r in _list(out.get("full")))
        if not out["chosen"]:
            return Pick(None, full)
        flat = _list(out["parts"])
        parts = tuple((str(flat[i]), int(flat[i + 1])) for i in range(0, len(flat), 2))
        turn = Turn(
            pool=pool,
            turn_id=turn_id,
            chosen=str(out["chosen"]),
            total=int(out["total"]),
            participants=parts,
            cap_key=slots[int(out["cap"]) - 1].cap_key,
            seq=int(out["seq"]),
        )
        return Pick(turn, full)

    def release(self, turn: Turn) -> bool:
        keys = [f"{self.prefix}turn:{turn.turn_id}", self.pool_key(turn.pool), self.cap_key(turn.cap_key)]
        return bool(self._release(keys=keys, args=[]))

    # ------------------------------------------------------------------ reading, for status and tests

    def used(self, cap_keys: Sequence[str]) -> list[int]:
        if not cap_keys:
            return []
        values = self.client.mget([self.cap_key(k) for k in cap_keys])
        return [int(v) if v is not None else 0 for v in values]

    def current(self, pool: str) -> dict[str, int]:
        raw = self.client.hgetall(self.pool_key(pool))
        return {_text(k): int(v) for k, v in raw.items()}
