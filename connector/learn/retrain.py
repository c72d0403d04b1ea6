"""Training as a service: read the outcomes, train, store, keep or not, record the figures.

Used by `leadscore train` and by beat's retraining task (tasks/learn.py), so both follow one
rule: the new model becomes active unless its CV AUC is lower than the active model's recorded
CV AUC by more than scoring.yaml `probability.keep_within_auc` (the active model's figure is
the one measured when it was trained; the new one is measured on today's outcomes).
Every training is recorded, kept or not; a refusal for too few outcomes is not a training.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from connector.domain import CrmName
from connector.errors import UserError
from connector.learn.train import Figures, keep_decision, train

if TYPE_CHECKING:
    from connector.bootstrap import Runtime
    from connector.learn.store import ModelStore

log = logging.getLogger("leadscore.learn")


def require_store(rt: Runtime) -> ModelStore:
    store = rt.model_store
    if store is None:
        raise UserError(
            "LEADSCORE_MODEL_STORE is not set: set it to a folder every worker can read (a shared volume), "
            "where trained models are kept."
        )
    return store


def read_outcomes(rt: Runtime, crm: CrmName, progress: Callable[[int], None] | None = None) -> object:
    try:
        from connector.learn.dataset import read_dataset
    except ImportError:
        raise UserError("this version cannot read outcomes yet (connector.learn.dataset is missing).") from None
    return read_dataset(rt, crm, progress=progress)


def train_and_store(rt: Runtime, crm: CrmName, *, dataset: object | None = None, now: float | None = None,
                    progress: Callable[[int], None] | None = None) -> Figures:
    """Train on the CRM's outcomes; store the model; activate it when it is not worse; record the figures."""
    store = require_store(rt)
    data = dataset if dataset is not None else read_outcomes(rt, crm, progress)
    model = rt.model
    trained = train(data, model, model.spec.probability, now=time.time() if now is None else now)  # type: ignore[arg-type]
    version = store.save(trained)
    figures = trained.figures
    keep, why = keep_decision(figures, store.active_figures(crm), model.spec.probability.keep_within_auc)
    figures.kept, figures.kept_why = keep, why
    if keep:
        store.activate(crm, version)
    store.record_training(figures)
    log.info("model trained", extra={"event": "model_trained", "crm": crm, "version": version, "kept": keep,
                                     "cv_auc": round(figures.cv_auc, 4), "outcomes": figures.outcomes})
    return figures


DUE_SLACK_S = 3600.0   # a daily beat entry a little early still counts as due
TRAIN_LOCK_S = 2 * 3600


def retrain_if_due(rt: Runtime, crm: CrmName, now: float | None = None) -> tuple[Figures | None, str]:
    """Beat's daily call: train when the last training is `retrain.every_days` old (or there was none).

    One training at a time per CRM across workers (a Redis lock); a redelivered task finds the
    training recorded and does nothing. Returns the figures (None when nothing was trained) and why.
    """
    now = time.time() if now is None else now
    settings = rt.model.spec.probability.retrain
    if settings.every_days <= 0:
        return None, "retraining is off (probability.retrain.every_days is 0)"
    store = require_store(rt)
    last = store.trainings(crm, 1)
    if last and now - last[0].trained_at < settings.every_days * 86400 - DUE_SLACK_S:
        return None, f"not due: last trained {time.strftime('%Y-%m-%d %H:%M', time.gmtime(last[0].trained_at))} UTC"
    lock = f"{rt.namespace}:model:{crm}:training"
    if not rt.redis.set(lock, f"{now:.0f}", nx=True, ex=TRAIN_LOCK_S):
        return None, "another worker is training this CRM"
    try:
        figures = train_and_store(rt, crm, now=now)
    except UserError as exc:
        rt.redis.set(f"{rt.namespace}:model:{crm}:last_refusal", str(exc))
        log.warning("model not trained", extra={"event": "model_not_trained", "crm": crm, "why": str(exc)})
        return None, str(exc)
    finally:
        rt.redis.delete(lock)
    return figures, "trained: " + ("kept" if figures.kept else "not kept") + f" ({figures.kept_why})"
