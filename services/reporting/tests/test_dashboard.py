"""The dashboard: served from the package with a strict content security policy, and, in
a real headless Chromium against the running ballots and reporting services, it shows
a ballot's national numbers and a vote marked through the ballots API appears on the
page without a reload."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import httpx
import pytest
from turnout_ballots.main import create_ballots_app
from turnout_ballots.settings import BallotsSettings
from turnout_reporting.main import create_reporting_app
from turnout_reporting.settings import ReportingSettings

from services.ballots.tests.seed import ballot_body, seed_members
from services.reporting.tests.test_stream import national_row, served
from tests.support.events import eventually
from tests.support.isolation import create_database, drop_database

# Debian's chromium (scripts/bootstrap.sh installs it); Playwright's own browser
# downloads are never used.
CHROMIUM = Path("/usr/bin/chromium")
# How long the page may take to show a figure (it is usually well under a second).
SHOWN_MS = 20_000


@pytest.mark.unit
async def test_the_page_and_its_files_are_served_from_the_package():
    app = create_reporting_app(ReportingSettings())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://reporting") as client:
        page = await client.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "default-src 'none'" in policy
        assert "unsafe-inline" not in policy
        assert '<script src="/static/dashboard.js"' in page.text
        for name, media_type in (("dashboard.js", "text/javascript"),
                                 ("dashboard.css", "text/css")):
            asset = await client.get(f"/static/{name}")
            assert asset.status_code == 200 and asset.content
            assert asset.headers["content-type"].startswith(media_type)
            unchanged = await client.get(f"/static/{name}",
                                         headers={"If-None-Match": asset.headers["etag"]})
            assert unchanged.status_code == 304 and not unchanged.content
        for missing in ("/static/main.py", "/static/..%2Fmain.py", "/static/"):
            assert (await client.get(missing)).status_code == 404


@pytest.fixture
def chromium() -> Path:
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is not installed (/usr/bin/chromium): "
                    "scripts/bootstrap.sh installs it when run as root, or run "
                    "'apt-get install chromium'. The dashboard's browser test needs a real "
                    "browser and does not skip without one.", pytrace=False)
    return CHROMIUM


@pytest.fixture
async def ballots_database(infra):
    """The ballots service's own database, beside reporting's (`database_url`)."""
    url = await create_database(infra.database_url)
    yield url
    await drop_database(infra.database_url, url)


@pytest.mark.integration
async def test_a_vote_marked_through_ballots_appears_on_the_dashboard_without_reload(
        chromium, ballots_database, reporting_settings, topics, kafka_bootstrap, tokens):
    from playwright.async_api import async_playwright, expect

    ballots_app = create_ballots_app(BallotsSettings(
        database_url=ballots_database, kafka_bootstrap_servers=kafka_bootstrap,
        topic_namespace=topics.namespace, topic_partitions=topics.partitions))
    national = tokens("national")
    async with served(ballots_app) as ballots_url, \
            served(create_reporting_app(reporting_settings)) as reporting_url, \
            httpx.AsyncClient(base_url=ballots_url, headers=national) as ballots:
        # A roll of 8: 3 in B1 and 2 in B2 (group G1), 3 in B3 (group G2).
        ctx = ballots_app.state.ctx
        b1 = await seed_members(ctx, 3, group="G1", branch="B1", workplace="W1")
        await seed_members(ctx, 2, group="G1", branch="B2", workplace="W2")
        await seed_members(ctx, 3, group="G2", branch="B3", workplace="W3")
        created = await ballots.post("/v1/ballots", json=ballot_body(
            groups=("G1", "G2"), branches=(), name="Pay 2026 industrial action ballot"))
        assert created.status_code == 201, created.text
        ballot_id = uuid.UUID(created.json()["ballot_id"])
        opened = await ballots.post(f"/v1/ballots/{ballot_id}/open")
        assert opened.status_code == 200, opened.text

        async def folded() -> bool:
            row = await national_row(reporting_url, national, ballot_id)
            return bool(row and row["eligible"] == 8 and row["threshold"] == 0.5)

        await eventually(folded, what="the roll to reach reporting", timeout=60)

        rep = tokens("rep", branches=["B1"])

        async def mark(member_id) -> None:
            response = await ballots.put(f"/v1/ballots/{ballot_id}/votes/{member_id}",
                                         json={"source": "rep"}, headers=rep)
            assert response.status_code == 201, response.text

        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=str(chromium), headless=True,
                args=["--no-sandbox", "--disable-dev-shm-usage"])
            try:
                page = await browser.new_page()
                errors: list[str] = []
                page.on("pageerror", lambda error: errors.append(str(error)))
                token = national["Authorization"].removeprefix("Bearer ")
                await page.goto(f"{reporting_url}/#token={token}")

                # The national figures as the projections hold them.
                await expect(page.locator("#headline-title")).to_have_text("National turnout")
                await expect(page.locator("#headline-eligible")).to_have_text(
                    "8", timeout=SHOWN_MS)
                await expect(page.locator("#headline-voted")).to_have_text("0")
                await expect(page.locator("#headline-turnout")).to_have_text("0.0%")
                await expect(page.locator("#headline-needed")).to_have_text("4")
                await expect(page.locator("#ballot option")).to_have_text(
                    ["Pay 2026 industrial action ballot"])
                await expect(page.locator("#units-body tr")).to_have_count(2)  # G1, G2
                await expect(page.locator("#connection")).to_have_text("Live",
                                                                       timeout=SHOWN_MS)
                # The token left the address bar as soon as the page had it.
                assert token not in page.url

                # A vote marked through the ballots API, and the page changes by itself.
                await page.evaluate("window.sameDocument = true")
                await mark(b1[0])
                await expect(page.locator("#headline-voted")).to_have_text(
                    "1", timeout=SHOWN_MS)
                await expect(page.locator("#headline-turnout")).to_have_text("12.5%")
                await expect(page.locator("#headline-needed")).to_have_text("3")
                assert await page.evaluate("window.sameDocument === true")  # no reload

                # Drill down by keyboard into G1: its branches, live there too.
                await page.get_by_role("button", name=re.compile(r"^G1")).focus()
                await page.keyboard.press("Enter")
                await expect(page.locator("#units-caption")).to_contain_text("Branches in G1")
                b1_row = page.locator("#units-body tr[data-unit='B1'] td")
                await expect(b1_row.nth(2)).to_have_text("1 / 3")
                await mark(b1[1])
                await expect(b1_row.nth(2)).to_have_text("2 / 3", timeout=SHOWN_MS)
                await expect(page.locator("#headline-voted")).to_have_text("2")
                # The turnout-over-time chart of G1, with its threshold line.
                await expect(page.locator("#chart-title")).to_have_text(
                    "Turnout over time: G1")
                await expect(page.locator("#chart path.line")).to_have_count(1)
                await expect(page.locator("#chart line.threshold")).to_have_count(1)
                # And back up by the breadcrumb.
                await page.get_by_role("navigation", name="Breadcrumb").get_by_role(
                    "button", name="National").click()
                await expect(page.locator("#units-body tr")).to_have_count(2)
                assert await page.evaluate("window.sameDocument === true")
                assert errors == []
            finally:
                await browser.close()
