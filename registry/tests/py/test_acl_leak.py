"""Issue 14, finding 1, against the real binary: `/v1/txn` `get-tree`, `?recurse` and `?keys`
never hand out a value of a key the token may not read."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request

import pytest

from conftest import Registry

MASTER = "py-root"
KEYS = {
    "app/a": "A-app",
    "app/private/s": "P-private",
    "secret/s": "S-secret",
}
TOKENS = {
    "py-lister": 'key_prefix "app/" { policy = "list" }',
    "py-reader": 'key_prefix "" { policy = "read" }\nkey_prefix "secret/" { policy = "deny" }',
    "py-app": 'key_prefix "app/" { policy = "read" }\nkey_prefix "app/private/" { policy = "deny" }',
}


def call(port: int, method: str, path: str, token: str, body: bytes | None = None):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=body,
        method=method,
        headers={"X-Consul-Token": token},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@pytest.fixture(scope="module")
def acl_registry():
    server = Registry(["--acl-master-token", MASTER])
    port = server.port
    for key, value in KEYS.items():
        assert call(port, "PUT", f"/v1/kv/{key}", MASTER, value.encode())[0] == 200
    for i, (secret, rules) in enumerate(TOKENS.items()):
        policy = json.dumps({"Name": f"py-p{i}", "Rules": rules}).encode()
        assert call(port, "PUT", "/v1/acl/policy", MASTER, policy)[0] == 200
        token = json.dumps({"SecretID": secret, "Policies": [{"Name": f"py-p{i}"}]}).encode()
        assert call(port, "PUT", "/v1/acl/token", MASTER, token)[0] == 200
    yield server
    server.stop()


def b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


def tree(port: int, prefix: str, token: str) -> tuple[list[str], str]:
    ops = json.dumps([{"KV": {"Verb": "get-tree", "Key": prefix}}]).encode()
    status, body = call(port, "PUT", "/v1/txn", token, ops)
    assert status == 200, body
    return [r["KV"]["Key"] for r in json.loads(body)["Results"] or []], body


@pytest.mark.parametrize(
    "token, prefix, readable, denied",
    [
        ("py-lister", "app/", [], ["app/a", "app/private/s"]),
        ("py-reader", "secret", [], ["secret/s"]),
        ("py-reader", "app/", ["app/a", "app/private/s"], ["secret/s"]),
        ("py-app", "app/", ["app/a"], ["app/private/s"]),
        ("py-app", "a", ["app/a"], ["app/private/s"]),
    ],
)
def test_acl_leak_txn_get_tree_and_recurse(acl_registry, token, prefix, readable, denied):
    port = acl_registry.port
    keys, body = tree(port, prefix, token)
    assert keys == readable
    for key in denied:
        assert b64(KEYS[key]) not in body
    status, body = call(port, "GET", f"/v1/kv/{prefix}?recurse", token)
    assert status in (200, 404), body
    listed = [e["Key"] for e in json.loads(body)] if status == 200 else []
    assert listed == readable
    for key in denied:
        assert b64(KEYS[key]) not in body


def test_acl_leak_keys_leave_out_denied_subtrees(acl_registry):
    port = acl_registry.port
    status, body = call(port, "GET", "/v1/kv/app/?keys", "py-app")
    assert (status, json.loads(body)) == (200, ["app/a"])
    status, body = call(port, "GET", "/v1/kv/?keys", "py-reader")
    assert (status, json.loads(body)) == (200, ["app/a", "app/private/s"])
