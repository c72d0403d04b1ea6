"""Rewrites of an unchanged portal: how many leads a daily sync writes again when nothing happened.

Scores the benchmark population (bench/engine.py's leads and activities) with a model once a
day for `--days` simulated days, with no new activity, and counts per day the leads whose
written values change (what the sync compares before writing: connector.domain.CHANGE_FIELDS).
A change is put down to its cause: the score (score, fit, engagement, band or grade moved: decay
at work) or the reasons alone (their evidence changed while the totals did not). A rewrite is what
the sync decides (connector.engine.must_write: reasons whose only change is a decayed rule's points
wait for the next change of the score); `--naive` counts any change of the text instead.

    python bench/rewrites.py                       # 20,000 leads, 14 days, the shipped model
    python bench/rewrites.py --no-decay            # the same model with decay turned off
    python bench/rewrites.py --leads 5000 --json

Pure engine, no CRM: what the sync would write, not the time it takes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from engine import NOW, pages  # noqa: E402  # bench/engine.py: the benchmark's own population

from connector.domain import CHANGE_FIELDS  # noqa: E402
from connector.engine import ScoringModel, load_scoring, model_version  # noqa: E402

try:
    from connector.engine import must_write
except ImportError:  # an engine from before must_write: every change of the text is a write
    def must_write(values: dict[str, str], written: dict[str, str]) -> bool:  # type: ignore[misc]
        return any(values[f] != written.get(f) for f in CHANGE_FIELDS)

DAY = 86400.0
SCORE_FIELDS = ("score", "fit", "engagement", "band", "grade")


def without_decay(model: ScoringModel) -> ScoringModel:
    rules = [r.model_copy(update={"decay": False, "half_life_days": None}) for r in model.spec.engagement]
    spec = model.spec.model_copy(update={"engagement": rules})
    return ScoringModel(spec, model_version(spec))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--leads", type=int, default=20_000)
    ap.add_argument("--days", type=int, default=14)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--model", type=Path, default=ROOT / "mappings" / "scoring.yaml")
    ap.add_argument("--no-decay", action="store_true", help="turn decay off in every engagement rule")
    ap.add_argument("--naive", action="store_true", help="count any change of the written text as a rewrite")
    ap.add_argument("--json", action="store_true", help="print only the JSON line")
    args = ap.parse_args()

    model = load_scoring(args.model)
    if args.no_decay:
        model = without_decay(model)
    leads = [lead for page in pages(args.leads, args.seed, 0) for lead in page]
    written = []
    for profile, activities in leads:
        values = model.score(profile, activities, NOW).write_values(NOW)
        written.append({f: values[f] for f in CHANGE_FIELDS})
    per_day = []
    for day in range(1, args.days + 1):
        now = NOW + day * DAY
        rewritten = score_moved = reasons_only = 0
        for i, (profile, activities) in enumerate(leads):
            values = model.score(profile, activities, now).write_values(now)
            fresh = {f: values[f] for f in CHANGE_FIELDS}
            if (fresh != written[i]) if args.naive else must_write(fresh, written[i]):
                rewritten += 1
                if any(fresh[f] != written[i][f] for f in SCORE_FIELDS):
                    score_moved += 1
                else:
                    reasons_only += 1
                written[i] = fresh
        per_day.append({"day": day + 1, "rewritten": rewritten, "score_moved": score_moved,
                        "reasons_only": reasons_only})
        if not args.json:
            print(f"day {day + 1:3d}  rewritten {rewritten:6,} ({rewritten / len(leads):6.1%})  "
                  f"score moved {score_moved:6,}  reasons only {reasons_only:6,}")
    total = sum(d["rewritten"] for d in per_day)
    figures = {
        "leads": len(leads),
        "days": args.days,
        "decay": not args.no_decay,
        "naive": args.naive,
        "model": model.version,
        "rewrites_per_day": round(total / args.days, 1),
        "rewrite_share_per_day": round(total / args.days / len(leads), 4),
        "score_moved_per_day": round(sum(d["score_moved"] for d in per_day) / args.days, 1),
        "reasons_only_per_day": round(sum(d["reasons_only"] for d in per_day) / args.days, 1),
    }
    if not args.json:
        print(f"{len(leads):,} leads, no new activity, days 2..{args.days + 1}: "
              f"{figures['rewrites_per_day']:,} rewrites a day ({figures['rewrite_share_per_day']:.1%}), "
              f"{figures['score_moved_per_day']:,} with a moved score, {figures['reasons_only_per_day']:,} for the "
              "reasons alone")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
