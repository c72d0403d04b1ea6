"""The backtest as one self-contained HTML file (`leadscore backtest --html FILE`).

Opens offline: styles inline, every plot a matplotlib SVG embedded as a data: URL in an
<img> (each picture isolated, so ids inside one SVG never clash with another's), no
script, no font or image fetched from anywhere. Plots: score distribution by outcome,
conversion by band, gains, calibration, rule lift; tables for every figure.

Extension point: more sections after the built-in ones, either passed to `render_html`
as `extra=[Section(...)]`, or named in `EXTRA_SECTIONS` as "module:function" where the
function takes (dataset, backtest) and returns a `Section` or None (None: nothing to
add, e.g. no trained model yet). A section's `html` is a trusted fragment: escape
your own text with `html.escape`, draw figures with `figure()` and embed them with
`img()`.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import importlib
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from connector.learn.evaluate import BANDS, GRADES, Backtest

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from connector.learn.dataset import Dataset


@dataclass(frozen=True, slots=True)
class Section:
    title: str
    html: str  # a trusted HTML fragment


SectionProvider = Callable[["Dataset", Backtest], Section | None]

# "module:function" providers run by `leadscore backtest --html` after the built-in sections.
EXTRA_SECTIONS: list[str] = ["connector.learn.reliability:reliability_section"]  # the learned probability

COLORS = {"won": "#2e7d32", "lost": "#c62828", "hot": "#d84315", "warm": "#f9a825", "cold": "#1565c0",
          "line": "#37474f", "bar": "#5c6bc0"}

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:2rem auto;
max-width:1100px;color:#222;padding:0 1rem;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2.2rem;border-bottom:1px solid #ddd}
.meta{color:#555}.note{background:#fff8e1;border-left:4px solid #f9a825;padding:.5rem .8rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.92rem}
th,td{border:1px solid #ddd;padding:.25rem .6rem;text-align:right}th{background:#f5f5f5}
td:first-child,th:first-child{text-align:left}img.plot{display:block;max-width:100%;height:auto;margin:.6rem 0}
.kpi{display:inline-block;margin:0 2rem .6rem 0}.kpi b{display:block;font-size:1.5rem}
"""


# --------------------------------------------------------------------------- helpers for sections


def figure(width: float = 7.0, height: float = 3.6) -> Figure:
    """A matplotlib Figure not tied to any GUI backend (safe in workers and threads)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def img(fig: Figure, alt: str) -> str:
    """The figure as an <img> holding its SVG as a data: URL."""
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img class="plot" alt="{html.escape(alt)}" src="data:image/svg+xml;base64,{data}">'


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def pct(rate: float | None) -> str:
    return "-" if rate is None else f"{100 * rate:.1f}%"


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


# --------------------------------------------------------------------------- built-in sections


def _summary(bt: Backtest) -> Section:
    kpis = [("AUC", f"{bt.auc:.3f}"), ("outcomes", f"{bt.leads:,}"), ("won", f"{bt.won:,}"),
            ("lost", f"{bt.lost:,}"), ("base rate", pct(bt.base_rate)), ("open leads", f"{bt.open:,}")]
    parts = ["".join(f'<div class="kpi">{html.escape(k)}<b>{html.escape(v)}</b></div>' for k, v in kpis)]
    parts.append("<p>AUC: the chance that a lead that was won scored above one that was lost "
                 "(0.5 is a coin toss, 1.0 a perfect ranking). Each lead is scored as it was just before its "
                 "outcome: activities after it do not count.</p>")
    if bt.undated:
        parts.append(f'<p class="note">{bt.undated:,} outcome(s) have no date in the CRM: those leads are scored '
                     "as they are now, which may include activity from after the outcome and flatter the model.</p>")
    return Section("Summary", "".join(parts))


def _distribution(bt: Backtest) -> Section:
    fig = figure()
    ax = fig.add_subplot()
    top = max([*bt.won_scores, *bt.lost_scores, 100.0])
    bins = [float(x) for x in range(0, int(top) + 6, 5)]
    ax.hist(bt.lost_scores, bins=bins, density=True, alpha=0.55, color=COLORS["lost"], label=f"lost ({bt.lost:,})")
    ax.hist(bt.won_scores, bins=bins, density=True, alpha=0.55, color=COLORS["won"], label=f"won ({bt.won:,})")
    for name, t in (("warm", bt.thresholds["warm"]), ("hot", bt.thresholds["hot"])):
        ax.axvline(t, color=COLORS[name], linestyle="--", linewidth=1)
        ax.annotate(name, (t, 1), xycoords=("data", "axes fraction"), color=COLORS[name], ha="left", va="top")
    ax.set_xlabel("score")
    ax.set_ylabel("share of leads (density)")
    ax.legend()
    return Section("Score distribution by outcome", img(fig, "score distribution of won and lost leads"))


def _bands(bt: Backtest) -> Section:
    fig = figure(7.0, 3.0)
    ax = fig.add_subplot()
    rates = [100 * (bt.bands[b]["rate"] or 0.0) for b in BANDS]
    bars = ax.bar(list(BANDS), rates, color=[COLORS[b] for b in BANDS])
    ax.axhline(100 * bt.base_rate, color=COLORS["line"], linestyle=":", label=f"base rate {pct(bt.base_rate)}")
    ax.bar_label(bars, labels=[pct(bt.bands[b]["rate"]) for b in BANDS])
    ax.set_ylabel("converted (%)")
    ax.legend()
    rows = [[b, bt.bands[b]["leads"], bt.bands[b]["won"], bt.bands[b]["lost"], pct(bt.bands[b]["rate"]),
             bt.bands[b]["open"]] for b in BANDS]
    grows = [[g, bt.grades[g]["leads"], bt.grades[g]["won"], bt.grades[g]["lost"], pct(bt.grades[g]["rate"]),
              bt.grades[g]["open"]] for g in GRADES]
    t = bt.thresholds
    text = (f"<p>Bands: warm from {t['warm']}, hot from {t['hot']}. Grades on the fit score: A from {t['A']}, "
            f"B from {t['B']}, C from {t['C']}.</p>")
    return Section("Conversion by band and grade", text + img(fig, "conversion by band")
                   + table(["band", "outcomes", "won", "lost", "converted", "open leads"], rows)
                   + table(["grade", "outcomes", "won", "lost", "converted", "open leads"], grows))


def _gains(bt: Backtest) -> Section:
    fig = figure(7.0, 3.6)
    ax = fig.add_subplot()
    xs = [0.0] + [100 * d["cumulative_leads_share"] for d in bt.deciles]
    ys = [0.0] + [100 * (d["cumulative_won_share"] or 0.0) for d in bt.deciles]
    ax.plot(xs, ys, marker="o", color=COLORS["bar"], label=f"model (AUC {bt.auc:.3f})")
    ax.plot([0, 100], [0, 100], linestyle="--", color=COLORS["line"], label="random")
    ax.set_xlabel("leads contacted, best score first (%)")
    ax.set_ylabel("won leads found (%)")
    ax.legend()
    rows = [[d["decile"], d["leads"], d["min_score"], d["won"], pct(d["rate"]), d["lift"],
             pct(d["cumulative_won_share"])] for d in bt.deciles]
    return Section("Gains and lift by decile", img(fig, "gains chart")
                   + table(["decile", "outcomes", "lowest score", "won", "converted", "lift", "won found so far"],
                           rows))


def _calibration(bt: Backtest) -> Section:
    fig = figure(7.0, 3.4)
    ax = fig.add_subplot()
    xs = [c["mean_score"] for c in bt.calibration]
    ys = [100 * c["rate"] for c in bt.calibration]
    biggest = max([c["leads"] for c in bt.calibration] or [1])
    ax.plot(xs, ys, color=COLORS["bar"], linewidth=1)
    ax.scatter(xs, ys, s=[20 + 200 * c["leads"] / biggest for c in bt.calibration], color=COLORS["bar"], zorder=3)
    ax.axhline(100 * bt.base_rate, color=COLORS["line"], linestyle=":", label=f"base rate {pct(bt.base_rate)}")
    ax.set_xlabel("score (mean of the range)")
    ax.set_ylabel("converted (%)")
    ax.set_ylim(0, 100)
    ax.legend()
    rows = [[f"{c['from']}-{c['to']}", c["leads"], c["won"], pct(c["rate"])] for c in bt.calibration]
    return Section("Calibration: conversion by score", "<p>A good score converts more the higher it is "
                   "(dots sized by the number of outcomes).</p>" + img(fig, "calibration of score")
                   + table(["score", "outcomes", "won", "converted"], rows))


def _rules(bt: Backtest) -> Section:
    matched = [r for r in bt.rules if r["matched"] and r["lift"] is not None]
    fig = figure(7.0, max(2.5, 0.28 * len(matched) + 1.0))
    ax = fig.add_subplot()
    names = [r["rule"] for r in matched][::-1]
    lifts = [r["lift"] for r in matched][::-1]
    ax.barh(names, lifts, color=[COLORS["won"] if x >= 1 else COLORS["lost"] for x in lifts])
    ax.axvline(1.0, color=COLORS["line"], linestyle=":")
    ax.set_xlabel("lift: conversion of the leads it counted for / base rate")
    ax.tick_params(axis="y", labelsize=8)
    rows = [[r["rule"], r["group"], r["points"], r["matched"], pct(r["rate"]), r["lift"],
             "-" if r["suggested_points"] is None else r["suggested_points"]] for r in bt.rules]
    text = ("<p>Per rule: the outcomes it counted for (in the score, after <code>exclusive</code>), how many of "
            f"them converted against the base rate of {pct(bt.base_rate)}, and the points a regularised logistic "
            "model fitted on all the rules suggests (<code>leadscore suggest</code> writes them with the "
            "cross-validated comparison).</p>")
    body = (img(fig, "rule lift") if matched else "<p>No rule counted for any outcome.</p>")
    return Section("Rules: lift and suggested points", text + body
                   + table(["rule", "group", "points", "outcomes", "converted", "lift", "suggested points"], rows))


BUILT_IN: tuple[Callable[[Backtest], Section], ...] = (_summary, _distribution, _bands, _gains, _calibration, _rules)


# --------------------------------------------------------------------------- the page


def extra_sections(ds: Dataset, bt: Backtest, providers: Sequence[str] | None = None) -> list[Section]:
    """The sections of the providers named in EXTRA_SECTIONS (or `providers`), in order."""
    out = []
    for path in EXTRA_SECTIONS if providers is None else providers:
        module, _, name = path.partition(":")
        provider: SectionProvider = getattr(importlib.import_module(module), name)
        section = provider(ds, bt)
        if section is not None:
            out.append(section)
    return out


def render_html(bt: Backtest, *, extra: Sequence[Section] = ()) -> str:
    """The whole report as one HTML document."""
    sections = [make(bt) for make in BUILT_IN] + list(extra)
    since = f", leads since {_iso(bt.since)}" if bt.since else ""
    body = "".join(f"<section><h2>{html.escape(s.title)}</h2>{s.html}</section>" for s in sections)
    return (
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>leadscore backtest: {html.escape(bt.crm)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>Backtest of {html.escape(bt.model)} on {html.escape(bt.crm)}</h1>"
        f"<p class=\"meta\">Data read at {_iso(bt.read_at)}{since}; {bt.leads:,} outcomes, {bt.open:,} open leads."
        "</p>"
        f"{body}</body></html>"
    )
