"""The dashboard, used as a person would: Debian's headless Chromium, driven by Playwright, against
the whole stack (API, worker, Temporal dev server with its Web UI, PostgreSQL, carrier simulator).

With DASHBOARD_SCREENSHOTS=<folder> set, the tests also keep screenshots of the main pages there,
at a phone's size and a desktop's (docs/screenshots/ holds a set).
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Dialog, FilePayload, Page, ViewportSize, async_playwright, expect
from prometheus_client.parser import text_string_to_metric_families

from contracts.names import run_workflow_id
from support.drive import Business, new_number
from support.stack import Stack
from tests.conftest import SimulatorKnobs

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking switches Chromium keeps trying to reach Google's services.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PHONE = ViewportSize(width=390, height=844)
DESKTOP = ViewportSize(width=1280, height=800)
HAS_CHROMIUM = CHROMIUM.exists()
WAIT_MS = 20_000


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    """One headless Chromium for the module's tests; each test has its own context (cookies)."""
    # Not skipped: a browser test that does not run proves nothing (.ci/run installs Chromium).
    assert HAS_CHROMIUM, "browser tests need Debian's Chromium at /usr/bin/chromium: apt-get install chromium"
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture
async def page(browser: Browser, stack: Stack) -> AsyncIterator[Page]:
    context = await browser.new_context(base_url=stack.settings.PUBLIC_BASE_URL, viewport=DESKTOP)
    context.set_default_timeout(WAIT_MS)
    try:
        yield await context.new_page()
    finally:
        await context.close()


async def sign_in(page: Page, business: Business) -> None:
    await page.goto("/ui/runs")
    await expect(page).to_have_url(re.compile(r"/ui/login\?next=/ui/runs$"))
    await page.get_by_label("API key").fill(business.api_key)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page).to_have_url(re.compile(r"/ui/runs$"))


async def fits_a_phone(page: Page) -> None:
    """At a phone's width nothing makes the page scroll sideways (wide tables scroll on their own)."""
    await page.set_viewport_size(PHONE)
    assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    await page.set_viewport_size(DESKTOP)


async def screenshot(page: Page, name: str) -> None:
    """Keep the page as a phone and a desktop show it, when DASHBOARD_SCREENSHOTS names a folder."""
    folder = os.environ.get("DASHBOARD_SCREENSHOTS")
    if not folder:
        return
    await asyncio.to_thread(Path(folder).mkdir, parents=True, exist_ok=True)
    for size_name, size in (("phone", PHONE), ("desktop", DESKTOP)):
        await page.set_viewport_size(size)
        await page.screenshot(path=Path(folder) / f"{name}-{size_name}.png", animations="disabled")
    await page.set_viewport_size(DESKTOP)


async def counted(stack: Stack, name: str, **labels: str) -> float:
    """A counter's value in the API's /metrics."""
    text = (await stack.http.get("/metrics")).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def leads_csv(rows: list[tuple[str, str]]) -> bytes:
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["name", "phone", "crm_id"])
    writer.writerows((name, phone, f"crm-{i}") for i, (name, phone) in enumerate(rows))
    return text.getvalue().encode()


async def fill_new_run(page: Page, name: str, csv_body: bytes) -> None:
    await page.get_by_role("link", name="New run").first.click()
    await page.get_by_label("Name", exact=True).fill(name)
    await page.get_by_label("Leads (CSV)").set_input_files(
        files=FilePayload(name="leads.csv", mimeType="text/csv", buffer=csv_body)
    )
    # Open around the clock: the tests run at any hour.
    await page.get_by_label("From", exact=True).fill("00:00")
    await page.get_by_label("Until", exact=True).fill("24:00")


async def test_a_csv_uploaded_in_the_browser_runs_to_100_percent_live(
    stack: Stack, page: Page, sim_knobs: SimulatorKnobs
) -> None:
    await sim_knobs(talk_seconds=(1.0, 1.5))  # long enough to watch the bar move
    business = await stack.create_business(cap=3)
    phones = [new_number() for _ in range(6)]
    await stack.force_outcomes({**dict.fromkeys(phones, "completed"), phones[5]: "busy"})

    await page.goto("/ui/login")
    await page.get_by_label("API key").fill("obk_not-a-key")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("alert")).to_contain_text("not a business API key")
    await sign_in(page, business)
    await expect(page.get_by_text("No runs yet")).to_be_visible()
    cookie = next(c for c in await page.context.cookies() if c["name"] == "dialer_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui"

    await fill_new_run(page, "spring promo", leads_csv([(f"Lead {i}", p) for i, p in enumerate(phones)]))
    await page.get_by_role("button", name="Check the list and start").click()
    await expect(page).to_have_url(re.compile(r"/ui/runs/[0-9a-f]{32}\?notice=started$"))
    run_id = page.url.split("/ui/runs/")[1].split("?")[0]
    label = page.locator('[data-field="progress-label"]')
    assert "100%" not in (await label.text_content() or "")
    await page.evaluate("window.sameDocument = true")

    await expect(label).to_have_text("6 of 6 done · 100%", timeout=60_000)
    await expect(page.locator('[data-field="status"]')).to_have_text("completed")
    assert await page.evaluate("window.sameDocument === true")  # the page updated itself
    assert await page.locator("progress").evaluate("bar => bar.value === bar.max")
    await expect(page.locator('[data-field="outcome-answered"]')).to_have_text("5")
    await expect(page.locator('[data-field="outcome-busy"]')).to_have_text("1")
    await expect(page.locator("[data-calls] tr")).to_have_count(6)
    for form in ("pause", "resume", "cancel"):
        await expect(page.locator(f'form[action$="/{form}"]')).to_be_hidden()
    assert business.api_key not in await page.content()
    await fits_a_phone(page)
    await screenshot(page, "run")

    async with page.expect_download() as download_info:
        await page.get_by_role("link", name="Download calls (CSV)").click()
    download = await download_info.value
    text = await asyncio.to_thread(Path(await download.path()).read_text)
    exported = list(csv.DictReader(io.StringIO(text)))
    assert sorted(row["phone"] for row in exported) == sorted(phones)
    assert {row["crm_id"] for row in exported} == {f"crm-{i}" for i in range(6)}

    async with page.context.expect_page() as temporal_page_info:
        await page.get_by_role("link", name="Open in Temporal Web UI").click()
    temporal_page = await temporal_page_info.value
    assert temporal_page.url.startswith(stack.settings.TEMPORAL_UI_URL)
    await expect(temporal_page.get_by_text(run_workflow_id(run_id)).first).to_be_visible(timeout=60_000)
    await temporal_page.close()

    await page.get_by_role("link", name="Runs", exact=True).click()
    card = page.locator(f'[data-run-id="{run_id}"]')
    await expect(card.locator('[data-field="progress-label"]')).to_contain_text("100%")
    await expect(card.locator('[data-field="status"]')).to_have_text("completed")
    await expect(card.get_by_role("link", name="spring promo")).to_be_visible()
    await fits_a_phone(page)
    await screenshot(page, "runs")
    assert await counted(stack, "dialer_runs_started_total", source="import") == 1


async def test_a_csv_with_a_bad_phone_shows_its_row_and_starts_nothing(stack: Stack, page: Page) -> None:
    business = await stack.create_business()
    good = new_number()
    await sign_in(page, business)
    await fill_new_run(
        page, "bad list", leads_csv([("Ada", good), ("Grace", "4155550100"), ("Ada again", good)])
    )
    await page.get_by_role("button", name="Check the list and start").click()

    errors = page.locator("#row-errors tbody tr")
    await expect(errors).to_have_count(2)
    await expect(errors.nth(0).locator("td")).to_have_text(["3", "4155550100", re.compile("no country code")])
    await expect(errors.nth(1).locator("td")).to_have_text(["4", good, re.compile("also on line 2")])
    await expect(page.get_by_role("alert")).to_contain_text("Nothing was started")
    await expect(page.get_by_label("Name", exact=True)).to_have_value("bad list")  # what was typed stays
    assert (await stack.http.get("/v1/runs", headers=business.headers)).json() == []
    assert await stack.sim_calls(business.caller_id) == []
    await fits_a_phone(page)
    await screenshot(page, "new-run-errors")


async def test_a_run_is_paused_resumed_and_cancelled_from_its_page(
    stack: Stack, page: Page, sim_knobs: SimulatorKnobs
) -> None:
    await sim_knobs(talk_seconds=(30.0, 30.0))  # the run stays live while the test drives it
    business = await stack.create_business(cap=1)
    phones = [new_number() for _ in range(3)]
    await stack.force_outcomes(dict.fromkeys(phones, "completed"))
    run_id = await stack.start_run(business, phones)
    await sign_in(page, business)
    await page.goto(f"/ui/runs/{run_id}")
    await expect(page.locator('[data-field="count-in_flight"]')).to_have_text("1")
    await expect(page.locator("[data-calls] tr")).to_have_count(1)

    await page.get_by_role("button", name="Pause").click()
    await expect(page.locator('[data-field="status"]')).to_have_text("paused")
    await expect(page.get_by_role("button", name="Pause")).to_be_hidden()
    await page.get_by_role("button", name="Resume").click()
    await expect(page.locator('[data-field="status"]')).to_have_text("running")

    asked: list[str] = []

    async def accept(dialog: Dialog) -> None:
        asked.append(dialog.message)
        await dialog.accept()

    page.on("dialog", accept)
    await page.get_by_role("button", name="Cancel run").click()
    await expect(page.get_by_role("status")).to_contain_text("Cancel accepted")
    await expect(page.locator('[data-field="status"]')).to_have_text("cancelled", timeout=60_000)
    await expect(page.locator('[data-field="progress-label"]')).to_contain_text("3 of 3 done")
    await expect(page.get_by_role("button", name="Cancel run")).to_be_hidden()
    assert asked and "Cancel this run?" in asked[0]

    run = await stack.run(business, run_id)
    assert run["status"] == "cancelled"
    assert len(await stack.sim_calls(business.caller_id)) == 1  # nothing dialed after the cancel
    for action in ("pause", "resume", "cancel"):
        assert await counted(stack, "dialer_run_controls_total", action=action) == 1


async def test_the_do_not_call_page_adds_and_removes_numbers(stack: Stack, page: Page) -> None:
    business = await stack.create_business()
    first, second = new_number(), new_number()
    await sign_in(page, business)
    await page.get_by_role("link", name="Do not call").click()
    await expect(page.get_by_text("The list is empty")).to_be_visible()

    phones_box = page.get_by_label("Add numbers")
    await phones_box.fill(f"{first}\nnot-a-number")
    await page.get_by_role("button", name="Add to the list").click()
    await expect(page.locator("#row-errors tbody tr")).to_have_count(1)
    await expect(page.locator("#row-errors")).to_contain_text("not-a-number")
    await expect(page.get_by_text("The list is empty")).to_be_visible()  # nothing was added

    await phones_box.fill(f"{first}, {second}")
    await page.get_by_role("button", name="Add to the list").click()
    await expect(page.get_by_role("status")).to_contain_text("added")
    await expect(page.locator("table.dnc tbody tr")).to_have_count(2)
    await fits_a_phone(page)
    await screenshot(page, "dnc")

    await page.get_by_role("button", name=f"Remove {first}").click()
    await expect(page.get_by_role("status")).to_contain_text("taken off")
    await expect(page.locator("table.dnc tbody tr")).to_have_count(1)
    listed = (await stack.http.get("/v1/dnc", headers=business.headers)).json()
    assert listed == [{"phone": second}]


def _form_token(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, html
    return match.group(1)


async def test_the_dashboard_needs_a_session_and_its_forms_a_token(stack: Stack) -> None:
    business = await stack.create_business()
    other = await stack.create_business()
    others_run = await stack.start_run(other, [new_number()])
    async with httpx.AsyncClient(base_url=stack.settings.PUBLIC_BASE_URL) as browser:
        # Without a session: pages send the browser to sign in, the pages' JSON is refused, and the
        # API's bearer header is not a session.
        response = await browser.get("/ui/runs/new", headers=business.headers)
        assert response.status_code == 303 and response.headers["location"] == "/ui/login?next=/ui/runs/new"
        assert (await browser.get("/ui/api/runs", headers=business.headers)).status_code == 401
        assert (await browser.get("/ui/login?next=https://elsewhere.example/")).status_code == 200

        # A sign-in form without its token is refused.
        refused = await browser.post("/ui/login", data={"api_key": business.api_key, "csrf": "guess"})
        assert refused.status_code == 403 and business.api_key not in refused.text
        login_form = await browser.get("/ui/login?next=https://elsewhere.example/")
        signed_in = await browser.post(
            "/ui/login",
            data={
                "api_key": business.api_key,
                "csrf": _form_token(login_form.text),
                "next": "//elsewhere.example/",
            },
        )
        assert signed_in.status_code == 303 and signed_in.headers["location"] == "/ui/runs"
        session_cookie = signed_in.headers["set-cookie"].lower()
        assert (
            "httponly" in session_cookie
            and "samesite=strict" in session_cookie
            and "path=/ui" in session_cookie
        )

        runs_page = await browser.get("/ui/runs")
        assert runs_page.status_code == 200 and business.api_key not in runs_page.text
        assert runs_page.headers["cache-control"] == "no-store"
        assert "frame-ancestors 'none'" in runs_page.headers["content-security-policy"]
        token = _form_token(runs_page.text)

        # Forms without the session's token change nothing.
        phone = new_number()
        for forged in ({}, {"csrf": "0" * 64}, {"csrf": _form_token(login_form.text)}):
            response = await browser.post("/ui/dnc/add", data={"phones": phone, **forged})
            assert response.status_code == 403
            assert (await browser.post(f"/ui/runs/{others_run}/cancel", data=forged)).status_code == 403
        assert (await stack.http.get("/v1/dnc", headers=business.headers)).json() == []
        added = await browser.post("/ui/dnc/add", data={"phones": phone, "csrf": token})
        assert added.status_code == 303
        assert (await stack.http.get("/v1/dnc", headers=business.headers)).json() == [{"phone": phone}]

        # A bad option is named, with the form as it was typed, and nothing starts.
        form: dict[str, str | list[str]] = {"csrf": token, "name": "night shift", "max_attempts": "1"}
        form |= {
            "retry_delay_minutes": "0",
            "window_start": "25:00",
            "window_end": "21:00",
            "days": ["0", "1"],
        }
        refused_run = await browser.post(
            "/ui/runs/new", data=form, files={"leads": ("leads.csv", f"phone\n{new_number()}\n", "text/csv")}
        )
        assert refused_run.status_code == 422
        assert "Retry after: between 1 minute and 7 days" in refused_run.text
        assert "Calling window start: a time such as 08:00" in refused_run.text
        assert 'value="night shift"' in refused_run.text
        assert (await stack.http.get("/v1/runs", headers=business.headers)).json() == []

        # Another business's run is not there, with or without a token.
        assert (await browser.get(f"/ui/runs/{others_run}")).status_code == 404
        assert (await browser.get(f"/ui/api/runs/{others_run}")).status_code == 404
        assert (await browser.get(f"/ui/runs/{others_run}/calls.csv")).status_code == 404
        assert (await browser.post(f"/ui/runs/{others_run}/cancel", data={"csrf": token})).status_code == 404
        assert (await browser.get("/ui/api/runs", params={"id": others_run})).json()["runs"] == []

        # Signing out ends the session.
        assert (await browser.post("/ui/logout", data={"csrf": token})).status_code == 303
        assert (await browser.get("/ui/runs")).status_code == 303
    assert (await stack.wait_run_ends(other, others_run))["status"] == "completed"
