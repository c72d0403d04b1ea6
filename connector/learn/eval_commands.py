"""The bodies of `leadscore backtest`, `suggest` and `preview`, and the weekly backtest.

They read from the CRM (through connector.learn.dataset and the adapters) and never write
to it; `suggest` writes the file it is given, `backtest --html` its report, the weekly
backtest its figures to Redis (connector.learn.history).
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from connector.errors import LeadscoreError, UserError
from connector.learn.evaluate import BANDS, GRADES, Backtest, backtest, rule_matrix

if TYPE_CHECKING:
    from connector.bootstrap import Runtime
    from connector.domain import CrmName
    from connector.engine import ScoringModel
    from connector.learn.dataset import Dataset
    from connector.learn.evaluate import RuleMatrix

DEFAULT_TARGET = "top:10%"


def parse_since(text: str | None) -> float | None:
    """--since: a date (YYYY-MM-DD, midnight UTC) or a date and time with its zone."""
    if text is None:
        return None
    value = text.strip()
    try:
        if len(value) == 10:
            return dt.datetime.fromisoformat(value).replace(tzinfo=dt.UTC).timestamp()
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise UserError(f"--since must be a date like 2026-06-01 or a date and time with its zone, not {text!r}.")
    return moment.timestamp()


def one_crm(rt: Runtime, choice: str | None) -> CrmName:
    """The CRM a learning command reads: --crm, or the only one configured."""
    configured = rt.configured_crms
    if choice is not None:
        if choice not in configured:
            if choice == "hubspot":
                rt.settings.require_hubspot()
            else:
                rt.settings.require_salesforce()
        return choice  # type: ignore[return-value]
    if not configured:
        raise UserError(
            "no CRM is configured: set HUBSPOT_ACCESS_TOKEN, or SALESFORCE_INSTANCE_URL and SALESFORCE_ACCESS_TOKEN."
        )
    if len(configured) > 1:
        raise UserError("both CRMs are configured: choose one with --crm hubspot or --crm salesforce.")
    return configured[0]


def _model(rt: Runtime, model_file: str | None) -> ScoringModel:
    from connector.engine import load_scoring

    return rt.model if model_file is None else load_scoring(Path(model_file))


def _progress(what: str, quiet: bool) -> Any:
    if quiet or not sys.stderr.isatty():
        return None

    def show(n: int) -> None:
        print(f"\r{what}: {n:,} leads read", end="", file=sys.stderr, flush=True)

    return show


def read(rt: Runtime, crm: CrmName, since: float | None, quiet: bool) -> Dataset:
    from connector.learn.dataset import read_dataset

    ds = read_dataset(rt, crm, since=since, progress=_progress(f"{crm}", quiet))
    if not quiet and sys.stderr.isatty():
        print(file=sys.stderr)
    return ds


def suggested_points(ds: Dataset, model: ScoringModel, rm: RuleMatrix) -> dict[str, float] | None:
    """The points a logistic fit on all the outcomes suggests per rule (None: too few outcomes to fit)."""
    from connector.learn.suggest import FOLDS, fit_points

    lab = rm.y >= 0
    y = rm.y[lab]
    if min(int((y == 1).sum()), int((y == 0).sum())) < FOLDS:
        return None
    fit = fit_points(rm.X[lab], y, rm.rules, X_scale=rm.X)
    return {r.name: float(p) for r, p in zip(rm.rules, fit.points, strict=True)}


def run_backtest(ds: Dataset, model: ScoringModel, since: float | None = None) -> Backtest:
    rm = rule_matrix(ds, model)
    return backtest(ds, model, suggested=suggested_points(ds, model, rm), since=since, matrix=rm)


# --------------------------------------------------------------------------- backtest


def backtest_command(rt: Runtime, crm: str | None, model_file: str | None, since_text: str | None,
                     html_file: str | None, as_json: bool, plain: bool) -> int:
    since = parse_since(since_text)
    name = one_crm(rt, crm)
    model = _model(rt, model_file)
    ds = read(rt, name, since, as_json)
    bt = run_backtest(ds, model, since)
    if html_file:
        from connector.learn.report import extra_sections, render_html

        page = render_html(bt, extra=extra_sections(ds, bt))
        try:
            Path(html_file).write_text(page, encoding="utf-8")
        except OSError as exc:
            raise UserError(f"cannot write {html_file} ({exc.strerror or exc}).") from None
        print(f"report written to {html_file}", file=sys.stderr)
    if as_json:
        print(json.dumps(bt.as_dict(), sort_keys=True))
    else:
        show_backtest(bt, plain=plain)
    return 0


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{100 * rate:.1f}%"


def show_backtest(bt: Backtest, *, plain: bool) -> None:
    from connector.console import table

    print(f"{bt.crm}: model {bt.model}")
    print(f"AUC {bt.auc:.3f} on {bt.leads:,} outcomes ({bt.won:,} won, {bt.lost:,} lost; base rate "
          f"{_pct(bt.base_rate)}); {bt.open:,} open leads")
    if bt.undated:
        print(f"note: {bt.undated:,} outcome(s) have no date and are scored as they are now (activity after the "
              "outcome may count)")
    table("conversion by band", ["band", "outcomes", "won", "converted"],
          [[b, bt.bands[b]["leads"], bt.bands[b]["won"], _pct(bt.bands[b]["rate"])] for b in BANDS], plain=plain)
    table("conversion by grade", ["grade", "outcomes", "won", "converted"],
          [[g, bt.grades[g]["leads"], bt.grades[g]["won"], _pct(bt.grades[g]["rate"])] for g in GRADES], plain=plain)
    table("gains by decile (best score first)", ["decile", "lowest score", "converted", "lift", "won found so far"],
          [[d["decile"], f"{d['min_score']:g}", _pct(d["rate"]), f"{d['lift']:.2f}" if d["lift"] is not None else "-",
            _pct(d["cumulative_won_share"])] for d in bt.deciles], plain=plain)
    table("calibration (conversion by score)", ["score", "outcomes", "converted"],
          [[f"{c['from']}-{c['to']}", c["leads"], _pct(c["rate"])] for c in bt.calibration], plain=plain)
    table("rules", ["rule", "points", "outcomes", "converted", "lift", "suggested"],
          [[r["rule"], f"{r['points']:g}", r["matched"], _pct(r["rate"]),
            "-" if r["lift"] is None else f"{r['lift']:.2f}",
            "-" if r["suggested_points"] is None else f"{r['suggested_points']:g}"] for r in bt.rules], plain=plain)


# --------------------------------------------------------------------------- suggest


def suggest_command(rt: Runtime, crm: str | None, out: str, target_text: str | None, as_json: bool,
                    plain: bool) -> int:
    from connector.console import table
    from connector.engine import load_scoring
    from connector.learn.suggest import comparison_rows, parse_target, scoring_yaml, suggest, write_suggestion

    target = parse_target(target_text or DEFAULT_TARGET)
    name = one_crm(rt, crm)
    model = rt.model
    ds = read(rt, name, None, as_json)
    s = suggest(ds, model, target)
    now = time.time()
    text = scoring_yaml(model.spec, s, now=now, source=str(rt.mappings_dir / "scoring.yaml"))
    path = Path(out)
    write_suggestion(path, text)
    proposed = load_scoring(path)  # what we wrote is a valid model, or this says where it is not
    if as_json:
        print(json.dumps({**s.as_dict(), "out": str(path), "model": proposed.version}, sort_keys=True))
        return 0
    print(f"{name}: {s.leads:,} outcomes ({s.won:,} won, {s.lost:,} lost), {s.open:,} open leads; target {s.target}")
    table(f"held-out leads ({s.folds}-fold cross-validation)", ["", f"current {s.current_version}",
                                                               f"suggested {proposed.version}"],
          comparison_rows(s), plain=plain)
    c = s.cuts
    print(f"suggested thresholds: warm {c.warm}, hot {c.hot}; grades A {c.A}, B {c.B}, C {c.C}")
    if c.note:
        print(f"note: {c.note}")
    changed = sum(1 for r in s.rules if s.points[r.name] != r.points)
    print(f"points changed for {changed} of {len(s.rules)} rules; written to {path} "
          f"(review it, then: leadscore preview {path})")
    return 0


# --------------------------------------------------------------------------- preview


def preview_command(rt: Runtime, file: str, crm: str | None, as_json: bool, plain: bool) -> int:
    from connector.engine import load_scoring
    from connector.learn.preview import compare, read_current_leads, show

    proposed = load_scoring(Path(file))
    name = one_crm(rt, crm)
    current = rt.model
    router = rt.router
    now = time.time()
    leads = read_current_leads(rt, name, now, _progress(name, as_json))
    if not as_json and sys.stderr.isatty():
        print(file=sys.stderr)
    p = compare(current, proposed, leads, now, crm=name, routing=router.config, reps=router.reps(name))
    if as_json:
        print(json.dumps(p.as_dict(), sort_keys=True))
    else:
        show(p, plain=plain)
    return 0


# --------------------------------------------------------------------------- weekly


def weekly_backtest(rt: Runtime, crm: CrmName, now: float) -> dict[str, Any]:
    """The backtest of the model in use, its figures kept in Redis (beat runs it weekly)."""
    from connector.learn.dataset import read_dataset
    from connector.learn.history import BacktestHistory, figures_of

    history = BacktestHistory(rt.redis, rt.namespace)
    try:
        ds = read_dataset(rt, crm)
        bt = backtest(ds, rt.model)
    except LeadscoreError as exc:  # not configured, too few outcomes, the CRM refusing: said in status
        history.failed(crm, now, str(exc))
        return {"at": now, "error": str(exc)}
    figures = figures_of(bt, now)
    history.save(crm, figures)
    return figures
