"""Worker processes apply the active learned model: one started after the model became active writes its
probabilities, and a worker restarted after another model became active loads that one."""

from __future__ import annotations

import json
from pathlib import Path

from connector.engine import load_scoring
from connector.learn.store import ModelStore
from connector.learn.train import train
from connector.mappings.probability import ProbabilitySettings
from tests.conftest import ROOT
from tests.e2e.test_pipeline import MakePipeline, finished_summary, wait_until_idle
from tests.predict_synthetic import READ_AT, make_dataset

CONTACTS = 150


def written_probabilities(p: object) -> dict[str, str]:
    probe = p.probe()  # type: ignore[attr-defined]
    try:
        found: dict[str, str] = {}
        cursor = None
        while True:
            page = probe.adapter("hubspot").read_page("contact", cursor, since=None)
            found.update({lead.id: lead.written.get("probability", "") for lead in page.leads})
            if page.next_cursor is None:
                return found
            cursor = page.next_cursor
    finally:
        probe.close()


def loaded_versions(log: str) -> list[str]:
    out = []
    for line in log.splitlines():
        if '"model_loaded"' in line:
            out.append(json.loads(line[line.index("{"):])["version"])
    return out


def test_a_worker_applies_the_active_model_and_after_a_restart_the_newly_active_one(
    make_pipeline: MakePipeline, tmp_path: Path
) -> None:
    p = make_pipeline("hubspot", CONTACTS)
    rules = load_scoring(ROOT / "mappings" / "scoring.yaml")
    store = ModelStore(str(tmp_path / "models"), p.rt.redis, p.rt.namespace)
    first = store.save(train(make_dataset(420, seed=31), rules, ProbabilitySettings(), now=READ_AT, repeats=1))
    second = store.save(train(make_dataset(420, seed=32, won_share_shift=1.5), rules, ProbabilitySettings(),
                              now=READ_AT + 60, repeats=1))
    store.activate("hubspot", first)
    env = {"LEADSCORE_MODEL_STORE": str(tmp_path / "models"), "LEADSCORE_LOG_FORMAT": "json"}

    [worker] = p.start_workers(1, **env)
    code, out, err = finished_summary(p.sync_cli())
    wait_until_idle(p)
    assert code == 0, out + err
    before = written_probabilities(p)
    assert len(before) == CONTACTS
    assert all(v.isdigit() for v in before.values()), "every contact got a probability"
    assert loaded_versions(worker.log(100_000)) == [first]

    worker.terminate()
    worker.stop()
    store.activate("hubspot", second)
    [restarted] = p.start_workers(1, **env)
    code, out, err = finished_summary(p.sync_cli())
    wait_until_idle(p)

    assert code == 0, out + err
    assert loaded_versions(restarted.log(100_000)) == [second]
    after = written_probabilities(p)
    raised = sum(int(after[k]) > int(before[k]) for k in before)
    assert raised > CONTACTS * 0.8, "the second model (trained where more leads were won) is the one written"
