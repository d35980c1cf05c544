"""The web view in a real browser: headless Chromium (Debian's) driven by Playwright.

A router, the demo dispatcher and ``twistd cauldron-web`` run as separate
processes, as a user starts them; the page is checked only through what
Chromium shows, so a broken push or write path fails here.  Nothing is
downloaded: Playwright is pointed at ``/usr/bin/chromium``.  Waits are
Playwright's (``expect``) or output lines, never sleeps.

Set ``CAULDRON_WEB_SCREENSHOT=PATH`` to save the service page there (the
picture in ``docs/web-service-page.png`` was made so).
"""

import os
import re
import signal

import pytest
from processes import REPO, cauldron, freePorts
from test_router_processes import FOREGROUND, READY, Processes, Setup

CHROMIUM = "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    pytest.skip("no /usr/bin/chromium (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

DEMO = os.path.join(REPO, "docs", "examples", "demo.toml")
SERVING = re.compile(r"cauldron-web: serving (?P<url>http://127\.0\.0\.1:\d+/)")
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync"]
#: milliseconds Playwright waits for what the page should show
EXPECT = 20000


class System:
    """A router, the demo dispatcher and the web view, each its own process."""

    def __init__(self, tmp):
        self.setup = Setup(tmp)
        self.processes = Processes(self.setup)
        self.processes.router()
        self.dispatcher = self.startDispatcher()
        web = self.processes.start([*FOREGROUND, "cauldron-web", "-c", self.setup.config,
                                    "--listen", "127.0.0.1:%d" % freePorts(1)[0]])
        self.url = web.waitForLine(SERVING).group("url")

    def startDispatcher(self):
        process = self.processes.start([*FOREGROUND, "cauldron-dispatcher", "-c",
                                        self.setup.config, "-s", "demo", "-k", DEMO,
                                        "--heartbeat", "0.2"])
        process.waitForLine(READY)
        return process

    def cauldron(self, *args):
        result = cauldron(*args[:1], "-c", self.setup.config, *args[1:])
        assert result.returncode == 0, result.stderr
        return result.stdout


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    running = System(tmp_path_factory.mktemp("web"))
    try:
        yield running
    finally:
        running.processes.cleanup()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, args=BROWSER_ARGS, headless=True,
            viewport={"width": 1000, "height": 700},
        )
        try:
            yield context
        finally:
            context.close()


@pytest.fixture(scope="module")
def page(system, browser):
    """The service page of ``demo``, once drawn."""
    tab = browser.new_page()
    tab.goto(system.url + "service/demo")
    sync_api.expect(tab.locator("#row-TEMP")).to_be_visible(timeout=EXPECT)
    yield tab
    tab.close()


def expect(locator):
    return sync_api.expect(locator)


def test_servicesPage(system, browser):
    """The services page lists the demo service as live, linking to its page."""
    tab = browser.new_page()
    try:
        tab.goto(system.url)
        row = tab.locator('#services tr[data-service="demo"]')
        expect(row).to_have_attribute("data-state", "live", timeout=EXPECT)
        expect(row.locator("a")).to_have_attribute("href", "/service/demo")
    finally:
        tab.close()


def test_valueFollowsModify(system, page):
    """A ``cauldron modify`` shows on the open page without reloading it."""
    expect(page.locator("#value-TEMP")).to_have_text("20.00", timeout=EXPECT)
    system.cauldron("modify", "-s", "demo", "TEMP=42.5")
    expect(page.locator("#value-TEMP")).to_have_text("42.50", timeout=EXPECT)


def test_writeThroughPage(system, page):
    """Numbers, an enumerated choice and a switch written from the page reach the dispatcher."""
    row = page.locator("#row-SETPOINT")
    row.locator("input").fill("123.5")
    row.locator("button", has_text="set").click()
    expect(page.locator("#message-SETPOINT")).to_contain_text("123.5", timeout=EXPECT)
    expect(page.locator("#value-SETPOINT")).to_have_text("123.5", timeout=EXPECT)
    page.locator("#row-MODE select").select_option("STANDBY")
    expect(page.locator("#value-MODE")).to_have_text("STANDBY", timeout=EXPECT)
    page.locator("#row-POWER input[type=checkbox]").check()
    expect(page.locator("#value-POWER")).to_have_text("1", timeout=EXPECT)
    shown = system.cauldron("show", "-s", "demo", "SETPOINT", "MODE", "POWER")
    assert "SETPOINT = 123.5" in shown, shown
    assert "MODE = STANDBY" in shown, shown
    assert "POWER = 1" in shown, shown
    shot = os.environ.get("CAULDRON_WEB_SCREENSHOT")
    if shot:
        for value in ("30", "36.5", "42.5"):  # something to plot
            system.cauldron("modify", "-s", "demo", "TEMP=" + value)
            expect(page.locator("#value-TEMP")).to_have_text("%.2f" % float(value),
                                                             timeout=EXPECT)
        page.locator("#row-TEMP button.plot").click()
        page.screenshot(path=shot)


def test_refusedWriteShowsError(system, page):
    """An out-of-range write shows the dispatcher's own words next to the field."""
    row = page.locator("#row-TEMP")
    row.locator("input").fill("500")
    row.locator("button", has_text="set").click()
    message = page.locator("#message-TEMP")
    expect(message).to_contain_text("BadValue", timeout=EXPECT)
    expect(message).to_contain_text("above the maximum 400")
    assert "TEMP = 42.5" in system.cauldron("show", "-s", "demo", "TEMP")


def test_lostMark(system, page):
    """A killed dispatcher shows the lost mark; restarted, the mark clears and values flow."""
    expect(page.locator("#lost")).to_be_hidden()
    system.dispatcher.signal(signal.SIGKILL)
    system.dispatcher.wait()
    expect(page.locator("#lost")).to_be_visible(timeout=EXPECT)
    expect(page.locator("#lost")).to_contain_text("demo")
    expect(page.locator("#row-TEMP")).to_have_class(re.compile(r"\blost\b"))
    system.dispatcher = system.startDispatcher()
    expect(page.locator("#lost")).to_be_hidden(timeout=EXPECT)
    system.cauldron("modify", "-s", "demo", "TEMP=77")
    expect(page.locator("#value-TEMP")).to_have_text("77.00", timeout=EXPECT)


def test_demoAndWebSideBySide(tmp_path, browser):
    """``cauldron demo`` and ``cauldron web``: the demo's values move, a write shows.

    What a new user does first: two commands, one page.  TEMP is the demo's
    simulated sensor, re-read every second, so it must move with nobody
    writing; MODE written from the page reaches the dispatcher.
    """
    import sys

    setup = Setup(tmp_path)
    started = Processes(setup)
    try:
        demo = started.start([sys.executable, "-m", "cauldron", "demo", "-c", setup.config])
        demo.waitForLine(re.compile(r"Stop with Ctrl-C"))
        web = started.start([sys.executable, "-m", "cauldron", "web", "-c", setup.config,
                             "--listen", "127.0.0.1:%d" % freePorts(1)[0]])
        url = web.waitForLine(re.compile(r"cauldron web: serving (?P<url>http://\S+/)"))
        tab = browser.new_page()
        try:
            tab.goto(url.group("url") + "service/demo")
            value = tab.locator("#value-TEMP")
            expect(value).to_have_text(re.compile(r"^\d+\.\d{3}$"), timeout=EXPECT)
            expect(value).not_to_have_text(value.text_content(), timeout=EXPECT)  # it moves
            tab.locator("#row-MODE select").select_option("ON")
            expect(tab.locator("#value-MODE")).to_have_text("ON", timeout=EXPECT)
        finally:
            tab.close()
        shown = cauldron("show", "-c", setup.config, "-s", "demo", "MODE")
        assert shown.stdout == "MODE = ON\n", shown
        web.signal(signal.SIGINT)
        assert web.wait() == 0, web.text()
        assert "Traceback" not in web.text() + demo.text()
    finally:
        started.cleanup()
