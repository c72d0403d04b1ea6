"""The backtest's HTML report in a real headless browser (Debian's chromium through playwright):
it renders offline, shows its plots, logs no console error, asks the network for nothing."""

from __future__ import annotations

import html
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connector.engine import load_scoring
from connector.learn.evaluate import backtest
from connector.learn.report import Section, figure, img, render_html, table
from tests.conftest import ROOT
from tests.learn_synthetic import synthetic_dataset

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra")
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (CI installs Debian's chromium; apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM)
        yield b
        b.close()


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ds = synthetic_dataset(1200, seed=6)
    bt = backtest(ds, load_scoring(ROOT / "mappings" / "scoring.yaml"), suggested={"Meeting held": 33.0})
    fig = figure(5, 2)
    fig.add_subplot().plot([0, 1], [0, 1])
    extra = Section("Extra <section>", img(fig, "extra plot") + table(["a"], [[html.escape("<b>")]]))
    path = tmp_path_factory.mktemp("report") / "backtest.html"
    path.write_text(render_html(bt, extra=[extra]), encoding="utf-8")
    return path


def open_page(browser: Any, path: Path) -> tuple[Any, list[str], list[str]]:
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    requests: list[str] = []
    problems: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.on("console", lambda m: problems.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.route("**/*", lambda route: route.continue_() if route.request.url == path.as_uri() else route.abort())
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    return page, requests, problems


def test_the_report_renders_its_plots_without_errors_or_requests(browser: Any, report: Path) -> None:
    page, requests, problems = open_page(browser, report)
    sizes = page.evaluate(
        """() => Array.from(document.querySelectorAll('img, svg')).map(e => {
               const r = e.getBoundingClientRect();
               const done = e.complete === undefined ? true : e.complete;
               return [e.tagName, done, e.naturalWidth || r.width, r.width, r.height];
           })"""
    )
    drawn = [s for s in sizes if s[1] and s[2] > 0 and s[3] > 100 and s[4] > 100]
    assert len(drawn) == 6  # distribution, bands, gains, calibration, rule lift, the extra section's plot
    titles = page.eval_on_selector_all("h2", "els => els.map(e => e.textContent)")
    assert titles == ["Summary", "Score distribution by outcome", "Conversion by band and grade",
                      "Gains and lift by decile", "Calibration: conversion by score",
                      "Rules: lift and suggested points", "Extra <section>"]
    assert page.locator("table").count() >= 6
    assert "AUC" in page.inner_text("body")
    assert requests == [report.as_uri()]
    assert problems == []
    page.close()


def test_screenshot_of_the_report_is_not_blank(browser: Any, report: Path, tmp_path: Path) -> None:
    from PIL import Image

    page, _, _ = open_page(browser, report)
    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    page.close()
    image = Image.open(shot).convert("RGB")
    assert image.height > 2000
    colors = image.getcolors(maxcolors=1 << 20)
    assert colors is not None
    assert len(colors) > 50
    white = max(colors)[0] / (image.width * image.height)
    assert white < 0.97


def test_the_learned_probabilitys_reliability_curve_renders_in_the_report(browser: Any, tmp_path: Path) -> None:
    from connector.learn.reliability import section_of
    from connector.learn.train import train
    from connector.mappings.probability import ProbabilitySettings
    from tests.predict_synthetic import READ_AT, make_dataset

    rules = load_scoring(ROOT / "mappings" / "scoring.yaml")
    trained = train(make_dataset(400, seed=2), rules, ProbabilitySettings(), now=READ_AT, repeats=1)
    trained.figures.model_version = "hubspot-20261118T110640Z-0123abcd"
    ds = synthetic_dataset(600, seed=6)
    path = tmp_path / "backtest.html"
    path.write_text(render_html(backtest(ds, rules), extra=[section_of(trained.figures)]), encoding="utf-8")

    page, requests, problems = open_page(browser, path)
    titles = page.eval_on_selector_all("h2", "els => els.map(e => e.textContent)")
    assert titles[-1] == "Learned probability: reliability"
    section = page.locator("section", has=page.locator("h2", has_text="Learned probability: reliability"))
    box = section.locator("img").bounding_box()
    assert box is not None
    assert box["width"] > 300
    assert box["height"] > 250
    assert section.locator("img").evaluate("e => e.complete && e.naturalWidth > 0")
    text = section.inner_text()
    assert "hubspot-20261118T110640Z-0123abcd" in text
    assert f"CV AUC {trained.figures.cv_auc:.3f}" in text
    rows = section.locator("tbody tr").count()
    assert rows == len(trained.figures.calibration)
    assert requests == [path.as_uri()]
    assert problems == []
    page.close()
