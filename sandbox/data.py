"""The sandbox CRM's people: seeded, lazy, and the same for both CRMs.

The model
---------
`Population(n, seed, anchor)` stands for n people. Nothing is materialised:
person i (0 <= i < n) is generated on demand from `random.Random(seed *
1_000_003 + i)` and kept in a bounded LRU cache, so a population of a million
starts instantly and costs memory only for the people actually read.
`anchor` is the data's "now" in epoch seconds (default: today's midnight UTC,
so one seed gives the same data all day); every timestamp is at or before it.

- `person(i) -> Person`: a frozen record (profile, owner, hidden intent).
  People work at companies; `company(c) -> Company` (c < `n_companies`) is
  generated the same way, so several people share one company (Salesforce
  Accounts). `Person.company_index` links them. About 15-25 µs per person not
  in the cache (two seeded generators), under 1 µs from the cache.
- `is_lead(i)` / `sf_type(i)`: whether person i is a Salesforce Lead (about
  70 %) or Contact, from a separate stream keyed by (seed, i) only, without
  building the person (~0.2 µs); `Person.sf_type` is read from it.
- `Person.modified_ms` (epoch milliseconds) is non-decreasing in i:
  `base_modified_ms(i)` computes it without building the person, and
  `first_modified_at_or_after(t_ms)` is a bisection, so "modified since T,
  ascending" never scans. `created_ms <= modified_ms`.
- `activities(i) -> list[SandboxActivity]`: what person i did in the 180 days
  before the anchor, sorted by time. Ids are stable: `i * 1000 + j`
  (`ACTIVITY_ID_STRIDE`). The mix follows the hidden `intent` (0..1, most low,
  a few per cent above `HOT_INTENT`): hot people look at pricing and demo
  pages, fill in whitepaper and sales forms, attend webinars, reply to emails
  and have meetings. Some people visit /careers, some emails bounce, students
  and interns appear. Activities carry no CRM-specific ids beyond their own.
- Outcomes (the hidden truth): `Person.propensity` is P(won | a decision was reached) under a
  hidden model that is deliberately not mappings/scoring.yaml (`hidden_propensity`, the HIDDEN_*
  weights); `Person.outcome` ("won", "lost" or None for open) and `Person.outcome_ms` (when) are
  drawn from it with noise, from a stream of their own; `Person.outcome_dated` says whether a lost
  outcome is recorded with a date (a closed-lost deal or opportunity) or only by a status
  (UNQUALIFIED / "Closed - Not Converted"). `lifecycle_stage` and `lead_status` follow the outcome,
  and `lifecycle_dates(person)` gives the moment each lifecycle stage was entered. A person with an
  outcome did everything in `activities(i)` before it, except what came after: a customer is
  onboarded in the ONBOARDING_DAYS after it (support pages, calls, notes, a reply or a kick-off
  meeting now and then), a lost lead opens an e-mail now and then.
  Tests read the truth from here: HubSpot contact id i + 1 and Salesforce `00Q`/`003` + i are person i.
- `reps() -> list[SandboxRep]`: a fixed sales team in regional teams named
  exactly "DACH", "Nordics", "UK&I", "Benelux", "Rest of World"; a few are
  inactive (one in DACH at least). `Person.owner` is an index into that list
  or None (about 10 % of people are already owned, by a rep of their region).
- `region_of(country)` gives the team name a country belongs to.

`Store` is the mutable overlay one CRM server keeps on top of the population:
property writes per (object type, integer key), created records, and per-record
modified timestamps that move on every write. Object types are free strings
chosen by each CRM app ("contacts", "tasks" for HubSpot; "Lead", "Task" for
Salesforce); keys are integers (for people, the person index). Each CRM server
has its own Store over the shared Population.
`Store.iter_modified(obj, since_ms, base=...)` yields `(modified_ms, key)` in
order, merging the untouched base records (by bisection over the population)
with the written ones (kept sorted by their new timestamp); see `BaseIndex`.
All Store methods take an internal lock, so one asyncio server (or a thread
next to it) can use it safely.
"""

from __future__ import annotations

import bisect
import datetime as dt
import heapq
import itertools
import math
import operator
import random
import threading
import time
from _random import Random as _Random
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Final, Generic, TypeVar

DAY_MS: Final = 86_400_000
ACTIVITY_WINDOW_DAYS: Final = 180
MODIFIED_SPAN_DAYS: Final = 365
ACTIVITY_ID_STRIDE: Final = 1000
# Share of low-intent people (intent below DORMANT_BELOW_INTENT) who are dormant.
DORMANT_SHARE = 0.8
DORMANT_BELOW_INTENT = 0.3
HOT_INTENT: Final = 0.7

TEAMS: Final = ("DACH", "Nordics", "UK&I", "Benelux", "Rest of World")

ACTIVITY_KINDS: Final = (
    "page_view",
    "form_submission",
    "email_open",
    "email_click",
    "email_reply",
    "email_bounce",
    "meeting",
    "call",
    "note",
    "webinar_registered",
    "webinar_attended",
    "event_attended",
)

K = TypeVar("K")
V = TypeVar("V")

FREE_MAIL_DOMAINS: Final = ("gmail.com", "gmx.de", "web.de", "outlook.com", "yahoo.com")


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class Company:
    index: int
    name: str
    domain: str
    industry: str
    employees: int
    annual_revenue: int | None
    country: str
    state: str
    city: str


@dataclass(frozen=True, slots=True)
class Person:
    index: int
    first_name: str
    last_name: str
    email: str
    job_title: str
    company: str
    company_index: int
    industry: str
    employees: int | str  # a str is deliberate garbage ("50-100", "n/a") for the engine to cope with
    annual_revenue: int | None
    country: str
    state: str
    city: str
    phone: str
    website: str
    lifecycle_stage: str
    lead_status: str
    lead_source: str
    created_ms: int
    modified_ms: int
    intent: float  # hidden ground truth, 0..1
    sf_type: str  # "Lead" or "Contact"
    owner: int | None  # index into Population.reps()
    is_student: bool
    free_mail: bool
    # The hidden truth (see "Outcomes" in the module docstring): what became of this person.
    propensity: float  # P(won | the person reached a decision) under the hidden model, 0..1
    outcome: str | None  # "won", "lost" or None (still open)
    outcome_ms: int | None  # when it happened (the truth always knows; a CRM may not record it)
    outcome_dated: bool  # whether the CRMs record a lost outcome with a date (a closed-lost deal) or only a status

    @property
    def created_at(self) -> float:
        return self.created_ms / 1000

    @property
    def modified_at(self) -> float:
        return self.modified_ms / 1000

    @property
    def region(self) -> str:
        return region_of(self.country)


@dataclass(frozen=True, slots=True)
class SandboxActivity:
    id: int  # person index * ACTIVITY_ID_STRIDE + position
    person: int
    kind: str  # one of ACTIVITY_KINDS
    ts_ms: int
    attrs: Mapping[str, str] = field(default_factory=dict)  # shared between activities: read-only

    @property
    def ts(self) -> float:
        return self.ts_ms / 1000


@dataclass(frozen=True, slots=True)
class SandboxRep:
    index: int
    id: str  # HubSpot owner id
    user_id: int  # HubSpot user id
    email: str
    first_name: str
    last_name: str
    team: str
    team_id: str
    timezone: str
    country: str
    active: bool

    @property
    def name(self) -> str:
        return f"{self.first_name} {self.last_name}"


# --------------------------------------------------------------------------- vocabularies

_REGION_BY_COUNTRY: Final = {
    "Germany": "DACH",
    "Austria": "DACH",
    "Switzerland": "DACH",
    "Sweden": "Nordics",
    "Norway": "Nordics",
    "Denmark": "Nordics",
    "Finland": "Nordics",
    "United Kingdom": "UK&I",
    "Ireland": "UK&I",
    "Netherlands": "Benelux",
    "Belgium": "Benelux",
    "Luxembourg": "Benelux",
}


def region_of(country: str) -> str:
    return _REGION_BY_COUNTRY.get(country, "Rest of World")


# country: (weight, phone prefix, company suffixes, [(state, city), ...], first names, last names)
_DE_FIRST = (
    "Anna",
    "Lukas",
    "Julia",
    "Jonas",
    "Laura",
    "Felix",
    "Sarah",
    "Maximilian",
    "Lea",
    "Paul",
    "Katharina",
    "Tobias",
    "Sabine",
    "Andreas",
    "Stefan",
    "Claudia",
    "Matthias",
    "Nina",
)
_DE_LAST = (
    "Müller",
    "Schmidt",
    "Schneider",
    "Fischer",
    "Weber",
    "Meyer",
    "Wagner",
    "Becker",
    "Hoffmann",
    "Schulz",
    "Koch",
    "Richter",
    "Klein",
    "Wolf",
    "Neumann",
    "Zimmermann",
    "Krüger",
    "Hartmann",
)
_NORDIC_FIRST = (
    "Erik",
    "Lars",
    "Anna",
    "Ingrid",
    "Mikael",
    "Sofia",
    "Johan",
    "Maja",
    "Nils",
    "Freja",
    "Oskar",
    "Elin",
    "Mikko",
    "Aino",
    "Henrik",
    "Astrid",
)
_NORDIC_LAST = (
    "Andersson",
    "Johansson",
    "Nilsson",
    "Hansen",
    "Larsen",
    "Jensen",
    "Virtanen",
    "Korhonen",
    "Berg",
    "Lindqvist",
    "Olsen",
    "Nielsen",
    "Karlsson",
    "Eriksson",
)
_EN_FIRST = (
    "James",
    "Emma",
    "Oliver",
    "Sophie",
    "Jack",
    "Charlotte",
    "Harry",
    "Emily",
    "Michael",
    "Jennifer",
    "David",
    "Sarah",
    "Daniel",
    "Megan",
    "Ryan",
    "Aoife",
    "Sean",
    "Ciara",
)
_EN_LAST = (
    "Smith",
    "Jones",
    "Taylor",
    "Brown",
    "Williams",
    "Wilson",
    "Davies",
    "Evans",
    "Murphy",
    "Kelly",
    "O'Brien",
    "Walsh",
    "Johnson",
    "Miller",
    "Garcia",
    "Martinez",
    "Anderson",
    "Clark",
)
_NL_FIRST = (
    "Daan",
    "Emma",
    "Sem",
    "Julia",
    "Lucas",
    "Sophie",
    "Thomas",
    "Lotte",
    "Pieter",
    "Marie",
    "Luc",
    "Elise",
)
_NL_LAST = (
    "de Jong",
    "Jansen",
    "de Vries",
    "van den Berg",
    "Bakker",
    "Janssens",
    "Peeters",
    "Maes",
    "Visser",
    "Smit",
    "Dubois",
    "Schmit",
)
_ROMANCE_FIRST = (
    "Marie",
    "Pierre",
    "Camille",
    "Luca",
    "Giulia",
    "Marco",
    "Sofia",
    "Javier",
    "Lucía",
    "Carlos",
    "Chiara",
    "Antoine",
)
_ROMANCE_LAST = (
    "Martin",
    "Bernard",
    "Dubois",
    "Rossi",
    "Russo",
    "Bianchi",
    "García",
    "Fernández",
    "López",
    "Moreau",
    "Ferrari",
    "Sánchez",
)
_ASIA_FIRST = ("Hiroshi", "Yuki", "Wei", "Li", "Priya", "Rahul", "Min-jun", "Ji-woo", "Kenji", "Mei")
_ASIA_LAST = ("Sato", "Suzuki", "Wang", "Zhang", "Sharma", "Patel", "Kim", "Park", "Tanaka", "Chen")

_Names = tuple[tuple[str, ...], tuple[str, ...]]
_COUNTRIES: Final[tuple[tuple[str, float, str, tuple[str, ...], tuple[tuple[str, str], ...], _Names], ...]] = (
    (
        "Germany",
        28,
        "+49",
        ("GmbH", "AG", "GmbH & Co. KG", "SE"),
        (
            ("Bavaria", "Munich"),
            ("Bavaria", "Nuremberg"),
            ("Baden-Württemberg", "Stuttgart"),
            ("Baden-Württemberg", "Karlsruhe"),
            ("North Rhine-Westphalia", "Cologne"),
            ("North Rhine-Westphalia", "Aachen"),
            ("Lower Saxony", "Wolfsburg"),
            ("Lower Saxony", "Hanover"),
            ("Hesse", "Darmstadt"),
            ("Saxony", "Dresden"),
            ("Hamburg", "Hamburg"),
            ("Berlin", "Berlin"),
        ),
        (_DE_FIRST, _DE_LAST),
    ),
    (
        "Austria",
        5,
        "+43",
        ("GmbH", "AG"),
        (("Vienna", "Vienna"), ("Styria", "Graz"), ("Upper Austria", "Linz")),
        (_DE_FIRST, _DE_LAST),
    ),
    (
        "Switzerland",
        6,
        "+41",
        ("AG", "SA", "GmbH"),
        (("Zurich", "Zurich"), ("Bern", "Bern"), ("Vaud", "Lausanne"), ("Basel-Stadt", "Basel")),
        (_DE_FIRST, _DE_LAST),
    ),
    (
        "Sweden",
        5,
        "+46",
        ("AB",),
        (
            ("Stockholm", "Stockholm"),
            ("Västra Götaland", "Gothenburg"),
            ("Skåne", "Malmö"),
            ("Östergötland", "Linköping"),
        ),
        (_NORDIC_FIRST, _NORDIC_LAST),
    ),
    (
        "Norway",
        3,
        "+47",
        ("AS", "ASA"),
        (("Oslo", "Oslo"), ("Vestland", "Bergen"), ("Trøndelag", "Trondheim")),
        (_NORDIC_FIRST, _NORDIC_LAST),
    ),
    (
        "Denmark",
        3,
        "+45",
        ("A/S", "ApS"),
        (("Capital Region", "Copenhagen"), ("Central Denmark", "Aarhus")),
        (_NORDIC_FIRST, _NORDIC_LAST),
    ),
    (
        "Finland",
        3,
        "+358",
        ("Oy", "Oyj"),
        (("Uusimaa", "Helsinki"), ("Pirkanmaa", "Tampere"), ("North Ostrobothnia", "Oulu")),
        (_NORDIC_FIRST, _NORDIC_LAST),
    ),
    (
        "United Kingdom",
        10,
        "+44",
        ("Ltd", "plc"),
        (
            ("England", "London"),
            ("England", "Manchester"),
            ("England", "Bristol"),
            ("England", "Derby"),
            ("Scotland", "Glasgow"),
            ("Wales", "Cardiff"),
        ),
        (_EN_FIRST, _EN_LAST),
    ),
    (
        "Ireland",
        2,
        "+353",
        ("Ltd", "DAC"),
        (("Leinster", "Dublin"), ("Munster", "Cork")),
        (_EN_FIRST, _EN_LAST),
    ),
    (
        "Netherlands",
        5,
        "+31",
        ("B.V.", "N.V."),
        (("North Holland", "Amsterdam"), ("North Brabant", "Eindhoven"), ("South Holland", "Delft")),
        (_NL_FIRST, _NL_LAST),
    ),
    (
        "Belgium",
        3,
        "+32",
        ("NV", "SA", "BV"),
        (("Flanders", "Antwerp"), ("Flanders", "Leuven"), ("Brussels", "Brussels")),
        (_NL_FIRST, _NL_LAST),
    ),
    ("Luxembourg", 1, "+352", ("S.A.", "S.à r.l."), (("Luxembourg", "Luxembourg"),), (_NL_FIRST, _NL_LAST)),
    (
        "France",
        5,
        "+33",
        ("SAS", "SA"),
        (("Île-de-France", "Paris"), ("Auvergne-Rhône-Alpes", "Lyon"), ("Occitanie", "Toulouse")),
        (_ROMANCE_FIRST, _ROMANCE_LAST),
    ),
    (
        "Italy",
        4,
        "+39",
        ("S.p.A.", "S.r.l."),
        (("Lombardy", "Milan"), ("Piedmont", "Turin"), ("Emilia-Romagna", "Bologna")),
        (_ROMANCE_FIRST, _ROMANCE_LAST),
    ),
    (
        "Spain",
        3,
        "+34",
        ("S.A.", "S.L."),
        (("Madrid", "Madrid"), ("Catalonia", "Barcelona")),
        (_ROMANCE_FIRST, _ROMANCE_LAST),
    ),
    (
        "Poland",
        2,
        "+48",
        ("Sp. z o.o.", "S.A."),
        (("Masovia", "Warsaw"), ("Lesser Poland", "Kraków")),
        (_DE_FIRST, _NORDIC_LAST),
    ),
    (
        "United States",
        7,
        "+1",
        ("Inc.", "LLC", "Corp."),
        (
            ("Michigan", "Detroit"),
            ("California", "San Jose"),
            ("Texas", "Austin"),
            ("Washington", "Seattle"),
            ("Massachusetts", "Boston"),
        ),
        (_EN_FIRST, _EN_LAST),
    ),
    (
        "Canada",
        1,
        "+1",
        ("Inc.", "Ltd."),
        (("Ontario", "Toronto"), ("Quebec", "Montreal")),
        (_EN_FIRST, _EN_LAST),
    ),
    (
        "Japan",
        1.5,
        "+81",
        ("K.K.", "Co., Ltd."),
        (("Tokyo", "Tokyo"), ("Aichi", "Nagoya")),
        (_ASIA_FIRST, _ASIA_LAST),
    ),
    (
        "China",
        1,
        "+86",
        ("Co., Ltd.",),
        (("Shanghai", "Shanghai"), ("Guangdong", "Shenzhen")),
        (_ASIA_FIRST, _ASIA_LAST),
    ),
    (
        "India",
        1,
        "+91",
        ("Pvt. Ltd.",),
        (("Karnataka", "Bengaluru"), ("Maharashtra", "Pune")),
        (_ASIA_FIRST, _ASIA_LAST),
    ),
    ("South Korea", 0.5, "+82", ("Co., Ltd.",), (("Seoul", "Seoul"),), (_ASIA_FIRST, _ASIA_LAST)),
    ("Brazil", 0.5, "+55", ("Ltda.",), (("São Paulo", "São Paulo"),), (_ROMANCE_FIRST, _ROMANCE_LAST)),
)
_COUNTRY_WEIGHTS: Final = tuple(c[1] for c in _COUNTRIES)

# industry: (weight, name words)
_INDUSTRIES: Final = (
    ("automotive", 18, ("Automotive", "Motors", "Drive Systems", "Vehicle Engineering", "Mobility")),
    ("aerospace", 8, ("Aerospace", "Aviation", "Flight Systems", "Aerostructures")),
    ("energy", 9, ("Energy", "Wind Power", "Grid Systems", "Power Solutions")),
    ("civil engineering", 7, ("Bau", "Structures", "Bridge Engineering", "Infrastructure")),
    (
        "research/university",
        8,
        ("Institute of Technology", "University", "Research Centre", "Fraunhofer-Lab"),
    ),
    ("industrial manufacturing", 18, ("Maschinenbau", "Industrial Systems", "Automation", "Precision Parts")),
    ("rail", 4, ("Rail Systems", "Rolling Stock", "Rail Technology")),
    ("medical devices", 4, ("Medical", "MedTech", "Health Systems")),
    ("electronics", 7, ("Electronics", "Sensorik", "Semiconductors", "Instruments")),
    ("software", 6, ("Software", "Digital", "Analytics", "Cloud")),
    ("retail", 4, ("Retail", "Handel", "Stores")),
    ("consulting", 4, ("Consulting", "Engineering Services", "Test Services")),
    ("government", 2, ("Agency", "Authority")),
)
_INDUSTRY_WEIGHTS: Final = tuple(x[1] for x in _INDUSTRIES)
_NAME_STEMS: Final = (
    "Nord",
    "Alpen",
    "Rhein",
    "Baltic",
    "Atlas",
    "Vektor",
    "Helix",
    "Kronos",
    "Polar",
    "Delta",
    "Falk",
    "Merid",
    "Orion",
    "Sigma",
    "Tauern",
    "Vesta",
    "Zenit",
    "Aurora",
    "Borea",
    "Cobalt",
    "Dynamo",
    "Elbe",
    "Fjord",
    "Granit",
    "Hansa",
    "Isar",
    "Jura",
    "Kelvin",
    "Lumen",
    "Main",
    "Neckar",
    "Oder",
    "Pegas",
    "Quant",
    "Ruhr",
    "Saale",
    "Titan",
    "Ultra",
    "Volta",
    "Weser",
    "Xeno",
    "Ypsilon",
    "Zeta",
    "Brenner",
    "Castor",
)

# (weight, title, is_student)
_TITLES: Final = (
    (3, "Intern", True),
    (3, "Student", True),
    (2, "Working Student", True),
    (1, "Master Student", True),
    (1, "PhD Candidate", True),
    (12, "Test Engineer", False),
    (10, "Engineer", False),
    (6, "Design Engineer", False),
    (5, "Validation Engineer", False),
    (4, "Measurement Engineer", False),
    (4, "Research Engineer", False),
    (5, "Senior Test Engineer", False),
    (4, "Technician", False),
    (3, "Lab Manager", False),
    (5, "Project Manager", False),
    (4, "Manager", False),
    (4, "Head of Test", False),
    (2, "Head of R&D", False),
    (2, "Director of Engineering", False),
    (1, "VP Engineering", False),
    (1, "CTO", False),
    (1, "CEO", False),
    (1, "Managing Director", False),
    (3, "Purchasing", False),
    (2, "Buyer", False),
    (2, "Procurement Manager", False),
    (2, "Marketing Manager", False),
    (1, "IT Administrator", False),
    (1, "Professor", False),
    (2, "", False),
)
_TITLE_WEIGHTS: Final = tuple(t[0] for t in _TITLES)

_LIFECYCLE: Final = (
    ("subscriber", 25),
    ("lead", 50),
    ("marketingqualifiedlead", 12),
    ("salesqualifiedlead", 5),
    ("opportunity", 3),
    ("customer", 4),
    ("other", 1),
)
_LEAD_STATUS: Final = (
    ("", 40),
    ("NEW", 25),
    ("OPEN", 10),
    ("IN_PROGRESS", 5),
    ("ATTEMPTED_TO_CONTACT", 6),
    ("CONNECTED", 4),
    ("OPEN_DEAL", 2),
    ("UNQUALIFIED", 5),
    ("BAD_TIMING", 3),
)
_LEAD_SOURCE: Final = (
    ("Organic search", 25),
    ("Paid search", 12),
    ("Trade show", 12),
    ("Webinar", 10),
    ("Referral", 6),
    ("Direct traffic", 12),
    ("Social media", 8),
    ("Partner", 5),
    ("Purchased list", 4),
    ("Email marketing", 6),
)
_GARBAGE_EMPLOYEES: Final = (
    "50-100",
    "n/a",
    "unknown",
    "1,000+",
    "ca. 200",
    "approx 40",
    "10 to 50",
    "-",
    "?",
)

_GENERIC_PAGES: Final = (
    ("/", "Home"),
    ("/products/data-acquisition", "Data acquisition systems"),
    ("/products/strain-gauges", "Strain gauges"),
    ("/products/force-sensors", "Force sensors"),
    ("/products/software", "Measurement software"),
    ("/blog/strain-gauge-basics", "Blog: Strain gauge basics"),
    ("/blog/wheatstone-bridge", "Blog: The Wheatstone bridge explained"),
    ("/blog/fatigue-testing", "Blog: Fatigue testing in practice"),
    ("/applications/automotive", "Applications: Automotive"),
    ("/applications/wind-energy", "Applications: Wind energy"),
    ("/support/downloads", "Downloads"),
    ("/about", "About us"),
)
_HOT_PAGES: Final = (
    ("/pricing", "Pricing"),
    ("/demo", "Request a demo"),
    ("/contact-sales", "Contact sales"),
    ("/products/data-acquisition/quote", "Request a quote"),
    ("/case-studies/automotive-durability", "Case study: Automotive durability testing"),
)
_CAREERS_PAGES: Final = (
    ("/careers", "Careers"),
    ("/careers/working-student-test-engineering", "Working student: Test engineering"),
    ("/careers/graduate-programme", "Graduate programme"),
)
_FORMS: Final = {
    "newsletter": ("f1a2b3c4-0001", "Newsletter"),
    "whitepaper": ("f1a2b3c4-0002", "Whitepaper: Strain gauge measurement"),
    "whitepaper2": ("f1a2b3c4-0003", "Whitepaper: Durability testing of e-axles"),
    "contact_sales": ("f1a2b3c4-0004", "Contact sales"),
    "demo": ("f1a2b3c4-0005", "Request a demo"),
    "webinar": ("f1a2b3c4-0006", "Webinar registration"),
    "job": ("f1a2b3c4-0007", "Job application"),
}
_WEBINARS: Final = (
    "Webinar: Strain gauge measurement basics",
    "Webinar: Testing e-mobility drivetrains",
    "Webinar: Structural health monitoring of bridges",
)
_EVENTS: Final = (
    "Trade show: Sensor+Test Nuremberg",
    "Trade show: Automotive Testing Expo",
    "User conference 2025",
    "Hannover Messe booth visit",
)
_EMAIL_SUBJECTS: Final = (
    "Your copy of the whitepaper",
    "New: QuantumX data acquisition",
    "Invitation: measurement webinar",
    "Monthly newsletter",
    "Following up on your request",
    "Quote for your test bench",
    "Meeting next week?",
)
_MEETINGS: Final = ("Discovery call", "Product demo", "Technical deep dive", "Quote review", "Site visit")
_CALL_DISPOSITIONS: Final = (
    "Connected",
    "Left voicemail",
    "No answer",
    "Busy",
    "Wrong number",
    "Left live message",
)
_NOTES: Final = (
    "Asked about channel count",
    "Interested in a test bench upgrade",
    "Budget next quarter",
    "Met at the trade show",
    "Not the decision maker",
    "Forwarded to purchasing",
)

# the sales team: (first, last, team, timezone, country, active)
_REPS: Final = (
    ("Katrin", "Vogel", "DACH", "Europe/Berlin", "Germany", True),
    ("Markus", "Brandt", "DACH", "Europe/Berlin", "Germany", True),
    ("Julia", "Hofer", "DACH", "Europe/Berlin", "Austria", True),
    ("Thomas", "Keller", "DACH", "Europe/Berlin", "Switzerland", True),
    ("Jens", "Lorenz", "DACH", "Europe/Berlin", "Germany", False),
    ("Sara", "Lindberg", "Nordics", "Europe/Stockholm", "Sweden", True),
    ("Mikko", "Laine", "Nordics", "Europe/Stockholm", "Finland", True),
    ("Ole", "Haugen", "Nordics", "Europe/Stockholm", "Norway", True),
    ("Oliver", "Bennett", "UK&I", "Europe/London", "United Kingdom", True),
    ("Niamh", "Byrne", "UK&I", "Europe/London", "Ireland", True),
    ("Charlotte", "Hughes", "UK&I", "Europe/London", "United Kingdom", False),
    ("Daan", "Visser", "Benelux", "Europe/Amsterdam", "Netherlands", True),
    ("Elise", "Peeters", "Benelux", "Europe/Amsterdam", "Belgium", True),
    ("Rachel", "Morgan", "Rest of World", "America/New_York", "United States", True),
    ("Kenji", "Watanabe", "Rest of World", "America/New_York", "Japan", True),
    ("Lucas", "Moreau", "Rest of World", "America/New_York", "France", True),
    ("Paolo", "Conti", "Rest of World", "America/New_York", "Italy", False),
)


_ASCII_TABLE: Final = str.maketrans(
    {
        "ä": "ae",
        "ö": "oe",
        "ü": "ue",
        "ß": "ss",
        "Ä": "Ae",
        "Ö": "Oe",
        "Ü": "Ue",
        "å": "a",
        "ø": "o",
        "æ": "ae",
        "é": "e",
        "è": "e",
        "í": "i",
        "á": "a",
        "ó": "o",
        "ú": "u",
        "ñ": "n",
        "ç": "c",
        "à": "a",
        " ": "",
        "'": "",
        "-": "",
        "&": "",
        ".": "",
        ",": "",
        "/": "",
        "+": "",
    }
)


def _ascii(s: str) -> str:
    return s.translate(_ASCII_TABLE).lower()


def _cum(weights: tuple[float, ...]) -> list[float]:
    return list(itertools.accumulate(weights))


T = TypeVar("T")


def today_midnight_utc() -> float:
    now = dt.datetime.now(dt.UTC)
    return dt.datetime(now.year, now.month, now.day, tzinfo=dt.UTC).timestamp()


def _build_reps() -> tuple[SandboxRep, ...]:
    reps = []
    for k, (first, last, team, tz, country, active) in enumerate(_REPS):
        reps.append(
            SandboxRep(
                index=k,
                id=str(70_000_001 + k),
                user_id=9_100_001 + k,
                email=f"{_ascii(first)}.{_ascii(last)}@sandbox-corp.example",
                first_name=first,
                last_name=last,
                team=team,
                team_id=str(120_001 + TEAMS.index(team)),
                timezone=tz,
                country=country,
                active=active,
            )
        )
    return tuple(reps)


_REP_LIST: Final = _build_reps()
_COUNTRY_CUM: Final = _cum(_COUNTRY_WEIGHTS)
_INDUSTRY_CUM: Final = _cum(_INDUSTRY_WEIGHTS)
_TITLE_CUM: Final = _cum(_TITLE_WEIGHTS)
_COUNTRY_BY_NAME: Final = {c[0]: c for c in _COUNTRIES}

# ---- precomputed for the generators below (pure functions of the vocabularies above)

_COUNTRY_TOTAL: Final = _COUNTRY_CUM[-1]
_COUNTRY_HI: Final = len(_COUNTRY_CUM) - 1
_INDUSTRY_TOTAL: Final = _INDUSTRY_CUM[-1]
_INDUSTRY_HI: Final = len(_INDUSTRY_CUM) - 1
_TITLE_TOTAL: Final = _TITLE_CUM[-1]
_TITLE_HI: Final = len(_TITLE_CUM) - 1
_N_STEMS: Final = len(_NAME_STEMS)
_LIFECYCLE_NAMES: Final = tuple(w[0] for w in _LIFECYCLE)
_LIFECYCLE_CUM: Final = _cum(tuple(w[1] for w in _LIFECYCLE))
_LIFECYCLE_TOTAL: Final = _LIFECYCLE_CUM[-1]
_LEAD_STATUS_NAMES: Final = tuple(w[0] for w in _LEAD_STATUS)
_LEAD_STATUS_CUM: Final = _cum(tuple(w[1] for w in _LEAD_STATUS))
_LEAD_STATUS_TOTAL: Final = _LEAD_STATUS_CUM[-1]
_LEAD_SOURCE_NAMES: Final = tuple(w[0] for w in _LEAD_SOURCE)
_LEAD_SOURCE_CUM: Final = _cum(tuple(w[1] for w in _LEAD_SOURCE))
_LEAD_SOURCE_TOTAL: Final = _LEAD_SOURCE_CUM[-1]
_RESEARCH_TITLES: Final = (("Student", True), ("PhD Candidate", True), ("Research Engineer", False))
# country -> (phone prefix, first names, last names)
_PEOPLE_BY_COUNTRY: Final = {c[0]: (c[2], c[5][0], c[5][1]) for c in _COUNTRIES}
# every name, as it appears in an e-mail address
_ASCII_NAMES: Final = {name: _ascii(name) for c in _COUNTRIES for names in c[5] for name in names}
# country -> (rep indexes of its region's team, the active ones)
_OWNER_POOLS: Final = {
    c[0]: (
        tuple(rep.index for rep in _REP_LIST if rep.team == region_of(c[0])),
        tuple(rep.index for rep in _REP_LIST if rep.team == region_of(c[0]) and rep.active),
    )
    for c in _COUNTRIES
}
_HOT_FORM_KEYS: Final = ("whitepaper", "whitepaper2", "contact_sales", "demo")
_COLD_FORM_KEYS: Final = ("newsletter", "whitepaper", "whitepaper2", "webinar")
# Activity attributes come from small vocabularies, so every possible `attrs` mapping is built
# once here and shared by all activities that have it (typed Mapping: read-only). That saves
# an allocation per activity and, more, the cyclic GC's work on a cache full of small dicts.
_CAREERS_VIEWS: Final = tuple({"url": url, "title": title} for url, title in _CAREERS_PAGES)
_HOT_VIEWS: Final = tuple({"url": url, "title": title} for url, title in _HOT_PAGES)
_GENERIC_VIEWS: Final = tuple({"url": url, "title": title} for url, title in _GENERIC_PAGES)
_SUBJECT_ATTRS: Final = tuple({"subject": s} for s in _EMAIL_SUBJECTS)
_RE_SUBJECT_ATTRS: Final = tuple({"subject": "Re: " + s} for s in _EMAIL_SUBJECTS)
_CLICK_ATTRS: Final = tuple(
    tuple({"url": url, "subject": s} for s in _EMAIL_SUBJECTS) for url, _ in _GENERIC_PAGES + _HOT_PAGES
)
_FORM_ATTRS: Final = {key: {"form_id": form_id, "form_title": title} for key, (form_id, title) in _FORMS.items()}
_WEBINAR_ATTRS: Final = tuple({"campaign": c} for c in _WEBINARS)
_EVENT_ATTRS: Final = tuple({"campaign": c} for c in _EVENTS)
_MEETING_ATTRS: Final = tuple({"title": t} for t in _MEETINGS)
_CALL_ATTRS: Final = tuple({"disposition": d} for d in _CALL_DISPOSITIONS)
_NOTE_ATTRS: Final = tuple({"body": b} for b in _NOTES)
_NV_MAGICCONST: Final = 4 * math.exp(-0.5) / math.sqrt(2.0)  # random.NV_MAGICCONST, the same float
_DOMAIN_STEMS: dict[str, str] = {}  # stem + word -> its ascii form (a few thousand at most)
_by_ts: Final = operator.itemgetter(0)

# Salesforce types: which people are Leads. A separate stream from the person's own, in
# blocks of _TYPE_BLOCK people: one seeded draw of random bytes per block, each byte < 179
# (179/256 = 69.9 %) a Lead. `is_lead(i)` is then a list and a bytes lookup (~0.2 µs), and
# `person(i).sf_type` is read from it, so the two agree by construction.
_TYPE_BLOCK_BITS: Final = 12
_TYPE_BLOCK: Final = 1 << _TYPE_BLOCK_BITS
_TYPE_MASK: Final = _TYPE_BLOCK - 1
_LEAD_TABLE: Final = bytes(1 if v < 179 else 0 for v in range(256))


def _new_slotted(cls: type[T]) -> Callable[..., T]:
    """A positional constructor for a frozen slotted dataclass, ~4x cheaper than its __init__.

    The generated __init__ sets each field through object.__setattr__ (the frozen guard),
    which is most of the cost of building a Person. Instead the fields are stored on an
    instance of a plain class with the very same __slots__ (so the same memory layout), whose
    __class__ is then set to `cls`: the result is an ordinary, equal, frozen `cls` instance.
    Checked once here; where the interpreter refuses, the dataclass itself is the constructor."""
    names = tuple(f.name for f in fields(cls))  # type: ignore[arg-type]
    if getattr(cls, "__slots__", None) != names:
        return cls
    shadow = type(f"_{cls.__name__}Builder", (), {"__slots__": names})
    args = ", ".join(names)
    body = "".join(f"    o.{name} = {name}\n" for name in names)
    scope: dict[str, Any] = {"_shadow": shadow, "_cls": cls}
    exec(f"def make({args}):\n    o = _shadow()\n{body}    o.__class__ = _cls\n    return o\n", scope)  # noqa: S102 - the source is built from the dataclass's own field names
    make: Callable[..., T] = scope["make"]
    try:
        sample = tuple(range(len(names)))
        ok = make(*sample) == cls(*sample) and type(make(*sample)) is cls
    except TypeError:
        ok = False
    return make if ok else cls


_make_person_record: Final = _new_slotted(Person)
_make_activity_record: Final = _new_slotted(SandboxActivity)


class _Lru(Generic[K, V]):
    def __init__(self, size: int) -> None:
        self.size = size
        self.items: OrderedDict[K, V] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: K) -> V | None:
        # No lock: each OrderedDict call is atomic under the GIL (int keys), and a key that
        # put() evicts between the two calls is simply not moved.
        value = self.items.get(key)
        if value is not None:
            try:  # noqa: SIM105 - contextlib.suppress costs more than the lookup
                self.items.move_to_end(key)
            except KeyError:
                pass
        return value

    def put(self, key: K, value: V) -> None:
        with self.lock:
            self.items[key] = value
            if len(self.items) > self.size:
                self.items.popitem(last=False)


# --------------------------------------------------------------------------- the hidden truth
#
# Outcomes (issue 14) are drawn from a propensity that is deliberately NOT the shipped
# mappings/scoring.yaml: it weighs practitioners and buyers over titles with "chief" in them,
# mid-size automotive/aerospace makers over "large company" and research institutes, referrals
# and trade shows (the lead source the shipped model ignores) over purchased lists, and it leaves
# meetings and calls out (both won and lost deals had them). Tests read it from
# `Person.propensity` / `Person.outcome` / `Person.outcome_ms` (or `hidden_propensity`).

HIDDEN_BASE: Final = -2.2
HIDDEN_INTENT: Final = 2.5  # per unit of intent above HIDDEN_INTENT_CENTRE
HIDDEN_INTENT_CENTRE: Final = 0.2
HIDDEN_INDUSTRY: Final = {
    "automotive": 0.9, "aerospace": 0.7, "energy": 0.3, "rail": 0.4, "industrial manufacturing": 0.2,
    "electronics": 0.1, "civil engineering": 0.0, "medical devices": 0.2, "research/university": -0.9,
    "software": -0.4, "retail": -1.2, "consulting": -0.3, "government": -0.6,
}  # fmt: skip
HIDDEN_TITLE_WORDS: Final = (  # (word in the job title, log-odds), the first match counts
    ("student", -2.5), ("intern", -2.5), ("phd", -1.5), ("professor", -0.8),
    ("head of test", 1.0), ("test engineer", 0.9), ("validation", 0.8), ("measurement", 0.8), ("lab manager", 0.9),
    ("purchasing", 0.8), ("buyer", 0.8), ("procurement", 0.9),
    ("ceo", -0.4), ("managing director", -0.3), ("cto", 0.0), ("vp", 0.2), ("director", 0.3),
    ("marketing", -0.8), ("it administrator", -0.6),
)  # fmt: skip
HIDDEN_SOURCE: Final = {
    "Referral": 1.0, "Trade show": 0.7, "Webinar": 0.4, "Partner": 0.3, "Paid search": -0.1,
    "Purchased list": -1.3, "Social media": -0.4, "Email marketing": -0.2,
}  # fmt: skip
HIDDEN_REGION: Final = {"DACH": 0.3, "Nordics": 0.5, "UK&I": 0.0, "Benelux": 0.2, "Rest of World": -0.5}
HIDDEN_FREE_MAIL: Final = -0.4
# Who reaches a decision (won or lost) at all: RESOLVED_BASE + RESOLVED_PER_INTENT * intent.
RESOLVED_BASE: Final = 0.22
RESOLVED_PER_INTENT: Final = 0.6
OUTCOME_NOISE: Final = 0.7  # standard deviation of the noise on the log-odds
OUTCOME_DAYS: Final = (2.0, 120.0)  # outcomes happened this many days before the anchor
LOST_DATED_SHARE: Final = 0.6  # lost with a closed-lost deal / opportunity (dated); the others only by a status
STAGE_ORDER: Final = (
    "subscriber", "lead", "marketingqualifiedlead", "salesqualifiedlead", "opportunity", "customer", "evangelist",
)  # fmt: skip


def _logit(p: float) -> float:
    p = min(max(p, 1e-9), 1 - 1e-9)
    return math.log(p / (1 - p))


def hidden_propensity(
    industry: str, title: str, employees: int | str, country: str, lead_source: str, free_mail: bool, intent: float
) -> float:
    """P(won | a decision was reached) under the hidden model: the truth tests compare against."""
    x = HIDDEN_BASE + HIDDEN_INTENT * (intent - HIDDEN_INTENT_CENTRE)
    x += HIDDEN_INDUSTRY.get(industry, 0.0)
    low = title.lower()
    for word, w in HIDDEN_TITLE_WORDS:
        if word in low:
            x += w
            break
    if isinstance(employees, int):  # mid-size makers buy; the very large and the very small less
        x += 0.6 if 50 <= employees < 1000 else (-0.9 if employees < 10 else -0.1)
    x += HIDDEN_SOURCE.get(lead_source, 0.0)
    x += HIDDEN_REGION[region_of(country)]
    if free_mail:
        x += HIDDEN_FREE_MAIL
    return 1.0 / (1.0 + math.exp(-x))


def _recorded_stage(stage: str, lead_status: str, outcome: str | None, dated: bool) -> tuple[str, str]:
    """The lifecycle stage and lead status the CRM shows, consistent with the outcome."""
    if outcome == "won":
        return "customer", "CONNECTED"
    if outcome == "lost":
        if dated:  # a closed-lost deal: the contact had reached the opportunity stage
            return "opportunity", "OPEN_DEAL" if lead_status == "OPEN_DEAL" else "CONNECTED"
        capped = stage if stage in ("subscriber", "lead", "marketingqualifiedlead", "salesqualifiedlead") else "lead"
        return capped, "UNQUALIFIED"
    # still open: nobody is a customer yet, and nobody is marked unqualified
    return ("opportunity" if stage == "customer" else stage), ("OPEN" if lead_status == "UNQUALIFIED" else lead_status)


def lifecycle_dates(p: Person) -> dict[str, int]:
    """stage -> epoch ms the person entered it (HubSpot's hs_lifecyclestage_<stage>_date), for every stage
    from the first one up to the current. A won person became a customer exactly at its outcome; the
    stages before are spread between creation and then. "other" has only its own date."""
    stage = p.lifecycle_stage
    if stage not in STAGE_ORDER:
        return {stage: p.created_ms}
    last = STAGE_ORDER.index(stage)
    first = 0 if stage == "subscriber" else 1
    reached = STAGE_ORDER[first : last + 1]
    if p.outcome == "won" and p.outcome_ms is not None:
        end = p.outcome_ms
    elif p.outcome_ms is not None:
        end = p.outcome_ms - DAY_MS
    else:
        end = max(p.created_ms, min(p.modified_ms, p.created_ms + 200 * DAY_MS))
    span = max(0, end - p.created_ms)
    k = len(reached)
    out = {}
    for j, name in enumerate(reached):
        out[name] = p.created_ms + (span * j) // max(1, k - 1) if k > 1 else end
    if p.outcome == "won" and p.outcome_ms is not None:
        out["customer"] = p.outcome_ms
    return out


PRE_OUTCOME_DAYS: Final = 90  # the activities before an outcome spread over at most this many days
ONBOARDING_DAYS: Final = 30  # a customer's onboarding activities fall within this many days after the outcome
_ONBOARDING_VIEWS: Final = (
    {"url": "/support/downloads", "title": "Downloads"},
    {"url": "/support", "title": "Support"},
)


def _outcome_activities(
    p: Person, r: _Random, anchor_ms: int
) -> tuple[list[tuple[str, Mapping[str, str]]], list[tuple[int, str, Mapping[str, str]]]]:
    """(activities added before the outcome, stamped activities after it) for a person with an outcome.

    Before: a sales process for everyone who reached a decision (meetings and calls, so they do not
    tell won from lost), and for buyers signals the shipped model ignores or barely counts (the
    automotive case study page, registering for the e-mobility webinar). After: a customer is
    onboarded in the following weeks (support pages, calls, notes, now and then a reply or a meeting:
    busy, not "hot" again, so the demo's routing is not flooded with customers); a lost lead opens
    an e-mail now and then."""
    rnd = r.random
    before: list[tuple[str, Mapping[str, str]]] = []
    won = p.outcome == "won"
    if rnd() < 0.4:  # sales worked everyone who reached a decision, won or lost alike
        before.append(("meeting", _MEETING_ATTRS[int(rnd() * 5)]))
    if rnd() < 0.5:
        before.append(("call", _CALL_ATTRS[0]))
    if won:  # what buyers did that the shipped model ignores or barely counts
        for _ in range(int(rnd() * 3)):
            before.append(("page_view", _HOT_VIEWS[4]))  # the automotive durability case study
        if rnd() < 0.5:
            before.append(("webinar_registered", _WEBINAR_ATTRS[1]))  # e-mobility drivetrains
    assert p.outcome_ms is not None
    start = p.outcome_ms
    # onboarding happens in the weeks after the purchase (so a customer of months ago is not "hot" now)
    room = max(1, min(anchor_ms - 60_000 - start, ONBOARDING_DAYS * DAY_MS))
    after: list[tuple[int, str, Mapping[str, str]]] = []
    # mostly support pages, calls and notes: a customer is busy, not "hot" again (a kick-off meeting now and then)
    count = 4 + int(rnd() * 7) if won else int(rnd() * 3)
    for _ in range(count):
        ts = start + 1 + int(rnd() * room)
        if not won:
            after.append((ts, "email_open", _SUBJECT_ATTRS[int(rnd() * 7)]))
            continue
        x = rnd()
        if x < 0.08:
            after.append((ts, "meeting", _MEETING_ATTRS[2 + int(rnd() * 3)]))
        elif x < 0.3:
            after.append((ts, "call", _CALL_ATTRS[0]))
        elif x < 0.4:
            after.append((ts, "email_reply", _RE_SUBJECT_ATTRS[int(rnd() * 7)]))
        elif x < 0.85:
            after.append((ts, "page_view", _ONBOARDING_VIEWS[int(rnd() * 2)]))
        else:
            after.append((ts, "note", _NOTE_ATTRS[int(rnd() * 6)]))
    return before, after


# --------------------------------------------------------------------------- population
#
# How the draws are made: each person, company and activity list has its own Mersenne
# Twister seeded from (seed, index), the C generator `_random.Random` (for an int seed the
# very same stream as `random.Random`, without the Python-level seeding wrapper). The
# library's randrange, choice-by-float, weighted choice, uniform and lognormvariate are
# written out inline with CPython 3.11's algorithms, so the values are those the plain
# `random.Random` calls produced, just without the per-call overhead. Keep the order of
# the draws when changing anything: every later value depends on it.


class Population:
    """n people from a seed; see the module docstring."""

    def __init__(self, n: int, seed: int, anchor: float | None = None, *, cache_size: int = 20_000) -> None:
        if n < 0:
            raise ValueError("a population cannot have a negative size")
        self.n = n
        self.seed = seed
        self.anchor = today_midnight_utc() if anchor is None else float(anchor)
        self.anchor_ms = int(self.anchor * 1000)
        self.n_companies = max(1, (n + 2) // 3)
        self._company_bits = self.n_companies.bit_length()
        self._modified_start_ms = self.anchor_ms - MODIFIED_SPAN_DAYS * DAY_MS
        self._people: _Lru[int, Person] = _Lru(cache_size)
        self._activities: _Lru[int, list[SandboxActivity]] = _Lru(cache_size // 4 or 1)
        self._companies: _Lru[int, Company] = _Lru(cache_size // 2 or 1)
        self._added: dict[int, list[SandboxActivity]] = {}  # activities added after start (webhooks' admin hook)
        self._added_lock = threading.Lock()
        self._lead_blocks: list[bytes | None] = [None] * ((n + _TYPE_BLOCK - 1) >> _TYPE_BLOCK_BITS)

    def __len__(self) -> int:
        return self.n

    # ---- time order

    def base_modified_ms(self, i: int) -> int:
        """Person i's modified time before any write; non-decreasing in i, below the anchor."""
        return self._modified_start_ms + (i * MODIFIED_SPAN_DAYS * DAY_MS) // max(self.n, 1)

    def first_modified_at_or_after(self, t_ms: int) -> int:
        """The smallest i with base_modified_ms(i) >= t_ms (n when there is none)."""
        return bisect.bisect_left(range(self.n), t_ms, key=self.base_modified_ms)

    def first_modified_after(self, t_ms: int) -> int:
        """The smallest i with base_modified_ms(i) > t_ms (n when there is none)."""
        return bisect.bisect_right(range(self.n), t_ms, key=self.base_modified_ms)

    # ---- Salesforce types

    def _lead_block(self, b: int) -> bytes:
        blk = self._lead_blocks[b]
        if blk is None:  # two threads may both compute it: the same bytes, either one is kept
            r = random.Random(f"sandbox-sf-type:{self.seed}:{b}")
            blk = r.getrandbits(_TYPE_BLOCK * 8).to_bytes(_TYPE_BLOCK, "little").translate(_LEAD_TABLE)
            self._lead_blocks[b] = blk
        return blk

    def is_lead(self, i: int) -> bool:
        """Whether person i is a Salesforce Lead (about 70 %) rather than a Contact.

        Cheap (no person is built: ~0.2 µs, plus ~40 µs once per block of 4096 people) and
        the source of `person(i).sf_type`, so the two always agree."""
        if not 0 <= i < self.n:
            raise IndexError(i)
        blk = self._lead_blocks[i >> _TYPE_BLOCK_BITS]
        if blk is None:
            blk = self._lead_block(i >> _TYPE_BLOCK_BITS)
        return blk[i & _TYPE_MASK] == 1

    def sf_type(self, i: int) -> str:
        """`person(i).sf_type` without building the person: "Lead" or "Contact"."""
        return "Lead" if self.is_lead(i) else "Contact"

    # ---- companies and people

    def company(self, c: int) -> Company:
        if not 0 <= c < self.n_companies:
            raise IndexError(c)
        cached = self._companies.get(c)
        if cached is not None:
            return cached
        company = self._make_company(c)
        self._companies.put(c, company)
        return company

    def _make_company(self, c: int) -> Company:
        rnd = _Random(self.seed * 2_000_029 + c + 7_777_777_777).random
        country, _, _, suffixes, places, _ = _COUNTRIES[
            bisect.bisect(_COUNTRY_CUM, rnd() * _COUNTRY_TOTAL, 0, _COUNTRY_HI)
        ]
        industry, _, words = _INDUSTRIES[bisect.bisect(_INDUSTRY_CUM, rnd() * _INDUSTRY_TOTAL, 0, _INDUSTRY_HI)]
        stem = _NAME_STEMS[int(rnd() * _N_STEMS)]
        word = words[int(rnd() * len(words))]
        if industry == "research/university":
            name = f"{stem} {word}"
        else:
            name = f"{stem} {word} {suffixes[int(rnd() * len(suffixes))]}"
        # employees: lognormvariate(5.0, 1.6), i.e. exp(normalvariate(5.0, 1.6)) (Kinderman-Monahan)
        while True:
            u1 = rnd()
            u2 = 1.0 - rnd()
            z = _NV_MAGICCONST * (u1 - 0.5) / u2
            if z * z / 4.0 <= -math.log(u2):
                break
        employees = max(1, int(math.exp(5.0 + z * 1.6)))
        # revenue: uniform(90_000, 260_000) per employee, mostly
        revenue = None if rnd() < 0.12 else int(employees * (90_000 + 170_000 * rnd()) // 1000 * 1000)
        state, city = places[int(rnd() * len(places))]
        key = stem + word
        domain_stem = _DOMAIN_STEMS.get(key)
        if domain_stem is None:
            domain_stem = _DOMAIN_STEMS[key] = _ascii(key)
        return Company(c, name, f"{domain_stem}{c}.example", industry, employees, revenue, country, state, city)

    def person(self, i: int) -> Person:
        if not 0 <= i < self.n:
            raise IndexError(i)
        cached = self._people.get(i)
        if cached is not None:
            return cached
        person = self._make_person(i)
        self._people.put(i, person)
        return person

    def _make_person(self, i: int) -> Person:
        r = _Random(self.seed * 1_000_003 + i)
        rnd = r.random
        bits = r.getrandbits
        # most people are lukewarm at best; about 4 % are hot (>= HOT_INTENT)
        x = rnd()
        intent = HOT_INTENT + (1 - HOT_INTENT) * (x - 0.96) / 0.04 if x >= 0.96 else (x / 0.96) ** 2 * HOT_INTENT
        rnd()  # once the sf_type draw (now `is_lead`); still drawn so that every later value stays the same
        owned = rnd() < 0.10
        owner_pick = rnd()
        # the company: randrange(n_companies)
        n_companies, k = self.n_companies, self._company_bits
        c = bits(k)
        while c >= n_companies:
            c = bits(k)
        company = self.company(c)
        country = company.country
        phone_prefix, firsts, lasts = _PEOPLE_BY_COUNTRY[country]
        first = firsts[int(rnd() * len(firsts))]
        last = lasts[int(rnd() * len(lasts))]
        _, title, is_student = _TITLES[bisect.bisect(_TITLE_CUM, rnd() * _TITLE_TOTAL, 0, _TITLE_HI)]
        if company.industry == "research/university" and rnd() < 0.3:
            title, is_student = _RESEARCH_TITLES[int(rnd() * 3)]
        free_mail = rnd() < (0.5 if is_student else 0.12)
        local = f"{_ASCII_NAMES[first]}.{_ASCII_NAMES[last]}"
        if free_mail:
            k = bits(7)  # randrange(1, 99)
            while k >= 98:
                k = bits(7)
            email = f"{local}{1 + k}@{FREE_MAIL_DOMAINS[int(rnd() * 5)]}"
        else:
            email = f"{local}.{i}@{company.domain}"  # the index keeps emails unique
        garbage = rnd() < 0.03
        employees: int | str = _GARBAGE_EMPLOYEES[int(rnd() * 9)] if garbage else company.employees
        modified_ms = self._modified_start_ms + (i * MODIFIED_SPAN_DAYS * DAY_MS) // max(self.n, 1)
        created_ms = modified_ms - int(rnd() ** 1.5 * 3 * 365 * DAY_MS)
        owner: int | None = None
        if owned:
            team, active = _OWNER_POOLS[country]
            pool = team if owner_pick < 0.1 else active
            owner = pool[int(owner_pick * 1000) % len(pool)]
        stage = _LIFECYCLE_NAMES[bisect.bisect(_LIFECYCLE_CUM, rnd() * _LIFECYCLE_TOTAL, 0, len(_LIFECYCLE_CUM) - 1)]
        if intent >= HOT_INTENT and stage == "subscriber":
            stage = "marketingqualifiedlead"
        area = bits(10)  # randrange(10, 999)
        while area >= 989:
            area = bits(10)
        line = bits(24)  # randrange(100000, 9999999)
        while line >= 9_899_999:
            line = bits(24)
        lead_status = _LEAD_STATUS_NAMES[
            bisect.bisect(_LEAD_STATUS_CUM, rnd() * _LEAD_STATUS_TOTAL, 0, len(_LEAD_STATUS_CUM) - 1)
        ]
        lead_source = _LEAD_SOURCE_NAMES[
            bisect.bisect(_LEAD_SOURCE_CUM, rnd() * _LEAD_SOURCE_TOTAL, 0, len(_LEAD_SOURCE_CUM) - 1)
        ]
        types = self._lead_blocks[i >> _TYPE_BLOCK_BITS] or self._lead_block(i >> _TYPE_BLOCK_BITS)
        # The hidden truth, from a stream of its own so that every value above stays as it was.
        propensity = hidden_propensity(company.industry, title, employees, country, lead_source, free_mail, intent)
        outcome, outcome_ms, outcome_dated = self._outcome(i, propensity, intent, created_ms)
        stage, lead_status = _recorded_stage(stage, lead_status, outcome, outcome_dated)
        return _make_person_record(
            i,
            first,
            last,
            email,
            title,
            company.name,
            company.index,
            company.industry,
            employees,
            company.annual_revenue,
            country,
            company.state,
            company.city,
            f"{phone_prefix} {10 + area} {100000 + line}",
            f"https://www.{company.domain}",
            stage,
            lead_status,
            lead_source,
            created_ms,
            modified_ms,
            intent,
            "Lead" if types[i & _TYPE_MASK] else "Contact",  # is_lead(i)
            owner,
            is_student,
            free_mail,
            propensity,
            outcome,
            outcome_ms,
            outcome_dated,
        )

    def _outcome(
        self, i: int, propensity: float, intent: float, created_ms: int
    ) -> tuple[str | None, int | None, bool]:
        """(outcome, when, whether a lost outcome is recorded with a date) for person i.

        Whether someone reached a decision at all grows with intent (sales works the engaged ones);
        won or lost is then a draw from the hidden propensity with noise on its log-odds, so no
        model can reach an AUC of 1."""
        r = _Random(self.seed * 5_000_011 + i + 31_337)
        rnd = r.random
        decided = rnd() < RESOLVED_BASE + RESOLVED_PER_INTENT * intent
        # noise: a Box-Muller normal draw (the C generator has no gauss)
        noise = OUTCOME_NOISE * math.sqrt(-2.0 * math.log(1.0 - rnd())) * math.cos(2.0 * math.pi * rnd())
        won = rnd() < 1.0 / (1.0 + math.exp(-(_logit(propensity) + noise)))
        days = OUTCOME_DAYS[0] + rnd() * (OUTCOME_DAYS[1] - OUTCOME_DAYS[0])
        dated = rnd() < LOST_DATED_SHARE
        at_ms = self.anchor_ms - int(days * DAY_MS)
        if not decided or at_ms < created_ms + DAY_MS:
            return None, None, False
        return ("won" if won else "lost"), at_ms, (True if won else dated)

    # ---- activities

    def activities(self, i: int) -> list[SandboxActivity]:
        """Person i's activities in the 180 days before the anchor, oldest first (shared: do not mutate)."""
        if not 0 <= i < self.n:
            raise IndexError(i)
        cached = self._activities.get(i)
        if cached is None:
            cached = self._make_activities(i)
            self._activities.put(i, cached)
        added = self._added.get(i)
        return [*cached, *added] if added else cached

    def add_activity(self, i: int, kind: str, ts_ms: int, attrs: Mapping[str, str]) -> SandboxActivity:
        """Person i did something new (POST /__sandbox__/activities); it gets the next activity id."""
        with self._added_lock:
            made = SandboxActivity(i * ACTIVITY_ID_STRIDE + len(self.activities(i)), i, kind, ts_ms, dict(attrs))
            self._added.setdefault(i, []).append(made)
            return made

    def _make_activities(self, i: int) -> list[SandboxActivity]:
        p = self.person(i)
        r = _Random(self.seed * 3_000_017 + i + 99_991)
        rnd = r.random
        bits = r.getrandbits
        intent = p.intent
        hot = intent >= HOT_INTENT
        # count: randrange(0, 5) / (22, 41) / (10, 31) / (5, 18)
        if rnd() < 0.05:
            low, width, k = 0, 5, 3
        elif hot:
            low, width, k = 22, 19, 5
        elif intent >= 0.3:
            low, width, k = 10, 21, 5
        else:
            low, width, k = 5, 13, 4
        v = bits(k)
        while v >= width:
            v = bits(k)
        count = low + v
        careers = rnd() < (0.6 if p.is_student else 0.07)
        bounces = rnd() < 0.06
        # Most of a real CRM is dormant: people who only receive (and now and then open)
        # marketing e-mail, with no website visit in the window.
        dormant = intent < DORMANT_BELOW_INTENT and not p.is_student and rnd() < DORMANT_SHARE
        if dormant:
            count = int(rnd() * 4)
            careers = False
        # buying signals grow steeply with intent: the middle of the population reads warm, not hot
        strong = intent * intent
        hot_pages = strong * intent * 0.8
        webinar_attend = 0.3 + intent * 0.6
        raw: list[tuple[str, Mapping[str, str]]] = []
        add = raw.append
        saw_careers = False
        for _ in range(count):
            x = 0.50 + rnd() * 0.26 if dormant else rnd()  # dormant: e-mail opens, clicks, bounces only
            if careers and x < 0.12:
                add(("page_view", _CAREERS_VIEWS[int(rnd() * 3)]))
                saw_careers = True
            elif x < 0.50:
                add(("page_view", _HOT_VIEWS[int(rnd() * 5)] if rnd() < hot_pages else _GENERIC_VIEWS[int(rnd() * 12)]))
            elif x < 0.64:
                add(("email_open", _SUBJECT_ATTRS[int(rnd() * 7)]))
            elif x < 0.72:
                add(("email_click", _CLICK_ATTRS[int(rnd() * 17)][int(rnd() * 7)]))  # the page, then the subject
            elif x < 0.76:
                add(("email_bounce" if bounces else "email_open", _SUBJECT_ATTRS[int(rnd() * 7)]))
            elif x < 0.83:
                if intent >= 0.6 and rnd() < 0.5:
                    key = _HOT_FORM_KEYS[int(rnd() * 4)]
                elif careers and rnd() < 0.5:
                    key = "job"
                else:
                    key = _COLD_FORM_KEYS[int(rnd() * 4)]
                add(("form_submission", _FORM_ATTRS[key]))
            elif x < 0.88:
                campaign = _WEBINAR_ATTRS[int(rnd() * 3)]
                add(("webinar_attended" if rnd() < webinar_attend else "webinar_registered", campaign))
            elif x < 0.90:
                add(("event_attended", _EVENT_ATTRS[int(rnd() * 4)]))
            elif x < 0.95:
                if rnd() < strong:
                    add(("email_reply", _RE_SUBJECT_ATTRS[int(rnd() * 7)]))
                else:
                    add(("email_open", _SUBJECT_ATTRS[int(rnd() * 7)]))
            elif x < 0.975:
                if rnd() < strong:
                    add(("meeting", _MEETING_ATTRS[int(rnd() * 5)]))
                else:
                    add(("call", _CALL_ATTRS[int(rnd() * 6)]))
            elif rnd() < 0.5:
                add(("call", _CALL_ATTRS[int(rnd() * 6)]))
            else:
                add(("note", _NOTE_ATTRS[int(rnd() * 6)]))
        if hot:  # the unmistakable signals
            add(("page_view", _HOT_VIEWS[int(rnd() * 2)]))
            add(("form_submission", _FORM_ATTRS["demo" if rnd() < 0.5 else "contact_sales"]))
        if careers and not saw_careers:  # only the careers branch above yields /careers pages
            add(("page_view", _CAREERS_VIEWS[int(rnd() * 3)]))
        latest = self.anchor_ms - 60_000
        span = ACTIVITY_WINDOW_DAYS * DAY_MS - 60_000
        skew = 1.0 + 2.5 * intent  # hot people were active recently
        after: list[tuple[int, str, Mapping[str, str]]] = []
        if p.outcome is not None and p.outcome_ms is not None:
            # The journey led up to the outcome: everything above happened before it, then life went on
            # (a customer is onboarded, a lost lead fades), so counting the future visibly leaks.
            extra, after = _outcome_activities(p, _Random(self.seed * 7_000_003 + i + 4_242), self.anchor_ms)
            raw += extra
            latest = p.outcome_ms - 60_000
            earliest = self.anchor_ms - (ACTIVITY_WINDOW_DAYS - 2) * DAY_MS
            span = max(DAY_MS, min(PRE_OUTCOME_DAYS * DAY_MS, latest - earliest))
        stamped = [(latest - int(rnd() ** skew * span), kind, a) for kind, a in raw]
        stamped += after
        stamped.sort(key=_by_ts)  # stable: equal times keep their draw order
        first_id = i * ACTIVITY_ID_STRIDE
        make = _make_activity_record
        return [make(first_id + j, i, kind, ts, a) for j, (ts, kind, a) in enumerate(stamped)]

    # ---- reps

    @staticmethod
    def reps() -> list[SandboxRep]:
        return list(_REP_LIST)


# --------------------------------------------------------------------------- store


@dataclass(frozen=True, slots=True)
class BaseIndex:
    """How the untouched base records of one object type are ordered by modified time.

    Keys 0 <= key < n are base records whose modified time is `modified_ms(key)`,
    non-decreasing in key (for people: `BaseIndex.of(population)`)."""

    n: int
    modified_ms: Callable[[int], int]

    @staticmethod
    def of(population: Population) -> BaseIndex:
        return BaseIndex(population.n, population.base_modified_ms)

    def first_at_or_after(self, t_ms: int) -> int:
        return bisect.bisect_left(range(self.n), t_ms, key=self.modified_ms)

    def first_after(self, t_ms: int) -> int:
        return bisect.bisect_right(range(self.n), t_ms, key=self.modified_ms)


class _Table:
    __slots__ = ("archived", "created", "modified", "next_key", "order", "values")

    def __init__(self) -> None:
        self.values: dict[int, dict[str, Any]] = {}
        self.modified: dict[int, int] = {}
        self.order: list[tuple[int, int]] = []  # (modified_ms, key), sorted
        self.created: dict[int, int] = {}  # key -> created ms
        self.archived: set[int] = set()
        self.next_key = 0


class Store:
    """The written overlay of one CRM server; see the module docstring."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._tables: dict[str, _Table] = {}
        self._last_ms = 0
        self.lock = threading.RLock()

    def _table(self, obj: str) -> _Table:
        table = self._tables.get(obj)
        if table is None:
            table = self._tables[obj] = _Table()
        return table

    def now_ms(self) -> int:
        """The clock in epoch ms, never going backwards."""
        with self.lock:
            self._last_ms = max(self._last_ms, int(self._clock() * 1000))
            return self._last_ms

    def values(self, obj: str, key: int) -> Mapping[str, Any]:
        """The values written to one record (empty when none); read-only."""
        with self.lock:
            table = self._tables.get(obj)
            if table is None:
                return {}
            return dict(table.values.get(key, {}))

    def get(self, obj: str, key: int, name: str, default: Any = None) -> Any:
        with self.lock:
            table = self._tables.get(obj)
            if table is None:
                return default
            return table.values.get(key, {}).get(name, default)

    def modified_ms(self, obj: str, key: int) -> int | None:
        """When the record was last written or created (None: never)."""
        with self.lock:
            table = self._tables.get(obj)
            return None if table is None else table.modified.get(key)

    def created_ms(self, obj: str, key: int) -> int | None:
        with self.lock:
            table = self._tables.get(obj)
            return None if table is None else table.created.get(key)

    def _touch(self, table: _Table, key: int, at_ms: int) -> None:
        old = table.modified.get(key)
        if old is not None:
            pos = bisect.bisect_left(table.order, (old, key))
            if pos < len(table.order) and table.order[pos] == (old, key):
                del table.order[pos]
        table.modified[key] = at_ms
        bisect.insort(table.order, (at_ms, key))

    def write(self, obj: str, key: int, values: Mapping[str, Any], *, at_ms: int | None = None) -> int:
        """Merge `values` into the record and move its modified time; returns that time."""
        with self.lock:
            table = self._table(obj)
            at = self.now_ms() if at_ms is None else at_ms
            table.values.setdefault(key, {}).update(values)
            self._touch(table, key, at)
            return at

    def create(self, obj: str, values: Mapping[str, Any], *, first_key: int = 0, at_ms: int | None = None) -> int:
        """A new record with the next free key >= first_key; returns the key."""
        with self.lock:
            table = self._table(obj)
            key = max(table.next_key, first_key)
            table.next_key = key + 1
            at = self.now_ms() if at_ms is None else at_ms
            table.values[key] = dict(values)
            table.created[key] = at
            self._touch(table, key, at)
            return key

    def archive(self, obj: str, key: int) -> int:
        with self.lock:
            table = self._table(obj)
            table.archived.add(key)
            at = self.now_ms()
            self._touch(table, key, at)
            return at

    def is_archived(self, obj: str, key: int) -> bool:
        with self.lock:
            table = self._tables.get(obj)
            return table is not None and key in table.archived

    def created_keys(self, obj: str) -> list[int]:
        """Keys of records created through the API, in creation order."""
        with self.lock:
            table = self._tables.get(obj)
            return [] if table is None else sorted(table.created)

    def written_keys(self, obj: str) -> list[int]:
        with self.lock:
            table = self._tables.get(obj)
            return [] if table is None else sorted(table.modified)

    def iter_modified(
        self,
        obj: str,
        since_ms: int | None = None,
        until_ms: int | None = None,
        *,
        base: BaseIndex | None = None,
        descending: bool = False,
    ) -> Iterator[tuple[int, int]]:
        """(modified_ms, key) of every record with since_ms <= modified <= until_ms (both inclusive,
        None for open), ordered by (modified_ms, key), ascending or descending.

        Base records come from `base` (skipping those the overlay has rewritten); the overlay
        is snapshotted when iteration starts. Archived records are included: filter them if needed."""
        lo = since_ms if since_ms is not None else -(2**62)
        hi = until_ms if until_ms is not None else 2**62
        with self.lock:
            table = self._tables.get(obj)
            if table is None:
                overlay: list[tuple[int, int]] = []
                rewritten: frozenset[int] | dict[int, int] = frozenset()
            else:
                a = bisect.bisect_left(table.order, (lo, -(2**62)))
                b = bisect.bisect_right(table.order, (hi, 2**62))
                overlay = table.order[a:b]
                rewritten = dict(table.modified)
        if base is None or base.n == 0:
            yield from (reversed(overlay) if descending else overlay)
            return
        start = base.first_at_or_after(lo)
        stop = base.first_after(hi)

        def base_iter() -> Iterator[tuple[int, int]]:
            keys = range(stop - 1, start - 1, -1) if descending else range(start, stop)
            for k in keys:
                if k not in rewritten:
                    yield base.modified_ms(k), k

        if descending:
            yield from heapq.merge(base_iter(), reversed(overlay), reverse=True)
        else:
            yield from heapq.merge(base_iter(), overlay)

    def count_modified(
        self,
        obj: str,
        since_ms: int | None = None,
        until_ms: int | None = None,
        *,
        base: BaseIndex | None = None,
    ) -> int:
        """How many records iter_modified would yield, without iterating the base."""
        lo = since_ms if since_ms is not None else -(2**62)
        hi = until_ms if until_ms is not None else 2**62
        with self.lock:
            table = self._tables.get(obj)
            overlay_count = 0
            shadowed = 0
            if table is not None:
                a = bisect.bisect_left(table.order, (lo, -(2**62)))
                b = bisect.bisect_right(table.order, (hi, 2**62))
                overlay_count = b - a
                if base is not None:
                    for k in table.modified:
                        if k < base.n and lo <= base.modified_ms(k) <= hi:
                            shadowed += 1
        base_count = 0 if base is None else max(0, base.first_after(hi) - base.first_at_or_after(lo))
        return base_count - shadowed + overlay_count
