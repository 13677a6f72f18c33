"""Shared parts of the web UI browser tests: the real `berth-registry` binary on a free port, a
headless Chromium driven over WebDriver by Selenium, and the waits and screenshots the tests use.

Test modules import the fixtures (`registry`, `browser`, `page`) from here; a module may set
`LOG_NAME` to name its registry's log file (default `ui`). Screenshots go to
$BERTH_TEST_OUTPUT/ui/ (default test-output/ui/ at the repository root).
"""

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

REPO = Path(__file__).resolve().parents[3]
OUT = Path(os.environ.get("BERTH_TEST_OUTPUT", REPO / "test-output")) / "ui"
# Upper bound for one page to settle; only reached when something hangs.
WAIT = 30


def registry_bin():
    if os.environ.get("BERTH_REGISTRY_BIN"):
        return Path(os.environ["BERTH_REGISTRY_BIN"])
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    return target / "debug" / "berth-registry"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Api:
    """Plain HTTP calls to the registry, to set up and check what the UI did."""

    def __init__(self, base, token=""):
        self.base = base
        self.token = token

    def call(self, method, path, body=None):
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if self.token:
            req.add_header("X-Consul-Token", self.token)
        try:
            with urllib.request.urlopen(req, timeout=WAIT) as res:
                return res.status, res.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def ok(self, method, path, body=None):
        status, raw = self.call(method, path, body)
        assert 200 <= status < 300, f"{method} {path}: {status} {raw!r}"
        return json.loads(raw) if raw.strip() else None

    def kv(self, key):
        """The KV entry for key, or None when the registry answers 404."""
        status, raw = self.call("GET", f"/v1/kv/{key}")
        if status == 404:
            return None
        assert status == 200, f"GET /v1/kv/{key}: {status} {raw!r}"
        return json.loads(raw)[0]


class Registry:
    """A `berth-registry server --dev` (or, with `mode="agent"`, an agent) on a free port."""

    def __init__(self, name, extra_args=(), token="", mode="server"):
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        OUT.mkdir(parents=True, exist_ok=True)
        binary = registry_bin()
        assert binary.is_file(), f"{binary} missing: build it with `cargo build -p berth-registry`"
        self.log = open(OUT / f"registry-{name}.log", "wb")
        args = ["--dev"] if mode == "server" else []
        self.proc = subprocess.Popen(
            [str(binary), mode, *args, "--http-addr", f"127.0.0.1:{port}", *extra_args],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.api = Api(self.base, token)
        for _ in range(300):
            assert self.proc.poll() is None, f"registry exited, see {self.log.name}"
            try:
                status, body = self.api.call("GET", "/v1/status/leader")
                if status == 200 and json.loads(body):
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"registry did not answer with a leader, see {self.log.name}")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def registry(request):
    reg = Registry(getattr(request.module, "LOG_NAME", "ui"))
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
    ):
        options.add_argument(arg)
    chromium = os.environ.get("BERTH_CHROMIUM") or shutil.which("chromium")
    chromedriver = os.environ.get("BERTH_CHROMEDRIVER") or shutil.which("chromedriver")
    assert chromium and chromedriver, "install chromium and chromium-driver (scripts/install-test-deps.sh)"
    options.binary_location = chromium
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path keeps Selenium Manager (which would download drivers) out of it.
    driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    yield driver
    driver.quit()


class Page:
    """The browser on one registry, with the waits and screenshots the tests share."""

    def __init__(self, driver, base):
        self.d = driver
        self.base = base

    def open(self, fragment):
        """Loads the app afresh (a bare hash change would keep the old document)."""
        self.d.get("about:blank")
        self.d.get(f"{self.base}/ui/{fragment}")
        self.settle()

    def go(self, fragment):
        """Follows an in-app link by hash, as a click on it would (same hash: loads afresh)."""
        if self.d.execute_script("return location.hash") == fragment:
            self.open(fragment)
            return
        self.d.execute_script("location.hash = arguments[0]", fragment)
        self.settle()

    def settle(self):
        """Waits until the page has replaced every 'Loading…' placeholder."""
        WebDriverWait(self.d, WAIT).until(
            lambda d: d.execute_script(
                "const m = document.getElementById('main');"
                "return m && m.querySelector('h1') !== null && !m.textContent.includes('Loading…')"
                " && !m.textContent.includes('Checking…');"
            )
        )

    def find(self, css):
        return WebDriverWait(self.d, WAIT).until(ec.visibility_of_element_located((By.CSS_SELECTOR, css)))

    def absent(self, css):
        return len(self.d.find_elements(By.CSS_SELECTOR, css)) == 0

    def click(self, css):
        WebDriverWait(self.d, WAIT).until(ec.element_to_be_clickable((By.CSS_SELECTOR, css))).click()

    def type(self, css, text):
        el = self.find(css)
        # Select-all and delete, as a user would: fires the input events that clear() does not.
        el.send_keys(Keys.CONTROL, "a")
        el.send_keys(Keys.BACKSPACE)
        if text:
            el.send_keys(text)

    def wait_hash(self, fragment):
        WebDriverWait(self.d, WAIT).until(lambda d: d.execute_script("return location.hash") == fragment)
        self.settle()

    def wait_text(self, css, text):
        WebDriverWait(self.d, WAIT).until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, css), text))

    def confirm(self):
        self.find("dialog#confirm[open]")
        self.click("#confirm-ok")
        WebDriverWait(self.d, WAIT).until_not(ec.visibility_of_element_located((By.CSS_SELECTOR, "dialog#confirm")))

    def shot(self, name):
        OUT.mkdir(parents=True, exist_ok=True)
        self.d.save_screenshot(str(OUT / f"{name}.png"))

    def narrow(self, name):
        """A second screenshot at a phone's width."""
        size = self.d.get_window_size()
        self.d.set_window_size(390, 900)
        time.sleep(0.2)  # one layout pass; the screenshot is for a human to look at
        self.shot(f"{name}-narrow")
        self.d.set_window_size(size["width"], size["height"])

    def js_errors(self):
        """Console errors other than the HTTP statuses the pages handle themselves."""
        return [
            e["message"]
            for e in self.d.get_log("browser")
            if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]
        ]


@pytest.fixture
def page(request, browser, registry):
    p = Page(browser, registry.base)
    p.open("#/acl")
    browser.execute_script("sessionStorage.clear()")
    p.js_errors()  # drain
    failed_before = request.session.testsfailed
    yield p
    if request.session.testsfailed > failed_before:
        p.shot(f"FAILED-{request.node.name}")
    errors = p.js_errors()
    assert errors == [], f"JavaScript errors in the console: {errors}"
