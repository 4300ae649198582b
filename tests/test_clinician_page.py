"""The clinician page in a real headless browser (Debian's chromium driven by
Playwright): fill the form, score, read the band and the factors back."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from support.serving import (
    MODEL_NAME,
    PATIENT,
    fitted_logistic,
    register,
    running_server,
    write_config,
)

from pipeline.champion import move_champion
from pipeline.registry import registry_client

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# `PIPELINE_PAGE_SCREENSHOT=docs/clinician-page.png` keeps the README's screenshot.
SCREENSHOT = os.environ.get("PIPELINE_PAGE_SCREENSHOT")


def _chromium_or_skip() -> str:
    if not Path(CHROMIUM).exists():
        pytest.skip(
            "Debian's chromium is not installed (/usr/bin/chromium): `apt-get install "
            "chromium` (.ci/run does) to run the browser test"
        )
    return CHROMIUM


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("page")
    uri = f"sqlite:///{tmp}/mlruns/mlflow.db"
    model, _ = fitted_logistic(tmp / "extract")
    move_champion(registry_client(uri), MODEL_NAME, register(uri, model))
    with running_server(write_config(tmp, uri)) as s:
        yield s


@pytest.fixture
def page(tmp_path: Path):
    from playwright.sync_api import sync_playwright

    executable = _chromium_or_skip()
    profile = tempfile.mkdtemp(dir=tmp_path)
    with sync_playwright() as pw:
        # A fresh profile per test (Playwright passes it as --user-data-dir).
        context = pw.chromium.launch_persistent_context(
            profile,
            executable_path=executable,
            args=FLAGS,
            headless=True,
            viewport={"width": 1180, "height": 860},
        )
        try:
            yield context.new_page()
        finally:
            context.close()


def _fill(page, record: dict) -> None:
    for name, value in record.items():
        selector = f"#f-{name}"
        tag = page.eval_on_selector(selector, "el => el.tagName")
        if tag == "SELECT":
            option = (
                ""
                if value is None
                else ("true" if value is True else "false" if value is False else str(value))
            )
            page.select_option(selector, option)
        else:
            page.fill(selector, "" if value is None else str(value))


def test_the_form_scores_a_patient_and_shows_band_and_factors(server, page) -> None:
    failed: list[str] = []
    page.on("requestfailed", lambda r: failed.append(r.url))
    outside: list[str] = []
    page.on(
        "request",
        lambda r: outside.append(r.url) if not r.url.startswith(server.url) else None,
    )
    page.goto(server.url + "/")
    assert page.title().startswith("Incident type 2 diabetes")
    assert page.inner_text("#model-version") == "1"
    _fill(page, PATIENT)
    page.click("#score")
    page.wait_for_selector("#answer:not([hidden])", timeout=15_000)

    status, rest = server.score([PATIENT])
    expected = rest["predictions"][0]
    assert page.inner_text("#band").lower() == expected["risk_band"]
    assert page.inner_text("#probability") == f"{100 * expected['risk_probability']:.1f} %"
    items = page.locator("#factors li").all_inner_texts()
    assert len(items) == 3
    for item, factor in zip(items, expected["top_factors"], strict=True):
        assert item.startswith(factor["name"]) and f"{factor['effect']} the risk" in item
    assert f"Model {MODEL_NAME} version 1" in page.inner_text("#served-by")
    if SCREENSHOT:
        page.screenshot(path=SCREENSHOT, full_page=True)
    assert not failed and not outside


def test_the_form_marks_a_field_the_service_refused(server, page) -> None:
    page.goto(server.url + "/")
    _fill(page, {**PATIENT, "hba1c": 7.2})
    page.click("#score")
    page.wait_for_selector("#errors:not([hidden])", timeout=15_000)
    assert "outside [3.5, 6.5] %" in page.inner_text("#e-hba1c")
    assert "bad" in page.get_attribute("#e-hba1c >> xpath=..", "class")
    assert page.is_hidden("#answer")
    assert json.dumps(7.2) not in page.inner_text("#e-hba1c")
