"""Synthetic leads with outcomes for the learning tests: a hidden propensity that is not the shipped model.

The truth here: demo requests, meetings and being in DACH matter much more than the shipped points say,
company size and e-mail opens hardly at all, and a free-mail address is worse. Outcomes are drawn from it
with noise; about a third of the leads have no outcome yet, some outcomes have no date.
"""

from __future__ import annotations

import math
import random

from connector.domain import Activity, Lead
from connector.learn.dataset import Dataset, Example, dataset_from_examples

DAY = 86400.0
READ_AT = 1_780_000_000.0

TITLES = ["CEO", "Head of Test", "Test Engineering Manager", "Engineer", "Student", "Buyer", "Sales Manager"]
INDUSTRIES = ["Automotive", "Aerospace", "Retail", "Software", "Energy", "Banking"]
COUNTRIES = ["DE", "AT", "CH", "SE", "GB", "NL", "FR", "US", "CN"]
REGIONS = {"DE": "DACH", "AT": "DACH", "CH": "DACH", "SE": "Nordics", "GB": "UK&I", "NL": "Benelux"}


def _lead(i: int, rnd: random.Random, truth: list[float]) -> tuple[Lead, float]:
    title = rnd.choice(TITLES)
    industry = rnd.choice(INDUSTRIES)
    country = rnd.choice(COUNTRIES)
    employees = rnd.choice([5, 60, 300, 2000])
    freemail = rnd.random() < 0.2
    profile = {
        "email": f"p{i}@{'gmail.com' if freemail else f'c{i % 97}.example'}",
        "job_title": title, "industry": industry, "country": country, "employees": str(employees),
    }
    acts: list[Activity] = []
    demo = rnd.random() < 0.15
    meetings = rnd.choice([0, 0, 0, 1, 2])
    opens = rnd.randint(0, 6)
    views = rnd.randint(0, 8)
    t0 = READ_AT - 200 * DAY
    for _ in range(opens):
        acts.append(Activity("email_open", t0 + rnd.random() * 190 * DAY, {}))
    for _ in range(views):
        url = rnd.choice(["/products/q4", "/pricing", "/careers", "/blog"])
        acts.append(Activity("page_view", t0 + rnd.random() * 190 * DAY, {"url": url}))
    if demo:
        acts.append(Activity("form_submission", t0 + rnd.random() * 190 * DAY, {"form": "Request a demo"}))
    for _ in range(meetings):
        acts.append(Activity("meeting", t0 + rnd.random() * 190 * DAY, {}))
    logit = (-2.2 + 2.2 * demo + 1.1 * meetings + 1.2 * (country in ("DE", "AT", "CH")) - 1.3 * freemail
             + 0.6 * (title in ("CEO", "Head of Test")) - 0.8 * (title == "Student") + 0.02 * opens
             - 0.9 * (industry in ("Retail", "Banking")))
    truth.append(logit)
    lead = Lead("hubspot", "contact", str(1000 + i), profile, sorted(acts, key=lambda a: a.ts), owner_id=None)
    return lead, 1.0 / (1.0 + math.exp(-logit))


def synthetic_dataset(n: int = 1500, seed: int = 1, *, open_share: float = 0.3, undated_share: float = 0.05) -> Dataset:
    rnd = random.Random(seed)
    truth: list[float] = []
    examples = []
    for i in range(n):
        lead, p = _lead(i, rnd, truth)
        if rnd.random() < open_share:
            examples.append(Example(lead, None, None))
            continue
        outcome = "won" if rnd.random() < p else "lost"
        when = None if rnd.random() < undated_share else READ_AT - rnd.random() * 20 * DAY
        examples.append(Example(lead, outcome, when))  # type: ignore[arg-type]
    return dataset_from_examples("hubspot", examples, READ_AT)
