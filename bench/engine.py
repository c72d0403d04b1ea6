"""Scoring engine throughput on one core.

Generates a seeded population of leads shaped like a European B2B CRM (many
engineers, some decision makers, students, free-mail addresses, garbage in
numeric fields, country names in every spelling; 10-30 activities each over
the last year, mostly page views and email opens, with UTM-tagged urls),
then scores it with the default model (mappings/scoring.yaml) at a fixed `now`.
Only scoring is timed; generating the population is not.

    python bench/engine.py                 # 100,000 leads, figures then one JSON line
    python bench/engine.py --leads 20000 --json
    python bench/engine.py --profile       # cProfile of the scoring loop, top functions
    python bench/engine.py --probability   # the rules alone, then rules + learned probability and factors

The engine is imported from this checkout (pure Python), or, run from a directory without
connector/, from wherever it is installed (compiled by `LEADSCORE_COMPILE=1 pip install .`);
`compiled` in the JSON says which.

Rates are per second of process CPU time (the machine may be shared; wall time is
printed too, as `seconds` and `wall_events_per_s`).

`results_sha256` fingerprints every result (scores, reasons, contributions'
points bit for bit): an optimisation must leave it unchanged.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import hashlib
import json
import math
import pstats
import random
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if (ROOT / "connector").is_dir():
    sys.path.insert(0, str(ROOT))

from connector.bootstrap import settle_collector  # noqa: E402
from connector.domain import Activity  # noqa: E402
from connector.engine import ScoringModel, load_scoring  # noqa: E402

NOW = 1_795_000_000.0  # a fixed instant (2026-11-19), so runs compare
DAY = 86400.0

TITLES = [
    (30, ["Test Engineer", "Measurement Engineer", "Entwicklungsingenieur", "R&D Engineer", "Validation Engineer",
          "Senior Engineer", "Design Engineer", "Research Scientist", "Technician", "Messtechniker"]),
    (8, ["Test Manager", "Engineering Manager", "Manager Test & Validation", "Lab Lead", "Teamleiter Versuch"]),
    (6, ["CEO", "CTO", "Head of Testing", "Director Engineering", "VP Engineering", "Geschäftsführer", "Owner"]),
    (5, ["Student", "Working Student", "Intern", "PhD Candidate", "Werkstudent Messtechnik"]),
    (12, ["Purchasing", "Buyer", "Marketing Manager", "Sales", "Office Manager", "Consultant", "Project Manager"]),
    (39, [None, "", "n/a"]),
]
INDUSTRIES = [
    (30, ["Automotive", "Aerospace", "Energy", "Civil Engineering", "Research", "Industrial Manufacturing",
          "Machinery", "Rail", "Wind Energy", "University"]),
    (40, ["Retail", "Software", "Consulting", "Healthcare", "Education", "Food & Beverage", "Logistics",
          "Financial Services", "Telecommunications", "Chemicals"]),
    (30, [None, "", "Other"]),
]
COUNTRIES = [
    (25, ["Germany", "DE", "Deutschland", "Austria", "AT", "Switzerland", "CH", "Schweiz"]),
    (20, ["Sweden", "Norway", "NO", "Denmark", "Finland", "United Kingdom", "UK", "GB", "Ireland",
          "Netherlands", "NL", "Belgium", "Luxembourg"]),
    (15, ["France", "Italy", "Spain", "Poland", "Czech Republic", "Portugal"]),
    (20, ["United States", "USA", "China", "India", "Japan", "Brazil", "Canada"]),
    (18, [None, ""]),
    (2, ["Atlantis", "n/a", "Europe"]),
]
FREE = ["gmail.com", "gmx.de", "web.de", "outlook.com", "yahoo.com", "hotmail.com"]
PAGES = (
    [f"/products/{p}" for p in ("daq", "q-bloxx", "q-station", "sensors", "software/gi-bench", "amplifiers",
                                "telemetry", "strain-gauges", "accelerometers", "thermocouples")]
    + [f"/applications/{a}" for a in ("wind-turbines", "bridges", "battery-test", "engine-test", "flight-test")]
    + [f"/blog/post-{i}" for i in range(120)]
    + ["/", "/en", "/de", "/about", "/news", "/support", "/downloads", "/events"]
    + ["/pricing", "/en/pricing", "/de/preise", "/request-quote"]
    + ["/demo", "/contact", "/de/kontakt"]
    + ["/careers", "/careers/jobs", "/de/karriere"]
)
PAGE_WEIGHTS = [3.0] * 10 + [2.0] * 5 + [0.5] * 120 + [4.0] * 8 + [0.8] * 4 + [0.8] * 3 + [0.5] * 3
CAMPAIGNS = ["spring-webinar", "newsletter-03", "battery-test-2026", "trade-show-hannover", "retargeting", "linkedin"]
FORMS = ["Request a demo", "Contact sales", "Request a quote", "Whitepaper: Strain gauge basics",
         "Newsletter signup", "Download application note", "Event registration"]
DOWNLOADS = ["Whitepaper: DAQ for wind turbines", "Datasheet Q.bloxx", "Application note: battery testing",
             "Brochure 2026", "Case study: bridge monitoring", "GI.bench software", "Manual Q.station"]
KINDS = [
    (40, "page_view"), (25, "email_open"), (8, "email_click"), (3, "form_submission"), (3, "download"),
    (2, "webinar_registered"), (1.5, "webinar_attended"), (1.5, "email_reply"), (1, "call"), (0.7, "meeting"),
    (0.5, "event_attended"), (0.4, "email_bounce"), (0.4, "email_unsubscribe"), (3, "note"),
]


def pick(rng: random.Random, table: list[tuple[float, list[Any]]]) -> Any:
    weights = [w for w, _ in table]
    (_, options), = rng.choices(table, weights)
    return rng.choice(options)


def make_profile(rng: random.Random, i: int) -> dict[str, Any]:
    employees: Any = int(rng.lognormvariate(4.5, 1.8))
    roll = rng.random()
    if roll < 0.25:
        employees = f"{employees:,}"
    elif roll < 0.30:
        employees = rng.choice(["50-100", "n/a", "", "1000+", "approx. 200"])
    elif roll < 0.45:
        employees = None
    revenue: Any = None
    if rng.random() < 0.4:
        revenue = rng.choice([f"{rng.randint(1, 900)}M", rng.randint(1, 900) * 1_000_000, "€ 25,000,000", "unknown"])
    company = f"company{rng.randint(1, 20000)}"
    domain = rng.choice(FREE) if rng.random() < 0.15 else f"{company}.example"
    return {
        "email": f"person{i}@{domain}" if rng.random() < 0.97 else "not-an-email",
        "job_title": pick(rng, TITLES),
        "industry": pick(rng, INDUSTRIES),
        "employees": employees,
        "annual_revenue": revenue,
        "country": pick(rng, COUNTRIES),
        "lifecycle_stage": rng.choice(["lead", "lead", "marketingqualifiedlead", "subscriber", "opportunity"]),
        "budget": rng.choice([None] * 12 + ["approved", "planned", "unknown"]),
        "need": rng.choice([None] * 10 + ["DAQ for test bench", "replace legacy system"]),
        "timeline": rng.choice([None] * 10 + ["this quarter", "next year", "within 6 months"]),
    }


def make_activity(rng: random.Random) -> Activity:
    kind = rng.choices([k for _, k in KINDS], [w for w, _ in KINDS])[0]
    age = rng.expovariate(1 / 60) * DAY
    ts = NOW - age if rng.random() > 0.005 else NOW + rng.uniform(0, 3600)  # a little clock skew
    attrs: dict[str, str] = {}
    if kind == "page_view":
        url = "https://www.example-measurement.com" + rng.choices(PAGES, PAGE_WEIGHTS)[0]
        if rng.random() < 0.3:
            url += f"?utm_source=newsletter&utm_campaign={rng.choice(CAMPAIGNS)}&utm_content={rng.randint(1, 30)}"
        attrs["url"] = url
    elif kind == "form_submission":
        attrs["form"] = rng.choice(FORMS)
    elif kind == "download":
        attrs["title"] = rng.choice(DOWNLOADS)
    elif kind.startswith("email"):
        attrs["campaign"] = rng.choice(CAMPAIGNS)
        attrs["subject"] = f"News {rng.randint(1, 40)}"
    return Activity(kind, ts, attrs)


Lead = tuple[dict[str, Any], list[Activity]]


def pages(n: int, seed: int, page: int) -> Iterator[list[Lead]]:
    """The population, `page` leads at a time (all at once when page is 0)."""
    rng = random.Random(seed)
    size = page or n
    for start in range(0, n, size):
        yield [
            (make_profile(rng, i), [make_activity(rng) for _ in range(rng.randint(10, 30))])
            for i in range(start, min(n, start + size))
        ]


def run(
    model: ScoringModel, leads: list[Lead], bands: Counter[str], grades: Counter[str], digest: Any = None
) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) spent scoring `leads` (only the scoring is timed; feeding
    `digest` is not). CPU time is the figure to compare on a shared machine: it does not count the
    time other processes hold the core."""
    score = model.score
    results = []
    keep = results.append
    cpu = time.process_time()
    start = time.perf_counter()
    for profile, activities in leads:
        keep(score(profile, activities, NOW))
    seconds = time.perf_counter() - start
    cpu = time.process_time() - cpu
    for r in results:  # counted after the clock stops: the bench's own bookkeeping is not the engine's work
        bands[r.band] += 1
        grades[r.grade] += 1
    if digest is not None:
        for r in results:
            # every field a sync writes or explains, contributions' float points bit for bit
            digest.update(repr((r.score, r.fit, r.engagement, r.band, r.grade, r.reasons, r.contributions,
                                r.bant, r.problems)).encode())
    return seconds, cpu


def compiled_engine() -> bool:
    """Whether the engine imported is the mypyc-compiled one (LEADSCORE_COMPILE=1 pip install .)."""
    import connector.engine.compiled as engine

    return not str(engine.__file__).endswith(".py")


def calibration() -> float:
    """Nanoseconds per iteration of a loop doing one dict.get: how fast this interpreter and CPU are."""
    d = {"a": 1}
    get = d.get
    best = math.inf
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(200_000):
            get("a")
        best = min(best, time.perf_counter() - start)
    return best / 200_000 * 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--leads", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--model", type=Path, default=ROOT / "mappings" / "scoring.yaml")
    ap.add_argument("--page", type=int, default=1000,
                    help="generate and score the population in pages of this many leads, as a sync reads them "
                         "from a CRM (0: generate all of it first, then score it cold)")
    ap.add_argument("--json", action="store_true", help="print only the JSON line")
    ap.add_argument("--profile", action="store_true", help="cProfile the scoring loop and print the top functions")
    ap.add_argument("--probability", choices=["auto", "logistic", "trees"], nargs="?", const="auto", default=None,
                    help="also apply a learned probability with its factors in the same pass (trained first on "
                         "outcomes drawn for 1,500 generated leads, not timed; logistic or trees forces the learner)")
    args = ap.parse_args()
    if args.probability:
        probability_bench(args)
        return

    model = load_scoring(args.model)
    settle_collector()  # the garbage collector as a worker process sets it (tasks/app.py)
    ns_per_get = calibration()
    bands: Counter[str] = Counter()
    grades: Counter[str] = Counter()
    digest = hashlib.sha256()
    seconds = 0.0
    cpu = 0.0
    events = 0
    gen_s = time.perf_counter()
    if args.profile:
        prof = cProfile.Profile()
        for page in pages(args.leads, args.seed, args.page):
            prof.enable()
            run(model, page, bands, grades)
            prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)
        return
    for page in pages(args.leads, args.seed, args.page):
        events += sum(len(a) for _, a in page)
        gc.collect()
        gc.freeze()  # generated data is long-lived (a worker freezes what it loaded at start)
        wall, used = run(model, page, bands, grades, digest)
        seconds += wall
        cpu += used
        gc.unfreeze()
        del page
    gen_s = time.perf_counter() - gen_s - seconds
    n = args.leads
    figures = {
        "events_per_s": round(events / cpu),
        "leads_per_s": round(n / cpu),
        "us_per_lead": round(cpu / n * 1e6, 2),
        "leads": n,
        "events": events,
        "cpu_seconds": round(cpu, 3),
        "seconds": round(seconds, 3),
        "wall_events_per_s": round(events / seconds),
        "page": args.page,
        "rules": len(model.spec.fit) + len(model.spec.engagement),
        "model": model.version,
        "hot_share": round(bands["hot"] / n, 4),
        "warm_share": round(bands["warm"] / n, 4),
        "cold_share": round(bands["cold"] / n, 4),
        "ns_per_dict_get": round(ns_per_get, 1),
        "results_sha256": digest.hexdigest()[:16],
        "compiled": compiled_engine(),
        "python": sys.version.split()[0],
    }
    if not args.json:
        how = f"in pages of {args.page:,}" if args.page else "all generated first (cold caches)"
        print(f"model        {model.version} ({figures['rules']} rules)")
        print(f"population   {n:,} leads, {events:,} activities, {how}; generating took {gen_s:.1f}s, not timed")
        print(f"scoring      {cpu:.2f}s of CPU on one core: {figures['events_per_s']:,} events/s, "
              f"{figures['leads_per_s']:,} leads/s, {figures['us_per_lead']} us/lead")
        print(f"wall clock   {seconds:.2f}s: {figures['wall_events_per_s']:,} events/s (above CPU time when the "
              "machine is shared)")
        print("bands        " + ", ".join(f"{b} {bands[b] / n:.1%}" for b in ("hot", "warm", "cold")))
        print("grades       " + ", ".join(f"{g} {grades[g] / n:.1%}" for g in "ABCD"))
        print(f"engine       {'compiled with mypyc' if figures['compiled'] else 'pure Python'} "
              f"({sys.modules[ScoringModel.__module__].__file__})")
        print(f"calibration  a dict.get loop costs {ns_per_get:.0f} ns here (about 20 on a recent laptop)")
        print(f"results      sha256 {figures['results_sha256']} (same population, model and engine -> same hash;"
              " compare before and after an engine change)")
    print(json.dumps(figures))


def probability_bench(args: argparse.Namespace) -> None:
    """Rules alone vs rules + the learned probability and its factors, page by page, on the same population."""
    from connector.learn import train as learn
    from connector.learn.dataset import Example, dataset_from_examples
    from connector.learn.predict import Predictor
    from connector.mappings.probability import ProbabilitySettings

    model = load_scoring(args.model)
    # Outcomes drawn from a hidden truth that is not the rules' (fit, meetings, pricing pages, noise).
    rng = random.Random(args.seed + 1)
    examples = []
    for page in pages(1500, args.seed + 1, 0):
        for i, (profile, acts) in enumerate(page):
            r = model.score(profile, acts, NOW)
            meetings = sum(a.kind in ("meeting", "call", "email_reply") for a in acts)
            z = -1.5 + r.fit / 25 + 0.6 * meetings + rng.gauss(0, 1)
            won = rng.random() < 1 / (1 + math.exp(-z))
            from connector.domain import Lead as DomainLead

            lead = DomainLead(crm="hubspot", object_type="contact", id=str(i), profile=profile, activities=acts)
            examples.append(Example(lead, "won" if won else "lost", NOW + 1))
    dataset = dataset_from_examples("hubspot", examples, NOW)
    start = time.perf_counter()
    if args.probability != "auto":
        chosen = {"logistic": "logistic regression", "trees": "gradient-boosted trees"}[args.probability]
        every = learn.candidates
        learn.candidates = lambda: {chosen: every()[chosen]}  # type: ignore[assignment]
    trained = learn.train(dataset, model, ProbabilitySettings(), now=NOW, repeats=1)
    train_s = time.perf_counter() - start
    predictor = Predictor(trained)

    rules_s = both_s = 0.0
    n = events = 0
    for page in pages(args.leads, args.seed, args.page):
        n += len(page)
        events += sum(len(a) for _, a in page)
        gc.collect()
        gc.freeze()
        start = time.perf_counter()
        results = [model.score(p, a, NOW) for p, a in page]
        rules_s += time.perf_counter() - start
        start = time.perf_counter()
        results = [model.score(p, a, NOW) for p, a in page]
        predictor.apply([(p, a, r) for (p, a), r in zip(page, results, strict=True)], NOW)
        both_s += time.perf_counter() - start
        gc.unfreeze()
    figures = {
        "events_per_s": round(events / both_s),
        "leads_per_s": round(n / both_s),
        "rules_leads_per_s": round(n / rules_s),
        "share_of_rules_speed": round(rules_s / both_s, 3),
        "us_per_lead": round(both_s / n * 1e6, 2),
        "rules_us_per_lead": round(rules_s / n * 1e6, 2),
        "leads": n,
        "page": args.page,
        "learner": trained.figures.chosen,
        "features": trained.spec.width,
        "train_s": round(train_s, 1),
    }
    if not args.json:
        print(f"learned      {trained.figures.chosen}, {trained.spec.width} features, trained in {train_s:.1f}s "
              f"on {trained.figures.outcomes} drawn outcomes (not timed)")
        print(f"rules        {figures['rules_leads_per_s']:,} leads/s ({figures['rules_us_per_lead']} us/lead)")
        print(f"with model   {figures['leads_per_s']:,} leads/s ({figures['us_per_lead']} us/lead): probability and "
              f"factors in words, pages of {args.page:,}")
        print(f"share        {figures['share_of_rules_speed']:.0%} of the rules' own speed (the target: at least 50%)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
