"""The dashboard and /metrics against a running stack: one ``twistd allq-server`` and
one ``twistd allq-client`` on 127.0.0.1.

The browser test drives Debian's ``chromium`` (``scripts/bootstrap.sh`` installs
it) through Playwright's Python package, given the binary by ``executable_path``
(``playwright install`` is never used). Without a browser the test is skipped on a
developer's machine and fails under ``CI=true``, so CI cannot pass without it.

Set ``ALLQ_UPDATE_SCREENSHOT=1`` to write the README's ``docs/dashboard.png``;
otherwise the screenshot goes to the test's temporary directory, so a test run
leaves the working tree as it was.

HTTP calls block (urllib) and every wait is bounded (Playwright's ``expect``
timeouts, :data:`WAIT`).
"""

import os
import shutil
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.servers import REPO_ROOT, Daemons
from tests.test_client_integration import Api, start_client

pytestmark = pytest.mark.integration

CHROMIUM = os.environ.get("ALLQ_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
SCREENSHOT = REPO_ROOT / "docs" / "dashboard.png"
#: Seconds any one thing may take to show up (the page polls every 1.5 s, the
#: client refreshes the stats behind /metrics every 5 s).
WAIT = 20.0
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def playwright_or_skip():
    """Playwright's sync API, or skip (fail under CI=true) when it or chromium is missing."""
    problem = None
    try:
        from playwright import sync_api
    except ImportError:
        problem = "the playwright package is missing (pip install -e '.[test]')"
    if problem is None and not os.access(CHROMIUM, os.X_OK):
        problem = (f"{CHROMIUM} is missing: scripts/bootstrap.sh installs Debian's chromium "
                   "(or set ALLQ_CHROMIUM to a Chromium binary)")
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the dashboard browser test cannot run in CI: {problem}")
        pytest.skip(problem)
    return sync_api


@pytest.fixture
def sync_api():
    """Playwright's sync API; requested before ``stack`` so a skip starts no daemon."""
    return playwright_or_skip()


@pytest.fixture
def stack(tmp_path):
    """One server and one client; the client's :class:`Api` once the server is up."""
    with Daemons(tmp_path) as daemons:
        keys = daemons.generate_keys()
        server = daemons.start_server(keys)
        api = start_client(daemons, keys, [server])
        api.wait_until(lambda health: health["up"] == 1)
        yield api, server


def fetch_text(url: str) -> tuple[int, str, str]:
    with urllib.request.urlopen(url, timeout=15) as response:
        return response.status, response.headers["content-type"], response.read().decode()


def metric_samples(api: Api) -> dict:
    status, content_type, text = fetch_text(api.base + "/metrics")
    assert status == 200 and content_type.startswith("text/plain"), content_type
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_dashboard_in_a_browser(sync_api, stack, tmp_path):
    """The page shows the server up, a tube's ready count after puts, its buried count
    after a bury, its jobs panel lists the buried job (error, server) and kicks it back
    to ready, and kick all / pause / peek / clear work from its buttons."""
    expect = sync_api.expect
    expect.set_options(timeout=WAIT * 1000)
    api, server = stack

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 760})
            page_errors = []
            page.on("pageerror", lambda error: page_errors.append(str(error)))
            page.goto(api.base + "/")

            server_row = page.locator(f'tr[data-server="{server.host}:{server.port}"]')
            expect(server_row.locator(".status")).to_have_text("up")
            expect(server_row.locator('[data-field="server_id"]')).to_have_text(server.server_id)

            # A put shows up in the tube's ready count, and so does the next one.
            body = "<b>bold?</b> & <img src=x onerror=window.pwned=1>"
            api.put("emails", body)
            row = page.locator('tr[data-tube="emails"]')
            expect(row.locator('[data-field="ready"]')).to_have_text("1")
            api.put("emails", "second")
            expect(row.locator('[data-field="ready"]')).to_have_text("2")

            # Bury one over HTTP: buried 1, ready 1.
            status, job = api.call("GET", "/job", tube="emails")
            assert status == 200 and job["body"] == body, job
            error = "ValueError: <i>boom</i>"  # a worker's recorded error, shown as text
            assert api.call("PUT", "/bury", job_id=job["id"], error=error)[0] == 200
            expect(row.locator('[data-field="buried"]')).to_have_text("1")
            expect(row.locator('[data-field="ready"]')).to_have_text("1")

            # The tube's jobs panel lists the buried job with its error and server.
            row.locator('button[data-action="jobs"]').click()
            expect(page.locator("#jobs-title")).to_have_text("Jobs in emails")
            buried_row = page.locator(f'#jobs-table tr[data-job-id="{job["id"]}"]')
            expect(buried_row).to_contain_text(error)
            expect(buried_row).to_contain_text(server.server_id)
            expect(page.locator("#jobs-range")).to_have_text("1–1 of 1")

            # Look at it: its body is shown as text, never as markup.
            buried_row.locator('button[data-action="view"]').click()
            expect(page.locator("#peek-body")).to_have_text(body)
            expect(page.locator('#peek [data-field="id"]')).to_have_text(job["id"])
            expect(page.locator('#peek [data-field="server"]')).to_have_text(server.server_id)
            assert page.locator("#peek-body img, #peek-body b").count() == 0
            assert page.evaluate("window.pwned") is None
            expect(page.locator("#peek-error")).to_have_text(error)
            assert page.locator("#peek-error i").count() == 0

            # Kick that one job from its row: buried drops to 0, it is ready again
            # and the ready list shows it.
            buried_row.locator('button[data-action="kick-job"]').click()
            expect(page.locator("#toast")).to_contain_text("Kicked " + job["id"])
            expect(row.locator('[data-field="buried"]')).to_have_text("0")
            expect(row.locator('[data-field="ready"]')).to_have_text("2")
            expect(page.locator("#jobs-empty")).to_have_text("No buried job in emails.")
            page.locator('#jobs-states button[data-state="ready"]').click()
            expect(page.locator(f'#jobs-table tr[data-job-id="{job["id"]}"]')).to_be_visible()
            expect(page.locator("#jobs-range")).to_have_text("1–2 of 2")

            # Bury it again and kick every buried job of the tube, confirming.
            status, again = api.call("GET", "/job", tube="emails")
            assert api.call("PUT", "/bury", job_id=again["id"])[0] == 200
            expect(row.locator('[data-field="buried"]')).to_have_text("1")
            page.once("dialog", lambda dialog: dialog.accept())
            row.locator('button[data-action="kick"]').click()
            expect(row.locator('[data-field="buried"]')).to_have_text("0")
            expect(row.locator('[data-field="ready"]')).to_have_text("2")
            expect(page.locator("#toast")).to_contain_text("Kicked 1 buried job")

            # Pause from the page: no job is handed out until it is resumed.
            row.locator('button[data-action="pause"]').click()
            expect(row.locator('[data-field="state"]')).to_have_text("paused")
            assert api.call("GET", "/job", tube="emails") == (200, {})
            row.locator('button[data-action="unpause"]').click()
            expect(row.locator('[data-field="state"]')).to_have_text("active")

            # Drain (confirmed): puts are refused until it is undrained.
            page.once("dialog", lambda dialog: dialog.accept())
            row.locator('button[data-action="drain"]').click()
            expect(row.locator('[data-field="state"]')).to_have_text("draining")
            assert api.call("POST", "/job", {"tube": "emails", "body": "no"})[0] == 503
            row.locator('button[data-action="undrain"]').click()
            expect(row.locator('[data-field="state"]')).to_have_text("active")

            # Clear a tube from the page, confirming the browser's dialog.
            api.put("scratch", "to be cleared")
            scratch = page.locator('tr[data-tube="scratch"]')
            expect(scratch.locator('[data-field="ready"]')).to_have_text("1")
            page.once("dialog", lambda dialog: dialog.accept())
            scratch.locator('button[data-action="clear"]').click()
            expect(page.locator("#toast")).to_contain_text("Cleared 1 job from scratch")
            status, stats = api.call("GET", "/stats")
            assert all(t["ready"] == 0 for s in stats for t in s["stats"]
                       if t["tube"] == "scratch"), stats

            _stage_screenshot(api, page, expect)
            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.read_bytes().startswith(PNG_SIGNATURE)
            if os.environ.get("ALLQ_UPDATE_SCREENSHOT") == "1":
                SCREENSHOT.parent.mkdir(exist_ok=True)
                shutil.copyfile(shot, SCREENSHOT)
            assert page_errors == []
        finally:
            browser.close()


def _stage_screenshot(api: Api, page, expect) -> None:
    """A few busier tubes, so the README's picture shows every column in use."""
    for i in range(6):
        api.put("thumbnails", f"resize photo {i}")
    for _ in range(4):  # finished jobs make the done/s column move
        status, job = api.call("GET", "/job", tube="thumbnails")
        assert api.call("DELETE", "/job", job_id=job["id"])[0] == 200
    status, job = api.call("GET", "/job", tube="thumbnails")  # one stays reserved
    for i in range(3):
        api.call("POST", "/job", {"tube": "reports", "body": f"monthly {i}", "delay": 3600})
    status, job = api.call("GET", "/job", tube="emails")
    assert api.call("PUT", "/bury", job_id=job["id"])[0] == 200
    row = page.locator('tr[data-tube="reports"]')
    expect(row.locator('[data-field="delayed"]')).to_have_text("3")
    expect(page.locator('tr[data-tube="emails"] [data-field="buried"]')).to_have_text("1")
    page.locator('tr[data-tube="thumbnails"] button[data-action="peek"]').click()
    expect(page.locator("#peek-body")).to_have_text("resize photo 5")
    expect(page.locator("#peek-error")).to_be_hidden()  # this job never failed
    page.locator("#toast").evaluate("node => { node.hidden = true; }")
    page.mouse.move(0, 0)  # no hover highlight in the picture


def test_metrics_of_a_running_client(stack):
    """/metrics of a real client: the server is up, puts and gets are counted, and the
    tube's depth arrives with the next stats refresh."""
    api, server = stack
    for i in range(3):
        api.put("metered", f"job {i}")
    status, job = api.call("GET", "/job", tube="metered")
    assert status == 200 and job

    deadline = time.monotonic() + WAIT
    while True:
        found = metric_samples(api)
        ready = found.get(("allq_tube_jobs", frozenset(
            {"server": server.server_id, "tube": "metered", "state": "ready"}.items())))
        if ready == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert ready == 2, sorted(k for k in found if k[0] == "allq_tube_jobs")
    address = f"{server.host}:{server.port}"
    assert found[("allq_client_server_up", frozenset(
        {"address": address, "server": server.server_id}.items()))] == 1
    assert found[("allq_client_jobs_total", frozenset(
        {"tube": "metered", "action": "put"}.items()))] == 3
    assert found[("allq_client_jobs_total", frozenset(
        {"tube": "metered", "action": "get"}.items()))] == 1
    assert found[("allq_client_request_duration_seconds_count", frozenset(
        {"method": "POST", "route": "/job", "status": "2xx"}.items()))] == 3


def test_dashboard_asks_for_the_admin_token_once(sync_api, tmp_path):
    """A client on every interface with --admin-token: the page asks for the token
    once, then polls with it (the counts show up)."""
    from tests.test_client_integration import CLIENT_SERVING

    token = "dashboard-admin-token-0123456789"
    expect = sync_api.expect
    expect.set_options(timeout=WAIT * 1000)
    with Daemons(tmp_path) as daemons:
        keys = daemons.generate_keys()
        server = daemons.start_server(keys)
        client = daemons.spawn(
            "allq-client", ["--keys", str(keys.directory), "--servers",
                            f"{server.host}:{server.port}", "--http", "tcp:0:interface=0.0.0.0",
                            "--admin-token", token, "--jsonl", "none", "--unix", "none"])
        port = int(client.wait_for_log(CLIENT_SERVING)["port"])
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                asked = []

                def answer(dialog):
                    asked.append(dialog.message)
                    dialog.accept(token)

                page.on("dialog", answer)
                page.goto(f"http://127.0.0.1:{port}/")
                server_row = page.locator(f'tr[data-server="{server.host}:{server.port}"]')
                expect(server_row.locator(".status")).to_have_text("up")
                expect(page.locator("#summary-text")).to_contain_text("1/1 servers up")
                page.wait_for_timeout(2000)  # more polls: none asks again
                assert len(asked) == 1 and "admin token" in asked[0], asked
            finally:
                browser.close()
