"""The weekly backtest's figures in Redis, for `leadscore status` and for trends.

Only numbers and ids: the time, the model version, AUC, outcome counts and per band the
leads, won and conversion. Never a lead's data. The newest is kept per CRM, with the last
`KEEP` weeks beside it.
"""

from __future__ import annotations

import json
from typing import Any

import redis

from connector.learn.evaluate import Backtest
from connector.redisutil import text as _s

KEEP = 52


def figures_of(bt: Backtest, at: float) -> dict[str, Any]:
    return {
        "at": at,
        "model": bt.model,
        "auc": round(bt.auc, 4),
        "leads": bt.leads,
        "won": bt.won,
        "lost": bt.lost,
        "open": bt.open,
        "undated": bt.undated,
        "base_rate": round(bt.base_rate, 4),
        "bands": {b: {"leads": v["leads"], "won": v["won"],
                      "rate": None if v["rate"] is None else round(v["rate"], 4)} for b, v in bt.bands.items()},
        "top_decile_lift": None if not bt.deciles or bt.deciles[0]["lift"] is None else round(bt.deciles[0]["lift"], 3),
    }


class BacktestHistory:
    def __init__(self, client: redis.Redis, namespace: str = "leadscore") -> None:
        self.r = client
        self.ns = namespace

    def _key(self, crm: str) -> str:
        return f"{self.ns}:backtest:{crm}"

    def save(self, crm: str, figures: dict[str, Any]) -> None:
        text = json.dumps(figures, sort_keys=True)
        pipe = self.r.pipeline(transaction=True)
        pipe.set(f"{self._key(crm)}:latest", text)
        pipe.lpush(f"{self._key(crm)}:history", text)
        pipe.ltrim(f"{self._key(crm)}:history", 0, KEEP - 1)
        pipe.execute()

    def failed(self, crm: str, at: float, why: str) -> None:
        """The backtest could not run (e.g. outcomes not configured): the sentence, for status."""
        self.r.set(f"{self._key(crm)}:latest", json.dumps({"at": at, "error": why}))

    def latest(self, crm: str) -> dict[str, Any] | None:
        raw = self.r.get(f"{self._key(crm)}:latest")
        return None if raw is None else dict(json.loads(_s(raw)))

    def history(self, crm: str) -> list[dict[str, Any]]:
        return [json.loads(_s(x)) for x in self.r.lrange(f"{self._key(crm)}:history", 0, -1)]  # type: ignore[union-attr]
