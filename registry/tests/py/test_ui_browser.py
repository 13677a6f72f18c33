"""Registry web UI in a real headless Chromium, driven over WebDriver by Selenium.

Each test starts the real `berth-registry` binary on a free port, drives the pages at /ui/ and
checks the result through the HTTP API (stdlib urllib, not the UI). Screenshots of every page go
to $BERTH_TEST_OUTPUT/ui/ (default test-output/ui/ at the repository root).

Needs: chromium and chromium-driver (Debian), selenium (PyPI), and the binary built
(`cargo build -p berth-registry`; scripts/test.sh builds it before running pytest). Set
BERTH_REGISTRY_BIN to use another binary.
"""

import base64
import json
import urllib.parse

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait
from ui_kit import WAIT, Api, Page, Registry, browser, page, registry  # noqa: F401 (fixtures)


def test_server_redirects_to_the_ui(browser, registry):
    browser.get(registry.base + "/")
    WebDriverWait(browser, WAIT).until(lambda d: "/ui/" in d.current_url)
    assert browser.find_element(By.CSS_SELECTOR, "a.brand").text == "berth registry"


def test_kv_create_edit_delete_through_the_ui(page, registry):
    api = registry.api
    page.open("#/kv/")
    page.find("#kv-new-folder")
    page.shot("kv-root")

    # A folder, through the UI.
    page.click("#kv-new-folder")
    page.type("#kv-create-name", "apps")
    page.shot("kv-new-folder-form")
    page.click("#kv-create-submit")
    page.wait_hash("#/kv/apps/")
    assert "No keys yet" in page.find(".empty").text
    assert api.kv("apps/") is not None, "folder key apps/ was not created"
    page.shot("kv-empty-folder")

    # A key with a JSON value, through the UI; read back through the API.
    value = '{"replicas":2,"image":"web:1.4","ports":[8080]}'
    page.click("#kv-new-key")
    page.type("#kv-create-name", "config")
    page.type("#kv-create-value", value)
    page.click("#kv-create-submit")
    page.wait_hash("#/kv/apps/config")
    entry = api.kv("apps/config")
    assert base64.b64decode(entry["Value"]).decode() == value
    shown = page.find("#kv-value").text
    assert json.loads(shown) == json.loads(value) and "\n" in shown, "JSON is not pretty-printed"

    # Creating the same key again is refused next to the form, not overwritten.
    page.go("#/kv/apps/")
    page.click("#kv-new-key")
    page.type("#kv-create-name", "config")
    page.type("#kv-create-value", "other")
    page.click("#kv-create-submit")
    page.wait_text("#kv-create-form .error", "already exists")
    assert base64.b64decode(api.kv("apps/config")["Value"]).decode() == value

    # Edit: flags set by someone else are kept.
    api.ok("PUT", "/v1/kv/apps/config?flags=42", value.encode())
    page.go("#/kv/apps/config")
    assert page.find("#kv-flags").text == "42"
    page.shot("kv-key-json")
    page.click("#kv-edit")
    page.type("#kv-edit-value", "plain text, edited")
    page.shot("kv-key-edit")
    page.click("#kv-save")
    page.wait_text("#kv-value", "plain text, edited")
    entry = api.kv("apps/config")
    assert base64.b64decode(entry["Value"]) == b"plain text, edited"
    assert entry["Flags"] == 42

    # A change made elsewhere while the editor is open is reported, not overwritten.
    page.click("#kv-edit")
    page.type("#kv-edit-value", "stale edit")
    api.ok("PUT", "/v1/kv/apps/config?flags=42", b"changed elsewhere")
    page.click("#kv-save")
    page.wait_text("#kv-edit-form .error", "changed since this page loaded")
    page.shot("kv-key-edit-conflict")
    assert base64.b64decode(api.kv("apps/config")["Value"]) == b"changed elsewhere"

    # A value that is not UTF-8 is shown as bytes with a note, and cannot be edited.
    api.ok("PUT", "/v1/kv/apps/blob", b"\xff\xfe\x00binary")
    page.go("#/kv/apps/blob")
    assert "not valid UTF-8" in page.find("#kv-binary-note").text
    assert page.absent("#kv-edit")
    page.shot("kv-key-binary")
    page.narrow("kv-key-binary")

    # Delete one key, after the confirmation.
    page.click("#kv-delete")
    page.confirm()
    page.wait_hash("#/kv/apps/")
    assert api.kv("apps/blob") is None

    # Keys with characters that mean something in URLs are listed, opened and shown intact.
    odd = "naïve key #1?x=%41&y"
    api.ok("PUT", "/v1/kv/apps/" + urllib.parse.quote(odd, safe=""), "ünïcödé ✓".encode())
    page.go("#/kv/apps/")
    page.d.find_element(By.XPATH, f'//ul[@id="kv-list"]//span[@class="name"][text()="{odd}"]').click()
    page.wait_text("#kv-value", "ünïcödé ✓")
    assert page.find("#kv-key").text == f"apps/{odd}"
    page.click("#kv-delete")
    page.confirm()
    page.wait_hash("#/kv/apps/")
    assert api.kv("apps/" + urllib.parse.quote(odd, safe="")) is None

    # Filter within the folder.
    api.ok("PUT", "/v1/kv/apps/web/replicas", b"3")
    page.go("#/kv/apps/")
    page.type("#kv-filter", "conf")
    names = [a.text for a in page.d.find_elements(By.CSS_SELECTOR, "#kv-list li:not([hidden]) .name")]
    assert names == ["config"], names
    page.shot("kv-folder-filtered")
    page.type("#kv-filter", "")
    page.find("#kv-list li.folder")
    page.shot("kv-folder")
    page.narrow("kv-folder")

    # Delete the folder recursively, after the confirmation dialog.
    page.click("#kv-delete-folder")
    page.find("dialog#confirm[open]")
    page.shot("kv-delete-confirm")
    page.confirm()
    page.wait_hash("#/kv/")
    for key in ("apps/", "apps/config", "apps/blob", "apps/web/replicas"):
        assert api.kv(key) is None, f"{key} survived the recursive delete"


def test_locked_key_shows_its_session_and_can_be_invalidated(page, registry):
    api = registry.api
    session = api.ok("PUT", "/v1/session/create", {"Name": "deploy-lock", "TTL": "60s", "Behavior": "release"})["ID"]
    assert api.ok("PUT", f"/v1/kv/locks/leader?acquire={session}", b"worker-7") is True

    page.open("#/kv/locks/leader")
    lock = page.find("#kv-lock")
    page.wait_text("#kv-lock", "deploy-lock")
    for text in ("release", session, "serfHealth"):
        assert text in lock.text, f"{text!r} missing from the lock panel: {lock.text}"
    assert "60s" in lock.text or "1m0s" in lock.text, f"TTL missing from the lock panel: {lock.text}"
    page.shot("kv-key-locked")

    page.click("#kv-invalidate")
    page.confirm()
    WebDriverWait(page.d, WAIT).until(lambda d: page.absent("#kv-lock"))
    entry = api.kv("locks/leader")
    assert entry is not None and not entry.get("Session"), entry
    assert api.ok("GET", f"/v1/session/info/{session}") in ([], None)
    api.ok("DELETE", "/v1/kv/locks/?recurse")


def test_services_and_nodes_show_failing_checks(page, registry):
    api = registry.api
    api.ok(
        "PUT",
        "/v1/catalog/register",
        {
            "Node": "web-node-1",
            "Address": "127.0.0.21",
            "Service": {
                "ID": "web-1",
                "Service": "web",
                "Port": 8080,
                "Tags": ["v1", "public"],
                "Meta": {"version": "1.4"},
            },
            "Checks": [
                {
                    "CheckID": "web-1-http",
                    "Name": "HTTP on 8080",
                    "Status": "critical",
                    "Output": "dial tcp 127.0.0.21:8080: connection refused",
                    "ServiceID": "web-1",
                }
            ],
        },
    )
    api.ok(
        "PUT",
        "/v1/catalog/register",
        {
            "Node": "web-node-2",
            "Address": "127.0.0.22",
            "Service": {"ID": "web-2", "Service": "web", "Port": 8080, "Tags": ["v1"]},
            "Checks": [
                {"CheckID": "web-2-http", "Name": "HTTP on 8080", "Status": "passing", "Output": "HTTP 200 OK", "ServiceID": "web-2"}
            ],
        },
    )

    page.open("#/services")
    row = page.find('#services tr[data-service="web"]')
    counts = {s: row.find_element(By.CSS_SELECTOR, f"td.count-{s}").text for s in ("passing", "warning", "critical")}
    assert counts == {"passing": "1", "warning": "0", "critical": "1"}, counts
    page.shot("services")
    page.narrow("services")

    row.find_element(By.LINK_TEXT, "web").click()
    page.wait_hash("#/services/web")
    failing = page.find('[data-instance="web-1"] tr[data-check-id="web-1-http"]')
    assert "critical" in failing.text and "connection refused" in failing.text, failing.text
    instance = page.find('[data-instance="web-1"]').text
    for text in ("web-node-1", "127.0.0.21", "8080", "public", "version", "1.4"):
        assert text in instance, f"{text!r} missing from the instance: {instance}"
    page.shot("service-web")
    page.narrow("service-web")

    page.go("#/nodes")
    node_row = page.find('#nodes tr[data-node="web-node-1"]')
    assert "critical" in node_row.text and "127.0.0.21" in node_row.text, node_row.text
    page.shot("nodes")
    page.narrow("nodes")

    node_row.find_element(By.LINK_TEXT, "web-node-1").click()
    page.wait_hash("#/nodes/web-node-1")
    assert "connection refused" in page.find("main").text
    page.find('#node-services a[href="#/services/web"]')
    page.shot("node-web-node-1")
    page.narrow("node-web-node-1")

    for node in ("web-node-1", "web-node-2"):
        api.ok("PUT", "/v1/catalog/deregister", {"Node": node})


def test_ui_served_by_an_agent(browser, registry):
    agent = Registry("agent", ["--join", registry.base, "--node-name", "ui-agent-host"], mode="agent")
    try:
        registry.api.ok("PUT", "/v1/kv/from-server", b"seen through the agent")
        page = Page(browser, agent.base)
        page.open("#/kv/from-server")
        page.wait_text("#kv-value", "seen through the agent")
        page.go("#/nodes")
        WebDriverWait(browser, WAIT).until(lambda d: not page.absent('#nodes tr[data-node="ui-agent-host"]'))
        page.shot("agent-nodes")
    finally:
        agent.stop()
        registry.api.ok("DELETE", "/v1/kv/from-server")


def test_acl_page_without_acls(page):
    page.open("#/acl")
    state = page.find("#acl-state").text
    assert "ACLs are disabled" in state or "no ACL endpoints" in state, state
    page.open("#/kv/")
    page.find("#kv-new-key")
    page.open("#/acl")
    page.find("#acl-state")
    page.shot("acl-disabled")


def test_keyboard_reaches_the_actions(page):
    page.open("#/kv/")
    body = page.d.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.TAB)
    assert page.d.switch_to.active_element.text == "Skip to content"
    seen = []
    for _ in range(12):
        page.d.switch_to.active_element.send_keys(Keys.TAB)
        seen.append(page.d.switch_to.active_element.get_attribute("id") or page.d.switch_to.active_element.text)
    assert "kv-filter" in seen and "kv-new-key" in seen, seen
    # Enter on a focused button opens the form and moves focus into it.
    while page.d.switch_to.active_element.get_attribute("id") != "kv-new-key":
        page.d.switch_to.active_element.send_keys(Keys.SHIFT, Keys.TAB)
    page.d.switch_to.active_element.send_keys(Keys.ENTER)
    page.find("#kv-create-form")
    assert page.d.switch_to.active_element.get_attribute("id") == "kv-create-name"
    page.shot("kv-keyboard-focus")


# ACLs: a second registry with ACLs on, a management token, and a read-only token made with it.

MANAGEMENT = "4c1d8a2e-93f0-4d7b-8a55-0b8e3a6f1c21"


def acl_endpoints_present(api):
    status, body = api.call("GET", "/v1/acl/token/self")
    return status != 404, f"GET /v1/acl/token/self answered {status} {body[:80]!r}"


@pytest.fixture(scope="module")
def acl_registry(registry):
    present, why = acl_endpoints_present(registry.api)
    if not present:
        pytest.skip(f"the registry has no ACL endpoints ({why}); the read-only token test needs them")
    # ACLs are on (default deny) when a master token is given.
    reg = Registry("acl", ["--acl-master-token", MANAGEMENT], token=MANAGEMENT)
    yield reg
    reg.stop()


def test_read_only_token_sees_no_edit_controls(browser, acl_registry):
    admin = Api(acl_registry.base, MANAGEMENT)
    admin.ok("PUT", "/v1/kv/apps/config", b'{"replicas":2}')
    rules = 'key_prefix "" { policy = "read" }\nservice_prefix "" { policy = "read" }\nnode_prefix "" { policy = "read" }\nsession_prefix "" { policy = "read" }'
    admin.ok("PUT", "/v1/acl/policy", {"Name": "read-only", "Rules": rules})
    reader = admin.ok("PUT", "/v1/acl/token", {"Description": "ui test reader", "Policies": [{"Name": "read-only"}]})["SecretID"]
    nobody = admin.ok("PUT", "/v1/acl/token", {"Description": "ui test no policy"})["SecretID"]

    page = Page(browser, acl_registry.base)
    page.open("#/acl")
    browser.execute_script("sessionStorage.clear()")
    page.js_errors()
    page.open("#/acl")
    page.type("#acl-token", reader)
    page.click("#acl-save")
    page.wait_text("#acl-status", "ui test reader")
    assert "read only" in page.find("#acl-kv-write").text
    assert page.find("#token-indicator").text == "Token set"
    page.shot("acl-read-only")
    page.narrow("acl-read-only")

    page.go("#/kv/")
    page.find("#kv-list")
    page.go("#/kv/apps/")
    page.find("#kv-list")
    for control in ("#kv-new-key", "#kv-new-folder", "#kv-delete-folder"):
        assert page.absent(control), f"{control} shown to a read-only token"
    assert "Read only" in page.find("#kv-read-only").text
    page.shot("kv-folder-read-only")
    page.narrow("kv-folder-read-only")
    page.go("#/kv/apps/config")
    page.find("#kv-value")
    for control in ("#kv-edit", "#kv-delete"):
        assert page.absent(control), f"{control} shown to a read-only token"
    page.shot("kv-key-read-only")

    # A token that may not even read gets a visible "Permission denied", not an empty page.
    page.go("#/acl")
    page.type("#acl-token", nobody)
    page.click("#acl-save")
    page.wait_text("#acl-kv-write", "read only")
    page.go("#/kv/apps/")
    page.wait_text("main .error", "Permission denied")
    page.shot("kv-permission-denied")
    # Nor a node it may not read (the registry answers `null`, filtered, as Consul does).
    admin.ok("PUT", "/v1/catalog/register", {"Node": "ui-hidden-node", "Address": "10.0.0.7"})
    page.go("#/nodes/ui-hidden-node")
    page.wait_text("main .error", "Permission denied")

    # A token that may write keys but not sessions sees the invalidate button; pressing it shows
    # "Permission denied" next to the button and the lock stays.
    admin.ok("PUT", "/v1/acl/policy", {"Name": "kv-writer", "Rules": 'key_prefix "" { policy = "write" }\nnode_prefix "" { policy = "read" }\nsession_prefix "" { policy = "read" }'})
    writer = admin.ok("PUT", "/v1/acl/token", {"Description": "ui test kv writer", "Policies": [{"Name": "kv-writer"}]})["SecretID"]
    session = admin.ok("PUT", "/v1/session/create", {"Name": "held-by-admin"})["ID"]
    assert admin.ok("PUT", f"/v1/kv/locks/leader?acquire={session}", b"x") is True
    page.go("#/acl")
    page.type("#acl-token", writer)
    page.click("#acl-save")
    page.wait_text("#acl-kv-write", "may write")
    page.go("#/kv/locks/leader")
    page.wait_text("#kv-lock", "held-by-admin")
    page.click("#kv-invalidate")
    page.confirm()
    page.wait_text("#kv-lock .error", "Permission denied")
    page.shot("kv-invalidate-denied")
    assert admin.kv("locks/leader")["Session"] == session

    # The management token gets the controls back.
    page.go("#/acl")
    page.type("#acl-token", MANAGEMENT)
    page.click("#acl-save")
    page.wait_text("#acl-kv-write", "may write")
    page.go("#/kv/apps/")
    page.find("#kv-new-key")
    browser.execute_script("sessionStorage.clear()")
    assert page.js_errors() == []
