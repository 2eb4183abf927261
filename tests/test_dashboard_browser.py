"""The dashboard in a real browser: Debian's headless Chromium driven by Playwright, against
`payflow serve` on a test redis-server, with a webhook receiver on the test's event loop.

An operator signs in, sees a payment made through the API appear and succeed, opens its
delivery attempts, watches its webhook go dead at a failing endpoint, replays it from the dead
letters once the endpoint answers again and sees it delivered; purging asks for confirmation;
a wrong key is refused. A screenshot of each view is saved in ``$PAYFLOW_ARTIFACTS`` (default
``test-artifacts/``). Skips when chromium or playwright is missing, unless
PAYFLOW_REQUIRE_SERVICES=1 (CI), where it fails.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest
import redis

from conftest import REPO, RedisServer, need
from daemon_proc import Daemon
from receiver import Receiver, until

try:
    from playwright.async_api import Browser, Page, async_playwright, expect
except ImportError:  # the test extra installs it; skipped (or failed in CI) below
    HAVE_PLAYWRIGHT = False
else:
    HAVE_PLAYWRIGHT = True

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.timeout(180)]

CHROMIUM: Final = Path("/usr/bin/chromium")
KEY: Final = "sk_test_dashboard_0123456789"
AUTH: Final = {"Authorization": f"Bearer {KEY}"}
UPI: Final = {"amount": 125000, "currency": "INR", "method": "upi",
              "upi": {"vpa": "asha@okbank"}, "metadata": {"order": "A-1001"}}
# Made before any endpoint exists, so that their events go nowhere (no dead letter).
OTHERS: Final = (
    {"amount": 4999, "currency": "USD", "method": "card",
     "card": {"number": "4242 4242 4242 4242", "exp_month": 12, "exp_year": 2040}},
    {"amount": 50000, "currency": "INR", "method": "upi", "upi": {"vpa": "failure@okbank"}},
    {"amount": 120000, "currency": "JPY", "method": "netbanking",
     "netbanking": {"bank_code": "HDFC"}},
)
WAIT_MS: Final = 20_000


def artifacts() -> Path:
    path = Path(os.environ.get("PAYFLOW_ARTIFACTS") or REPO / "test-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    need("playwright (pip install playwright)", HAVE_PLAYWRIGHT)
    need(f"chromium ({CHROMIUM}: apt-get install chromium)",
         CHROMIUM.exists() and shutil.which(str(CHROMIUM)) is not None)
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield launched
        finally:
            await launched.close()


async def open_page(browser: Browser, url: str) -> tuple[Page, list[str]]:
    """A new page (1280x800) on ``url``, and the list its uncaught script errors (and
    Content-Security-Policy refusals) go to."""
    context = await browser.new_context(viewport={"width": 1280, "height": 800},
                                        locale="en-GB", timezone_id="UTC")
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text)
            if msg.type == "error" and "Content Security Policy" in msg.text else None)
    await page.goto(url)
    return page, errors


async def shot(page: Page, name: str) -> None:
    await page.screenshot(path=str(artifacts() / f"dashboard-{name}.png"), full_page=True)


async def sign_in(page: Page, key: str) -> None:
    await expect(page.locator("#login-form")).to_be_visible()
    await page.fill("#api-key", key)
    await page.click("#sign-in")


async def post(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> dict[str, Any]:
    async with http.post(url, json=body) as resp:
        assert resp.status in (201, 202), await resp.text()
        created: dict[str, Any] = await resp.json()
        return created


async def until_terminal(http: aiohttp.ClientSession, url: str) -> None:
    for _ in range(200):
        async with http.get(url) as resp:
            if (await resp.json())["status"] not in ("pending", "processing"):
                return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{url} is not processed")


async def test_an_operator_finds_and_replays_a_dead_webhook(
        browser: Browser, make_daemon: Callable[..., Daemon],
        redis_server: RedisServer) -> None:
    receiver = Receiver()
    receiver.fail_first = 10**9  # answers 500 until told otherwise
    await receiver.start()
    d = make_daemon(redis_server.url, PAYFLOW_API_KEYS=f"ops:{KEY}",
                    PAYFLOW_WEBHOOKS_MAX_ATTEMPTS="2", PAYFLOW_WEBHOOKS_RETRY_SCHEDULE="0.3",
                    PAYFLOW_QUEUE_PROMOTE_INTERVAL_SECONDS="0.05")
    try:
        async with aiohttp.ClientSession(headers=AUTH) as http:
            others = [await post(http, f"{d.base_url}/v1/payments", body) for body in OTHERS]
            for other in others:
                await until_terminal(http, f"{d.base_url}/v1/payments/{other['id']}")
            endpoint = await post(http, f"{d.base_url}/v1/webhook_endpoints",
                                  {"url": receiver.url, "description": "orders service"})
            page, errors = await open_page(browser, f"{d.base_url}/dashboard")
            await shot(page, "login")
            await sign_in(page, KEY)
            await expect(page.locator(".queue-card")).to_have_count(2, timeout=WAIT_MS)
            assert await page.evaluate("sessionStorage.getItem('payflow.apiKey')") == KEY
            assert await page.evaluate("localStorage.length") == 0

            # a payment made through the API appears and succeeds
            payment = await post(http, f"{d.base_url}/v1/payments", UPI)
            await page.click("#nav a[data-view=payments]")
            row = page.locator(f"tr[data-payment={payment['id']}]")
            await expect(row.locator(".badge")).to_have_text("succeeded", timeout=WAIT_MS)
            await expect(row).to_contain_text("₹1,250.00")
            await expect(page.locator("tr[data-payment]")).to_have_count(4)
            await shot(page, "payments")
            # the filters: by status, by creation time
            await page.select_option("#filter-status", "failed")
            await expect(page.locator("tr[data-payment]")).to_have_count(1, timeout=WAIT_MS)
            await expect(page.locator("tr[data-payment] .badge")).to_have_text("failed")
            await page.select_option("#filter-status", "")
            await page.fill("#filter-created", "2030-01-01T00:00")
            await expect(page.locator(".empty")).to_have_text(
                "No payment matches these filters.", timeout=WAIT_MS)
            await page.click("text=Clear filters")
            await expect(page.locator("tr[data-payment]")).to_have_count(4, timeout=WAIT_MS)

            # its webhook fails twice at the endpoint and goes dead: both attempts are shown
            await row.click()
            event = page.locator(".event")
            await expect(event.locator(".badge").first).to_have_text("payment.success",
                                                                     timeout=WAIT_MS)
            outcomes = event.locator("tr[data-attempt] .badge")
            await expect(outcomes).to_have_text(["retrying", "dead"], timeout=WAIT_MS)
            await expect(event.locator("tr[data-attempt]").first).to_contain_text("500")
            event_id = await event.get_attribute("data-event")
            assert event_id is not None and receiver.counts[event_id] == 0
            await shot(page, "payment-attempts")

            # the endpoint shows the failures
            await page.click("#nav a[data-view=endpoints]")
            ep_row = page.locator(f"tr[data-endpoint={endpoint['id']}]")
            await expect(ep_row).to_contain_text("none in 24 h", timeout=WAIT_MS)
            await expect(ep_row).to_contain_text("failing since")
            await expect(ep_row.locator("td").nth(3)).to_contain_text("2")
            await shot(page, "endpoints-failing")

            # the dead letter is listed; once the endpoint answers, replay it from the page
            await page.click("#nav a[data-view=dead]")
            await expect(page.locator("#dead-count")).to_have_text("1", timeout=WAIT_MS)
            await page.click(".segmented button[data-queue=webhook_jobs]")
            entry = page.locator("tr[data-entry]")
            await expect(entry).to_have_count(1, timeout=WAIT_MS)
            await expect(entry).to_contain_text(event_id)
            await shot(page, "dead-letters")
            receiver.fail_first = receiver.requests  # answers 204 from now on
            await entry.locator("button[data-action=replay]").click()
            await expect(page.locator("#notice")).to_contain_text(
                "Replayed 1 job onto webhook_jobs", timeout=WAIT_MS)
            await until(lambda: receiver.counts[event_id] == 1, 20,
                        lambda: f"not delivered: {receiver.requests} requests\n{d.output()}")
            await expect(entry).to_have_count(0, timeout=WAIT_MS)
            await expect(page.locator("#dead-count")).to_be_hidden(timeout=WAIT_MS)

            # ... and see it delivered: a third attempt, succeeded
            await page.goto(f"{d.base_url}/dashboard#/payments/{payment['id']}")
            await expect(page.locator("tr[data-attempt] .badge")).to_have_text(
                ["retrying", "dead", "succeeded"], timeout=WAIT_MS)
            await shot(page, "payment-delivered")
            await page.click("#nav a[data-view=endpoints]")
            await expect(ep_row.locator(".when")).to_have_count(1, timeout=WAIT_MS)
            await expect(ep_row).not_to_contain_text("failing since", timeout=WAIT_MS)
            await shot(page, "endpoints-healthy")

            # the endpoint's actions: rotate the secret (shown once), disable, enable, recover
            await ep_row.locator("button[data-action='Rotate secret']").click()
            dialog = page.locator("#dialog")
            await expect(dialog).to_contain_text("Rotate the signing secret?")
            await page.click("#dialog-ok")
            await expect(dialog).to_contain_text("New signing secret", timeout=WAIT_MS)
            secret = await dialog.locator(".secret").text_content()
            assert secret is not None and secret.startswith("whsec_")
            await shot(page, "rotated-secret")
            await page.click("#dialog-ok")
            await ep_row.locator("button[data-action=Disable]").click()
            await page.click("#dialog-ok")
            await expect(ep_row.locator(".badge")).to_have_text("disabled", timeout=WAIT_MS)
            await expect(ep_row).to_contain_text("disabled through the API")
            await ep_row.locator("button[data-action=Enable]").click()
            await expect(ep_row.locator(".badge")).to_have_text("enabled", timeout=WAIT_MS)
            await ep_row.locator("button[data-action=Recover]").click()
            await page.click("#dialog-ok")
            # what it missed: the events of the payments made before it existed
            await expect(page.locator("#notice")).to_contain_text(
                f"Queued {len(OTHERS)} events again", timeout=WAIT_MS)
            await until(lambda: len(receiver.counts) == 1 + len(OTHERS), 20,
                        lambda: f"recovered: {receiver.counts}")
            async with http.get(f"{d.base_url}/v1/webhook_endpoints/{endpoint['id']}") as resp:
                assert (await resp.json())["disabled"] is False

            # purge asks for confirmation: cancel keeps the entries, confirm deletes them
            client = redis.Redis(port=redis_server.port)
            try:
                client.lpush("payflow_jobs", "not a job", "neither is this")
            finally:
                client.close()
            await page.click("#nav a[data-view=dead]")
            await page.click(".segmented button[data-queue=payflow_jobs]")
            await expect(page.locator("tr[data-entry]")).to_have_count(2, timeout=WAIT_MS)
            await page.click("#purge")
            await expect(dialog).to_contain_text("Purge the dead letters of payflow_jobs?")
            await shot(page, "purge-confirmation")
            await page.click("#dialog-cancel")
            await expect(dialog).to_be_hidden()
            await expect(page.locator("tr[data-entry]")).to_have_count(2)
            await page.click("#purge")
            await page.click("#dialog-ok")
            await expect(page.locator("#notice")).to_contain_text(
                "Deleted 2 dead letters of payflow_jobs", timeout=WAIT_MS)
            await expect(page.locator("tr[data-entry]")).to_have_count(0, timeout=WAIT_MS)

            # the overview: depths, the rates the daemon publishes, the daemon itself
            await page.click("#nav a[data-view=overview]")
            card = page.locator(".queue-card[data-queue=payflow_jobs]")
            await expect(card.locator(".stat").nth(3)).to_contain_text("0", timeout=WAIT_MS)
            daemon_row = page.locator("tr[data-daemon]")
            await expect(daemon_row).to_have_count(1)
            await expect(daemon_row.locator(".badge")).to_have_text("alive")
            await expect(page.locator(".chart-svg path")).to_have_count(4, timeout=WAIT_MS)
            await page.wait_for_timeout(2500)  # a few more samples on the charts
            await shot(page, "overview")
            assert errors == []
    finally:
        await receiver.stop()


async def test_a_wrong_key_is_refused(browser: Browser, make_daemon: Callable[..., Daemon],
                                      redis_server: RedisServer) -> None:
    d = make_daemon(redis_server.url, PAYFLOW_API_KEYS=f"ops:{KEY}")
    page, errors = await open_page(browser, f"{d.base_url}/dashboard")
    await sign_in(page, "sk_wrong")
    error = page.locator("#login-error")
    await expect(error).to_be_visible(timeout=WAIT_MS)
    await expect(error).to_contain_text("This API key was refused")
    await expect(page.locator("#app")).to_be_hidden()
    assert await page.evaluate("sessionStorage.getItem('payflow.apiKey')") is None
    await shot(page, "wrong-key")
    # the right key then works, and signing out forgets it
    await sign_in(page, KEY)
    await expect(page.locator(".queue-card")).to_have_count(2, timeout=WAIT_MS)
    await page.click("#sign-out")
    await expect(page.locator("#login-form")).to_be_visible()
    assert await page.evaluate("sessionStorage.getItem('payflow.apiKey')") is None
    assert errors == []


async def test_an_open_api_needs_no_sign_in(browser: Browser,
                                            make_daemon: Callable[..., Daemon],
                                            redis_server: RedisServer) -> None:
    d = make_daemon(redis_server.url)  # no API key configured
    page, errors = await open_page(browser, f"{d.base_url}/dashboard#/dead")
    await expect(page.locator(".segmented button")).to_have_count(2, timeout=WAIT_MS)
    await expect(page.locator("#login")).to_be_hidden()
    await expect(page.locator(".empty")).to_have_text("No dead letters in this queue.")
    # a payment that does not exist: the page says so, and stays live
    await page.goto(f"{d.base_url}/dashboard#/payments/pay_nope")
    await expect(page.locator("#view-error")).to_have_text(
        "No payment has the id 'pay_nope'.", timeout=WAIT_MS)
    await page.wait_for_timeout(2500)  # a poll later
    await expect(page.locator("#live")).to_contain_text("Live")
    await page.click("#nav a[data-view=payments]")
    await expect(page.locator("#view-error")).to_be_hidden()
    assert errors == []
