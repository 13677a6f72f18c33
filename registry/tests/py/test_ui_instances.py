"""The Instances page and the KV page's warning on berth's own keys, in a real headless Chromium.

The records are written through the real registry's KV API exactly where and how the master
writes them (`berth/instances/<id>`, JSON of `InstanceRecord`), plus records with fields this UI
does not know yet and one that is not JSON at all. Screenshots go to $BERTH_TEST_OUTPUT/ui/.
"""

import base64
import json
import time

from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait
from ui_kit import WAIT, Api, Page, Registry, browser, page, registry  # noqa: F401 (fixtures)

LOG_NAME = "instances"
PREFIX = "berth/instances/"
COMMIT_A = "3f2a9c1e" + "0" * 32
COMMIT_B = "b7d4e5f6" + "1" * 32
WORKER = {"id": "node-a/berth-worker:node-a", "node": "node-a", "url": "http://10.0.0.5:8600", "address": "10.0.0.5"}


def record(id, state, **fields):
    """An instance record shaped as the master writes it (master/model/src/record.rs)."""
    rec = {
        "id": id,
        "user": "alice",
        "project": id.split("-")[0],
        "commit": COMMIT_A,
        "built_commit": COMMIT_A,
        "built_at": "2026-12-02T09:00:00.000Z",
        "running_commit": COMMIT_A if state == "running" else None,
        "repo": f"http://git.local/alice/{id}.git",
        "worker": WORKER,
        "state": state,
        "endpoints": [],
        "error": None,
        "moves": [],
        "created_at": "2026-12-02T08:59:00.000Z",
        "updated_at": "2026-12-02T09:00:01.000Z",
    }
    rec.update(fields)
    return rec


def put(registry, id, value):
    body = value if isinstance(value, bytes) else json.dumps(value).encode()
    assert registry.api.ok("PUT", f"/v1/kv/{PREFIX}{id}", body) is True


def rows(page):
    return page.d.find_elements(By.CSS_SELECTOR, "#instances tbody tr")


def row(page, id):
    return page.find(f'#instances tr[data-instance="{id}"]')


def problem_count(page):
    return int(page.find("#inst-problem-count").get_attribute("data-count"))


def wait_for(page, what, cond):
    """Waits for cond (polling the DOM); returns the seconds it took."""
    start = time.monotonic()
    WebDriverWait(page.d, WAIT, poll_frequency=0.05).until(lambda d: cond(), message=what)
    return time.monotonic() - start


def test_instances_page_shows_records_problems_and_live_changes(page, registry):
    api = registry.api
    web = {"service": "web", "container_port": 80, "protocol": "tcp", "host": "127.0.0.1", "host_port": 32768}
    dns = {"service": "dns", "container_port": 53, "protocol": "udp", "host": "127.0.0.1", "host_port": 32769}
    put(registry, "shop-1", record("shop-1", "running", endpoints=[web, dns], commit=COMMIT_B))
    put(
        registry,
        "blog-2",
        record(
            "blog-2",
            "failed",
            # As the worker writes it: the failed service's last log lines after the message.
            error={
                "step": "build",
                "message": "service web: RUN npm ci exited with 1; last log lines:\n[web] #6 npm ERR! 404",
            },
        ),
    )
    # Fields other helpers are adding (a `degraded` state, per-service status, log lines) and
    # fields nobody knows yet must show, not break the page.
    put(
        registry,
        "api-3",
        record(
            "api-3",
            "degraded",
            running_commit=COMMIT_A,
            services=[
                {"name": "web", "state": "running"},
                {"name": "queue", "state": "restarting", "restarts": 7, "log_lines": ["FATAL: DATABASE_URL is not set"]},
                {"name": "seed", "state": "completed", "exit_code": 0},
            ],
            rollout={"phase": "idle"},
        ),
    )
    put(registry, "old-4", {"id": "old-4", "state": "stopped"})
    put(registry, "broken-5", b"{not json")

    page.open("#/instances")
    wait_for(page, "five rows", lambda: len(rows(page)) == 5)
    order = [r.get_attribute("data-instance") for r in rows(page)]
    assert set(order[:3]) == {"api-3", "blog-2", "broken-5"}, f"problems are not listed first: {order}"
    assert problem_count(page) == 3
    counts = page.find("#inst-counts").text
    assert "3 with problems of 5 instances: api-3, blog-2, broken-5" in counts, counts

    shop = row(page, "shop-1")
    assert shop.get_attribute("data-problem") == "false"
    assert "running" in shop.text and "alice / shop" in shop.text and "node-a" in shop.text, shop.text
    link = shop.find_element(By.CSS_SELECTOR, 'a[href="http://127.0.0.1:32768/"]')
    assert link.text == "127.0.0.1:32768"
    assert "127.0.0.1:32769 (udp)" in shop.text and page.absent('a[href="http://127.0.0.1:32769/"]')
    assert COMMIT_A[:7] in shop.text and COMMIT_B[:7] in shop.text, "running and latest commits not shown"

    blog = row(page, "blog-2")
    assert blog.get_attribute("data-problem") == "true"
    assert "⚠ Problem" in blog.text and "failed" in blog.text
    cell = blog.find_element(By.CSS_SELECTOR, "td.last-error").text
    assert cell == "build: service web: RUN npm ci exited with 1", f"the list shows the error's log lines: {cell!r}"
    api3 = row(page, "api-3")
    assert "degraded" in api3.text and "crash-looping: queue (restarting, 7 restarts)" in api3.text, api3.text
    assert "unreadable" in row(page, "broken-5").text
    assert "stopped" in row(page, "old-4").text
    page.shot("instances")
    page.narrow("instances")

    # The filter narrows the rows without a reload.
    page.type("#inst-filter", "blog")
    visible = [r.get_attribute("data-instance") for r in rows(page) if r.is_displayed()]
    assert visible == ["blog-2"], visible
    page.type("#inst-filter", "")

    # Live: changes to the records reach the open page through blocking queries, no reload.
    marker = page.d.execute_script("return window.performance.timeOrigin")
    put(registry, "shop-1", record("shop-1", "failed", error={"step": "start", "message": "port 32768 in use"}))
    took = wait_for(page, "shop-1 turns into a problem", lambda: row(page, "shop-1").get_attribute("data-problem") == "true")
    assert problem_count(page) == 4
    assert "port 32768 in use" in row(page, "shop-1").text
    print(f"record change to page update: {took:.2f}s")
    assert took < 3, f"the page took {took:.1f}s to show a changed record"
    put(registry, "new-6", record("new-6", "building"))
    wait_for(page, "a new record appears", lambda: len(page.d.find_elements(By.CSS_SELECTOR, '#instances tr[data-instance="new-6"]')) == 1)
    api.ok("DELETE", f"/v1/kv/{PREFIX}broken-5")
    wait_for(page, "a deleted record goes", lambda: page.absent('#instances tr[data-instance="broken-5"]'))
    assert problem_count(page) == 3
    assert page.d.execute_script("return window.performance.timeOrigin") == marker, "the page was reloaded"
    blocking = page.d.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name).filter(n => n.includes('/v1/kv/berth/instances/?recurse&index='))"
    )
    assert blocking, "no blocking query (?index=) on the records prefix"
    page.shot("instances-after-changes")

    # The detail view: every field, services with their states and log lines, unknown fields.
    row(page, "api-3").find_element(By.LINK_TEXT, "api-3").click()
    page.wait_hash("#/instances/api-3")
    assert "crash-looping: queue" in page.find("#inst-problems").text
    summary = page.find("#inst-summary-panel").text
    for text in ("degraded", "alice", "api", "node-a", "http://10.0.0.5:8600", "http://git.local/alice/api-3.git"):
        assert text in summary, f"{text!r} missing from the summary: {summary}"
    releases = page.find("#inst-releases").text
    assert COMMIT_A in releases and "2026-12-02T09:00:00.000Z" in releases, releases
    queue = page.find('#inst-service-list tr[data-service="queue"]')
    assert "restarting" in queue.text and "7" in queue.text and "FATAL: DATABASE_URL is not set" in queue.text, queue.text
    assert "completed" in page.find('#inst-service-list tr[data-service="seed"]').text
    assert "phase" in page.find("#inst-other").text
    assert page.find("#inst-raw").get_attribute("href").endswith("#/kv/berth/instances/api-3")
    page.shot("instance-api-3")
    page.narrow("instance-api-3")

    # The detail view follows its record too: recovery clears the problem.
    put(registry, "api-3", record("api-3", "running", services=[{"name": "web", "state": "running"}]))
    wait_for(page, "api-3 recovers", lambda: page.absent("#inst-problems"))
    assert "running" in page.find("#inst-summary-panel").text

    # A failed instance's detail shows its error in full.
    page.go("#/instances/shop-1")
    error = page.find("#inst-error").text
    assert "start" in error and "port 32768 in use" in error, error
    page.shot("instance-shop-1-failed")

    # Deleted while shown: the page says so instead of keeping the stale record.
    api.ok("DELETE", f"/v1/kv/{PREFIX}shop-1")
    page.find("#inst-missing")

    # The log lines a worker appends to its message show as log lines, not in the message.
    page.go("#/instances/blog-2")
    message = page.find("#inst-error .error-message").text
    assert message == "service web: RUN npm ci exited with 1", message
    assert "[web] #6 npm ERR! 404" in page.find("#inst-error pre.logs").text

    api.ok("DELETE", f"/v1/kv/{PREFIX}?recurse")
    page.go("#/instances")
    assert "No instances yet" in page.find(".empty").text
    assert problem_count(page) == 0


def test_kv_warns_before_changing_berths_records(page, registry):
    api = registry.api
    value = json.dumps(record("shop-1", "running"))
    put(registry, "shop-1", value.encode())
    api.ok("PUT", "/v1/kv/apps/config", b"plain")

    page.open("#/kv/")
    berth = page.find('#kv-list a[href="#/kv/berth/"]')
    assert "managed by berth" in berth.text
    assert "managed by berth" not in page.find('#kv-list a[href="#/kv/apps/"]').text
    page.go("#/kv/berth/instances/")
    assert "Managed by berth" in page.find("#kv-owned-note").text
    page.shot("kv-berth-folder-warning")

    page.go("#/kv/berth/instances/shop-1")
    note = page.find("#kv-owned-note").text
    assert "Managed by berth" in note and "master" in note, note
    page.find('#kv-owned-note a[href="#/instances"]')

    # Edit asks first; cancel leaves the value alone and no editor open.
    page.click("#kv-edit")
    dialog = page.find("dialog#confirm[open]")
    assert "managed by berth" in dialog.text and "Edit anyway" in dialog.text, dialog.text
    page.shot("kv-berth-edit-confirm")
    page.click("#confirm-cancel")
    WebDriverWait(page.d, WAIT).until_not(ec.visibility_of_element_located((By.CSS_SELECTOR, "dialog#confirm")))
    assert page.absent("#kv-edit-form")

    # Confirmed, the edit goes through.
    page.click("#kv-edit")
    page.confirm()
    edited = value.replace('"running"', '"stopped"', 1)
    page.type("#kv-edit-value", edited)
    page.click("#kv-save")
    page.wait_text("#kv-value", "stopped")
    assert json.loads(base64.b64decode(api.kv(f"{PREFIX}shop-1")["Value"]))["state"] == "stopped"

    # Delete asks with the warning; cancel keeps the key.
    page.click("#kv-delete")
    dialog = page.find("dialog#confirm[open]")
    assert "managed by berth" in dialog.text and "Delete anyway" in dialog.text, dialog.text
    page.click("#confirm-cancel")
    WebDriverWait(page.d, WAIT).until_not(ec.visibility_of_element_located((By.CSS_SELECTOR, "dialog#confirm")))
    assert api.kv(f"{PREFIX}shop-1") is not None

    # Keys outside berth's prefixes keep the plain flow: no note, Edit opens the editor at once.
    page.go("#/kv/apps/config")
    page.find("#kv-value")
    assert page.absent("#kv-owned-note")
    page.click("#kv-edit")
    page.find("#kv-edit-form")
    assert page.absent("dialog#confirm[open]")

    api.ok("DELETE", "/v1/kv/berth/?recurse")
    api.ok("DELETE", "/v1/kv/apps/?recurse")


MANAGEMENT = "7e0b3c55-1f7a-4c2e-9d41-5a6b8c9d0e12"


def test_instances_page_needs_only_a_read_token(browser, registry):
    acl = Registry("instances-acl", ["--acl-master-token", MANAGEMENT], token=MANAGEMENT)
    try:
        admin = Api(acl.base, MANAGEMENT)
        admin.ok("PUT", f"/v1/kv/{PREFIX}shop-1", json.dumps(record("shop-1", "running")).encode())
        admin.ok("PUT", f"/v1/kv/{PREFIX}blog-2", json.dumps(record("blog-2", "failed")).encode())
        admin.ok("PUT", "/v1/acl/policy", {"Name": "records-read", "Rules": f'key_prefix "{PREFIX}" {{ policy = "read" }}'})
        reader = admin.ok("PUT", "/v1/acl/token", {"Description": "records reader", "Policies": [{"Name": "records-read"}]})["SecretID"]
        nobody = admin.ok("PUT", "/v1/acl/token", {"Description": "no policy"})["SecretID"]

        page = Page(browser, acl.base)
        page.open("#/acl")
        browser.execute_script("sessionStorage.clear()")
        page.js_errors()
        page.type("#acl-token", reader)
        page.click("#acl-save")
        page.wait_text("#acl-status", "records reader")
        page.go("#/instances")
        wait_for(page, "two rows", lambda: len(rows(page)) == 2)
        assert problem_count(page) == 1
        page.shot("instances-read-token")

        # Live updates keep working with the read token.
        admin.ok("PUT", f"/v1/kv/{PREFIX}shop-1", json.dumps(record("shop-1", "degraded")).encode())
        wait_for(page, "shop-1 degraded", lambda: row(page, "shop-1").get_attribute("data-problem") == "true")

        # A token that may not read the records is told so, not shown an empty cluster.
        page.go("#/acl")
        page.type("#acl-token", nobody)
        page.click("#acl-save")
        page.wait_text("#acl-status", "no policy")
        page.go("#/instances")
        page.wait_text("#inst-denied", "Permission denied")
        assert page.absent("#instances tbody tr") and page.absent("#inst-problem-count")
        page.shot("instances-no-read")
        browser.execute_script("sessionStorage.clear()")
        assert page.js_errors() == []
    finally:
        acl.stop()
