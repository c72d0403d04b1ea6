"""The learned probability's reliability curve, as a section of the backtest's HTML report.

Registered in connector.learn.report.EXTRA_SECTIONS as "connector.learn.reliability:reliability_section".
It shows the active model of the backtested CRM: its out-of-fold calibration (each outcome's
probability from a model that did not see it, recorded when the model was trained), so the curve
is cross-validated like every other figure, beside its CV AUC and the rules' AUC on the same folds.
No model store configured, or no active model for the CRM: no section.
"""

from __future__ import annotations

import html
import time
from typing import TYPE_CHECKING

from connector.learn.train import Figures

if TYPE_CHECKING:
    from connector.learn.dataset import Dataset
    from connector.learn.evaluate import Backtest
    from connector.learn.report import Section


def active_figures(crm: str) -> Figures | None:
    """The active model's recorded figures, through the configured store (None: none)."""
    from connector.bootstrap import build_runtime
    from connector.config import load_settings

    settings = load_settings()
    if not settings.model_store:
        return None
    rt = build_runtime(settings)
    try:
        return rt.model_store.active_figures(crm) if rt.model_store is not None else None
    finally:
        rt.redis.close()


def reliability_section(ds: Dataset, bt: Backtest) -> Section | None:
    figures = active_figures(str(ds.crm))
    return None if figures is None else section_of(figures)


def section_of(f: Figures) -> Section:
    """The section for one model's recorded figures."""
    from connector.learn.report import Section, figure, img, pct, table

    fig = figure(5.2, 4.4)
    ax = fig.add_subplot()
    ax.plot([0, 100], [0, 100], color="#37474f", linestyle=":", linewidth=1, label="perfectly calibrated")
    xs = [100 * p for _, _, _, p, _ in f.calibration]
    ys = [100 * o for _, _, _, _, o in f.calibration]
    biggest = max([n for _, _, n, _, _ in f.calibration] or [1])
    ax.plot(xs, ys, color="#5c6bc0", linewidth=1)
    ax.scatter(xs, ys, s=[20 + 200 * n / biggest for _, _, n, _, _ in f.calibration], color="#5c6bc0", zorder=3,
               label="out-of-fold probability")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.set_xlabel("predicted probability (%)")
    ax.set_ylabel("won (%)")
    ax.legend(loc="upper left")
    trained = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(f.trained_at))
    text = (
        f"<p>Model <b>{html.escape(f.model_version)}</b> ({html.escape(f.chosen)}), trained {trained} on "
        f"{f.outcomes:,} outcomes ({f.won:,} won). Cross-validated: CV AUC {f.cv_auc:.3f} ± {f.cv_auc_sd:.3f} "
        f"against the points' {f.rules_auc:.3f} on the same folds; Brier score {f.brier:.3f} (always saying "
        f"the base rate: {f.brier_base:.3f}). Each dot: outcomes whose probability, from a model that did not "
        "see them, fell in that range; on the diagonal, as many won as predicted.</p>"
    )
    rows = [[f"{lo:.0%}-{hi:.0%}", n, pct(p), pct(o)] for lo, hi, n, p, o in f.calibration]
    return Section("Learned probability: reliability", text + img(fig, "reliability curve of the learned probability")
                   + table(["probability", "outcomes", "predicted", "won"], rows))
