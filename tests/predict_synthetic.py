"""Synthetic leads with a known truth, for the learned probability's tests.

The truth differs from the shipped rules: a custom field (`plan_tier`) and meetings matter
more than the rules say, free-mail matters less. Two fields leak the outcome: `closed_reason`
is filled only once there is an outcome, `contract_date` is a date after it. Activities after
the outcome exist too and must not count.
"""

from __future__ import annotations

import math
import random
from typing import Any

from connector.domain import Activity, Lead
from connector.learn.dataset import Dataset, Example, dataset_from_examples

READ_AT = 1_795_000_000.0
DAY = 86400.0

INDUSTRIES = ["Automotive", "Aerospace", "Energy", "Software", "Retail", "Consulting", "Research"]
TITLES = ["Test Engineer", "CEO", "Head of Testing", "Student", "Buyer", "Engineering Manager", "Technician"]
COUNTRIES = ["Germany", "Austria", "Sweden", "France", "United States", "India"]
TIERS = ["enterprise", "growth", "starter", "none"]


def make_examples(n: int, seed: int = 1, *, won_share_shift: float = 0.0, open_share: float = 0.25,
                  leaks: bool = True) -> list[Example]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        industry = rng.choice(INDUSTRIES)
        title = rng.choice(TITLES)
        tier = rng.choice(TIERS)
        employees = int(rng.lognormvariate(5, 1.5))
        free = rng.random() < 0.2
        meetings = rng.choices([0, 1, 2, 3], [6, 2, 1, 1])[0]
        views = rng.randint(0, 20)
        z = (-1.2 + won_share_shift + {"enterprise": 1.8, "growth": 0.9, "starter": 0.0, "none": -0.8}[tier]
             + 0.8 * meetings + (0.6 if industry in ("Automotive", "Aerospace", "Energy") else -0.2)
             + 0.3 * math.log1p(employees) / 3 + (-0.1 if free else 0.0) + rng.gauss(0, 0.6))
        p = 1 / (1 + math.exp(-z))
        has_outcome = rng.random() > open_share
        outcome_at = READ_AT - rng.uniform(5, 200) * DAY
        outcome = ("won" if rng.random() < p else "lost") if has_outcome else None
        start = outcome_at - 120 * DAY
        acts = [Activity("meeting", rng.uniform(start, outcome_at - DAY)) for _ in range(meetings)]
        acts += [Activity("page_view", rng.uniform(start, outcome_at - DAY), {"url": "https://x.example/products/a"})
                 for _ in range(views)]
        acts += [Activity("email_open", rng.uniform(start, outcome_at)) for _ in range(rng.randint(0, 6))]
        if outcome == "won":  # what happens after a win must never be seen
            acts += [Activity("meeting", outcome_at + rng.uniform(1, 20) * DAY) for _ in range(3)]
        profile: dict[str, Any] = {
            "email": f"p{i}@{'gmail.com' if free else f'c{i}.example'}",
            "job_title": title, "industry": industry, "employees": str(employees),
            "country": rng.choice(COUNTRIES), "plan_tier": tier,
        }
        if leaks and outcome is not None:
            profile["closed_reason"] = rng.choice(["price", "fit", "timing"]) if outcome == "lost" else "signed"
            profile["contract_date"] = _iso(outcome_at + rng.uniform(0, 5) * DAY)
        lead = Lead(crm="hubspot", object_type="contact", id=str(1000 + i), profile=profile, activities=acts)
        out.append(Example(lead=lead, outcome=outcome, outcome_at=outcome_at if outcome else None))
    return out


def _iso(ts: float) -> str:
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def make_dataset(n: int, seed: int = 1, crm: str = "hubspot", **kw: Any) -> Dataset:
    return dataset_from_examples(crm, make_examples(n, seed, **kw), READ_AT)  # type: ignore[arg-type]
