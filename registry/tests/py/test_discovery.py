"""Compatibility: py-consul against berth's discovery API.

A server and an agent joined to it run as child processes of the real binary (the agent on its
own loopback address); py-consul drives agent, catalog, health and session calls through both,
and ACL calls against a server started with a master token.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import consul
import pytest

ROOT = Path(__file__).resolve().parents[3]
GUARD_S = 60


def _binary() -> Path:
    explicit = os.environ.get("BERTH_REGISTRY_BIN")
    if explicit:
        return Path(explicit)
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    path = target / "debug" / "berth-registry"
    if not path.exists():
        subprocess.run(["cargo", "build", "-p", "berth-registry", "--bin", "berth-registry"], cwd=ROOT, check=True)
    return path


def _free_port(ip: str) -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


class Proc:
    """A berth-registry child process answering on ip:port."""

    def __init__(self, args: list[str], ip: str, port: int) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="berth-disc-")
        self.ip, self.port = ip, port
        self.log_path = Path(self.dir.name) / "log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([str(_binary()), *args], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + GUARD_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"exited {self.proc.returncode}: {self.log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"http://{ip}:{port}/v1/agent/self", timeout=2):
                    return
            except urllib.error.HTTPError:
                return  # answering (403 with ACLs on)
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"not ready: {self.log_path.read_text()}")

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.log.close()
        self.dir.cleanup()


@pytest.fixture(scope="module")
def cluster():
    sport = _free_port("127.0.0.1")
    server = Proc(["server", "--dev", "--http-addr", f"127.0.0.1:{sport}", "--node-name", "py-server"], "127.0.0.1", sport)
    aport = _free_port("127.0.0.5")
    agent = Proc(
        ["agent", "--join", f"127.0.0.1:{sport}", "--http-addr", f"127.0.0.5:{aport}", "--node-name", "py-agent",
         "--sync-interval", "2s", "--heartbeat-interval", "200ms"],
        "127.0.0.5",
        aport,
    )
    yield server, agent
    agent.stop()
    server.stop()


@pytest.fixture(scope="module")
def acl_server():
    port = _free_port("127.0.0.1")
    server = Proc(
        ["server", "--dev", "--http-addr", f"127.0.0.1:{port}", "--node-name", "py-acl", "--acl-master-token", "root"],
        "127.0.0.1",
        port,
    )
    yield server
    server.stop()


def wait_for(fn, what: str):
    """Polls with py-consul's own blocking queries (index/wait) until fn returns a truthy value."""
    index = None
    for _ in range(30):
        index, value = fn(index)
        if value:
            return value
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("via", ["server", "agent"])
def test_agent_services_checks_catalog_and_health(cluster, via):
    server, agent = cluster
    target = server if via == "server" else agent
    node = "py-server" if via == "server" else "py-agent"
    c = consul.Consul(host=target.ip, port=target.port)
    s = consul.Consul(host=server.ip, port=server.port)
    name = f"svc-{via}"
    c.agent.service.register(name, service_id=f"{name}-1", port=8080, tags=["blue"], check=consul.Check.ttl("30s"))
    assert f"{name}-1" in c.agent.services()
    check_id = f"service:{name}-1"
    assert c.agent.checks()[check_id]["Status"] == "critical"
    c.agent.check.ttl_pass(check_id, "all good")
    assert c.agent.checks()[check_id]["Output"] == "all good"

    def passing(index):
        idx, nodes = s.health.service(name, passing=True, index=index, wait="2s")
        return idx, nodes

    nodes = wait_for(passing, f"{name} passing on the server")
    assert [n["Node"]["Node"] for n in nodes] == [node]
    assert {ch["CheckID"] for ch in nodes[0]["Checks"]} == {"serfHealth", check_id}
    _, entries = c.catalog.service(name, tag="blue")
    assert entries[0]["ServicePort"] == 8080 and entries[0]["Node"] == node
    _, services = c.catalog.services()
    assert services[name] == ["blue"]
    _, checks = c.health.node(node)
    assert any(ch["CheckID"] == "serfHealth" and ch["Status"] == "passing" for ch in checks)
    _, critical = c.health.state("critical")
    assert all(ch["CheckID"] != check_id for ch in critical)

    c.agent.check.ttl_fail(check_id, "broken")

    def not_passing(index):
        idx, nodes = s.health.service(name, passing=True, index=index, wait="2s")
        return idx, nodes == []

    wait_for(not_passing, f"{name} failing on the server")
    c.agent.service.deregister(f"{name}-1")
    assert f"{name}-1" not in c.agent.services()

    def gone(index):
        idx, entries = s.catalog.service(name, index=index, wait="2s")
        return idx, entries == []

    wait_for(gone, f"{name} removed from the catalog")


def test_members_self_and_sessions_through_the_agent(cluster):
    server, agent = cluster
    c = consul.Consul(host=agent.ip, port=agent.port)
    me = c.agent.self()
    assert me["Config"]["NodeName"] == "py-agent" and me["Config"]["Server"] is False
    names = {m["Name"]: m["Status"] for m in consul.Consul(host=server.ip, port=server.port).agent.members()}
    assert names == {"py-server": 1, "py-agent": 1}
    sid = c.session.create(name="py-lock", ttl=30)
    assert c.session.info(sid)[1]["Node"] == "py-agent"
    assert c.kv.put("py/lock", "me", acquire=sid) is True
    _, entry = c.kv.get("py/lock")
    assert entry["Session"] == sid
    _, mine = c.session.node("py-agent")
    assert [x["ID"] for x in mine] == [sid]
    c.session.destroy(sid)
    _, entry = c.kv.get("py/lock")
    assert "Session" not in entry


def test_acl_tokens_policies_and_enforcement(acl_server):
    root = consul.Consul(host=acl_server.ip, port=acl_server.port, token="root")
    anon = consul.Consul(host=acl_server.ip, port=acl_server.port)
    for key in ["app/a", "app/b", "other/c"]:
        assert root.kv.put(key, "v") is True
    ro_policy = root.acl.policy.create("py-ro", rules={"key_prefix": {"": {"policy": "read"}}})
    app_policy = root.acl.policy.create("py-app", rules={"key_prefix": {"app/": {"policy": "write"}}})
    assert {p["Name"] for p in root.acl.policy.list()} >= {"py-ro", "py-app", "global-management"}
    ro = root.acl.token.create(description="read only", policies_id=[ro_policy["ID"]])
    app = root.acl.token.create(policies_name=["py-app"])
    assert root.acl.token.read(ro["AccessorID"])["Description"] == "read only"
    ro_c = consul.Consul(host=acl_server.ip, port=acl_server.port, token=ro["SecretID"])
    app_c = consul.Consul(host=acl_server.ip, port=acl_server.port, token=app["SecretID"])
    assert ro_c.acl.token.read_self()["AccessorID"] == ro["AccessorID"]

    # A read-only token reads but cannot write.
    assert ro_c.kv.get("other/c")[1]["Value"] == b"v"
    with pytest.raises(consul.ACLPermissionDenied, match="Permission denied"):
        ro_c.kv.put("other/c", "x")
    # A key_prefix "app/" token sees only app/ in a recursive list; the header says so.
    _, entries = app_c.kv.get("", recurse=True)
    assert [e["Key"] for e in entries] == ["app/a", "app/b"]
    req = urllib.request.Request(
        f"http://{acl_server.ip}:{acl_server.port}/v1/kv/?recurse", headers={"X-Consul-Token": app["SecretID"]}
    )
    with urllib.request.urlopen(req) as resp:
        assert resp.headers["X-Consul-Results-Filtered-By-ACLs"] == "true"
        assert [e["Key"] for e in json.load(resp)] == ["app/a", "app/b"]
    assert app_c.kv.put("app/new", "x") is True
    with pytest.raises(consul.ACLPermissionDenied):
        app_c.kv.put("other/new", "x")
    # Unknown token: ACL not found; anonymous: permission denied.
    bogus = consul.Consul(host=acl_server.ip, port=acl_server.port, token="not-a-token")
    with pytest.raises(consul.ACLPermissionDenied, match="ACL not found"):
        bogus.kv.get("app/a")
    with pytest.raises(consul.ACLPermissionDenied, match="Permission denied"):
        anon.kv.get("app/a")
    # Policy update and token delete take effect at once.
    root.acl.policy.update(app_policy["ID"], "py-app", rules={"key_prefix": {"app/": {"policy": "read"}}})
    with pytest.raises(consul.ACLPermissionDenied):
        app_c.kv.put("app/new", "y")
    assert root.acl.token.delete(app["AccessorID"]) is True
    with pytest.raises(consul.ACLPermissionDenied, match="ACL not found"):
        app_c.kv.get("app/a")
    # Service and catalog calls are enforced too.
    with pytest.raises(consul.ACLPermissionDenied):
        ro_c.agent.service.register("nope")
    root.agent.service.register("acl-web")
    assert "acl-web" in root.agent.services()
    assert "acl-web" not in ro_c.agent.services()


def test_acl_roles_identities_clone_and_expiry_with_py_consul(acl_server):
    """py-consul's role, clone and token-list calls against the real binary."""
    root = consul.Consul(host=acl_server.ip, port=acl_server.port, token="root")
    policy = root.acl.policy.create("py-kv-read", rules={"key_prefix": {"": {"policy": "read"}}})
    role = root.acl.role.create(
        "py-reader", policies_name=["py-kv-read"], service_identities=[{"ServiceName": "py-web"}]
    )
    assert role["Policies"][0]["ID"] == policy["ID"]
    assert root.acl.role.read_by_name("py-reader")["ID"] == role["ID"]
    assert [r["Name"] for r in root.acl.role.list(policy=policy["ID"])] == ["py-reader"]
    tok = root.acl.token.create(roles_name=["py-reader"], expiration_ttl="1h", description="py")
    assert tok["ExpirationTime"]
    assert [t["AccessorID"] for t in root.acl.token.list(role=role["ID"])] == [tok["AccessorID"]]
    reader = consul.Consul(host=acl_server.ip, port=acl_server.port, token=tok["SecretID"])
    root.kv.put("py-role/k", "v")
    assert reader.kv.get("py-role/k")[1]["Value"] == b"v"
    reader.agent.service.register("py-web")  # the role's service identity
    with pytest.raises(consul.ACLPermissionDenied):
        reader.agent.service.register("py-other")
    clone = root.acl.token.clone(tok["AccessorID"], description="copy")
    assert clone["AccessorID"] != tok["AccessorID"] and clone["Description"] == "copy"
    assert clone["ExpirationTime"] == tok["ExpirationTime"]
    # Out-of-bounds expiry and unknown templates are refused, never silently dropped.
    with pytest.raises(consul.ConsulException):
        root.acl.token.create(expiration_ttl="1s")
    with pytest.raises(consul.ConsulException):
        root.acl.token.create(templated_policies=[{"builtin/nope": {}}])
    # A missing token or role is 404 for a privileged reader (py-consul answers None).
    assert root.acl.role.read("00000000-0000-0000-0000-00000000dead") is None
    assert root.acl.token.read("00000000-0000-0000-0000-00000000dead") is None
    assert root.acl.role.delete(role["ID"]) is True
    with pytest.raises(consul.ACLPermissionDenied):
        reader.kv.get("py-role/k")


def test_filter_expressions_with_py_consul(acl_server):
    """py-consul's `filter_expr` on the agent listings, which berth used to ignore."""
    root = consul.Consul(host=acl_server.ip, port=acl_server.port, token="root")
    root.agent.service.register("py-f1", service_id="py-f1", tags=["blue"], port=1)
    root.agent.service.register("py-f2", service_id="py-f2", tags=["green"], port=2)
    assert set(root.agent.services(filter_expr="blue in Tags")) == {"py-f1"}
    assert set(root.agent.services(filter_expr='Service matches "^py-f" and Port == 2')) == {"py-f2"}
    with pytest.raises(consul.ConsulException, match="Selector"):
        root.agent.services(filter_expr="Nope == 1")


def test_events_are_listed_by_the_agents_they_name(cluster):
    server, agent = cluster
    a = consul.Consul(host=agent.ip, port=agent.port)
    s = consul.Consul(host=server.ip, port=server.port)
    fired = a.event.fire("py-to-agent", "v2", node="^py-agent$")
    assert fired["Name"] == "py-to-agent" and fired["LTime"] == 0 and fired["Version"] == 1
    s.event.fire("py-to-server", node="^py-server$")
    index, on_agent = a.event.list()
    names = [e["Name"] for e in on_agent]
    assert "py-to-agent" in names and "py-to-server" not in names
    assert [e["Payload"] for e in on_agent if e["Name"] == "py-to-agent"] == [b"v2"]
    _, on_server = s.event.list()
    assert "py-to-server" in [e["Name"] for e in on_server]
    assert "py-to-agent" not in [e["Name"] for e in on_server]
    _, named = a.event.list(name="py-to-agent")
    assert [e["Name"] for e in named] == ["py-to-agent"]
    # Consul's list filters by name only: node/service/tag are ignored there
    _, unfiltered = a.event.list(node="^nothing-matches$")
    assert len(unfiltered) == len(on_agent)
    with pytest.raises(consul.ConsulException, match="Cannot provide tag filter without service filter"):
        a.event.fire("py-bad", tag="x")

    # a blocking list wakes on the next event (the index is not monotonic, only different)
    def later():
        time.sleep(0.3)
        a.event.fire("py-later")

    t = threading.Thread(target=later)
    t.start()
    new_index, woken = a.event.list(index=index, wait="10s")
    t.join()
    assert new_index != index
    assert woken[-1]["Name"] == "py-later"


def test_agent_token_kinds_need_acls_and_acl_write(cluster, acl_server):
    server, _ = cluster
    off = consul.Consul(host=server.ip, port=server.port)
    with pytest.raises(consul.ACLDisabled):
        off.agent.token.set("default", "x")
    root = consul.Consul(host=acl_server.ip, port=acl_server.port, token="root")
    anon = consul.Consul(host=acl_server.ip, port=acl_server.port)
    root.kv.put("py-token/a", "1")
    with pytest.raises(consul.ACLPermissionDenied):
        anon.kv.get("py-token/a")
    for kind in sorted(root.agent.token.VALID_TOKEN_TYPES - {"default"}):
        assert root.agent.token.set(kind, "root")
    with pytest.raises(consul.ACLPermissionDenied):
        anon.agent.token.set("default", "root")
    # the default token serves requests without one, until cleared
    assert root.agent.token.set_default("root")
    assert anon.kv.get("py-token/a")[1]["Value"] == b"1"
    assert root.agent.token.set_default("")
    with pytest.raises(consul.ACLPermissionDenied):
        anon.kv.get("py-token/a")


def test_templated_policies_auth_methods_and_binding_rules_with_py_consul(acl_server):
    """py-consul's templated-policy, auth-method and binding-rule APIs against the server."""
    root = consul.Consul(host=acl_server.ip, port=acl_server.port, token="root")
    listed = root.acl.templated_policy.list()
    assert {"builtin/service", "builtin/node", "builtin/dns"} <= set(listed)
    assert root.acl.templated_policy.read("builtin/node")["TemplateName"] == "builtin/node"
    preview = root.acl.templated_policy.preview("builtin/service", {"Name": "py-tpl"})
    assert 'service "py-tpl"' in preview["Rules"]
    tok = root.acl.token.create(templated_policies=[{"builtin/service": {"Name": "py-tpl"}}])
    assert tok["TemplatedPolicies"][0]["TemplateName"] == "builtin/service"
    svc = consul.Consul(host=acl_server.ip, port=acl_server.port, token=tok["SecretID"])
    svc.agent.service.register("py-tpl")
    with pytest.raises(consul.ACLPermissionDenied):
        svc.agent.service.register("py-not-tpl")
    svc.agent.service.deregister("py-tpl")

    config = {"Host": "https://k8s.example:443", "CACert": "pem", "ServiceAccountJWT": "jwt"}
    method = root.acl.auth_method.create("py-kube", "kubernetes", config=config, max_token_ttl="5m")
    assert method["Type"] == "kubernetes" and method["MaxTokenTTL"] == "5m0s"
    assert [m["Name"] for m in root.acl.auth_method.list()] == ["py-kube"]
    assert root.acl.auth_method.read("py-kube")["Config"]["Host"] == "https://k8s.example:443"
    with pytest.raises(consul.ConsulException):
        root.acl.auth_method.create("py-bad", "kubernetes", config={})
    rule = root.acl.binding_rule.create(
        "py-kube", "service", "${serviceaccount.name}", selector="serviceaccount.namespace==default"
    )
    assert [r["ID"] for r in root.acl.binding_rule.list(auth_method="py-kube")] == [rule["ID"]]
    with pytest.raises(consul.ConsulException):
        root.acl.binding_rule.create("py-kube", "service", "${value.nope}")
    with pytest.raises(consul.ConsulException):
        root.acl.login("py-kube", "eyJ.not.verifiable")
    assert root.acl.auth_method.delete("py-kube") is True
    assert root.acl.binding_rule.list() == []
