"""Compatibility: py-consul (PyPI, third party) against the real berth-registry binary.

Covers KV (put/get/recurse/keys/cas/delete, blocking), sessions (create/renew/destroy/info/list/
node, TTL, lowercase bodies as py-consul sends them), locks through acquire/release, txn, status
and agent/self.
"""

from __future__ import annotations

import base64
import threading
import time

import consul
import pytest

from conftest import NODE


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_status_leader_peers_and_agent_self(c):
    leader = c.status.leader()
    host, _, port = leader.rpartition(":")
    assert host and int(port) > 0, leader
    assert c.status.peers() == [leader]
    me = c.agent.self()
    assert me["Config"]["NodeName"] == NODE
    assert me["Config"]["Datacenter"] == "dc1"
    assert me["Config"]["Version"].startswith("1.2")
    assert me["Stats"]["consul"]["leader_addr"] == leader


def test_kv_put_get_flags_and_missing(c, prefix):
    assert c.kv.put(f"{prefix}/s", "text") is True
    assert c.kv.put(f"{prefix}/b", b"\x00\xffbin") is True
    assert c.kv.put(f"{prefix}/f", "flagged", flags=99) is True

    index, item = c.kv.get(f"{prefix}/s")
    assert int(index) == item["ModifyIndex"] > 0
    assert item["Key"] == f"{prefix}/s"
    assert item["Value"] == b"text"
    assert item["Flags"] == 0
    assert item["LockIndex"] == 0
    assert "Session" not in item

    assert c.kv.get(f"{prefix}/b")[1]["Value"] == b"\x00\xffbin"
    assert c.kv.get(f"{prefix}/f")[1]["Flags"] == 99

    # A None value stores an empty body, read back as null.
    assert c.kv.put(f"{prefix}/dir/", None) is True
    assert c.kv.get(f"{prefix}/dir/")[1]["Value"] is None

    index, missing = c.kv.get(f"{prefix}/nope")
    assert missing is None
    assert int(index) > 0


def test_kv_recurse_keys_and_separator(c, prefix):
    for key in ("a", "b/c", "b/d/e", "z"):
        c.kv.put(f"{prefix}/{key}", key)
    index, items = c.kv.get(f"{prefix}/", recurse=True)
    assert [i["Key"] for i in items] == [f"{prefix}/{k}" for k in ("a", "b/c", "b/d/e", "z")]
    assert [i["Value"] for i in items] == [b"a", b"b/c", b"b/d/e", b"z"]
    assert int(index) == max(i["ModifyIndex"] for i in items)

    _, keys = c.kv.get(f"{prefix}/", keys=True)
    assert keys == [f"{prefix}/{k}" for k in ("a", "b/c", "b/d/e", "z")]
    _, keys = c.kv.get(f"{prefix}/", keys=True, separator="/")
    assert keys == [f"{prefix}/a", f"{prefix}/b/", f"{prefix}/z"]
    _, keys = c.kv.get(f"{prefix}/b/", keys=True, separator="/")
    assert keys == [f"{prefix}/b/c", f"{prefix}/b/d/"]
    _, none = c.kv.get(f"{prefix}/void/", keys=True)
    assert none is None


def test_kv_cas_and_delete(c, prefix):
    key = f"{prefix}/k"
    assert c.kv.put(key, "one", cas=0) is True
    assert c.kv.put(key, "two", cas=0) is False
    _, item = c.kv.get(key)
    modify = item["ModifyIndex"]
    assert c.kv.put(key, "three", cas=modify + 1) is False
    assert c.kv.put(key, "three", cas=modify) is True
    _, item = c.kv.get(key)
    assert item["Value"] == b"three"
    assert item["CreateIndex"] < item["ModifyIndex"]

    # Writing the identical entry again does not bump ModifyIndex.
    assert c.kv.put(key, "three") is True
    assert c.kv.get(key)[1]["ModifyIndex"] == item["ModifyIndex"]

    assert c.kv.delete(key, cas=item["ModifyIndex"] + 5) is False
    assert c.kv.get(key)[1] is not None
    assert c.kv.delete(key, cas=item["ModifyIndex"]) is True
    assert c.kv.get(key)[1] is None
    # Deleting a missing key answers true.
    assert c.kv.delete(key) is True

    for k in ("x/1", "x/2", "xy"):
        c.kv.put(f"{prefix}/{k}", "v")
    assert c.kv.delete(f"{prefix}/x/", recurse=True) is True
    _, left = c.kv.get(f"{prefix}/", recurse=True)
    assert [i["Key"] for i in left] == [f"{prefix}/xy"]


def test_kv_blocking_get_wakes_on_put(c, prefix):
    key = f"{prefix}/watched"
    c.kv.put(key, "v1")
    index, _ = c.kv.get(key)

    def later():
        time.sleep(0.3)
        c.kv.put(key, "v2")

    writer = threading.Thread(target=later)
    writer.start()
    new_index, item = c.kv.get(key, index=index, wait="20s")
    writer.join()
    assert int(new_index) > int(index)
    assert item["Value"] == b"v2"

    # Nothing changes: the short wait ends with the same index and data.
    same_index, item = c.kv.get(key, index=new_index, wait="100ms")
    assert same_index == new_index
    assert item["Value"] == b"v2"


def test_kv_blocking_on_missing_key_wakes_on_create(c, prefix):
    key = f"{prefix}/later"
    index, missing = c.kv.get(key)
    assert missing is None
    threading.Timer(0.3, lambda: c.kv.put(key, "born")).start()
    new_index, item = c.kv.get(key, index=index, wait="20s")
    assert int(new_index) > int(index)
    assert item["Value"] == b"born"


def test_sessions_lifecycle(c):
    sid = c.session.create(name="worker-1", ttl=10, lock_delay=1, behavior="delete")
    _, info = c.session.info(sid)
    assert info["ID"] == sid
    assert info["Name"] == "worker-1"
    assert info["Node"] == NODE
    assert info["TTL"] == "10s"
    assert info["Behavior"] == "delete"
    assert info["LockDelay"] == 1_000_000_000
    assert info["CreateIndex"] > 0

    _, sessions = c.session.list()
    assert sid in [s["ID"] for s in sessions]
    _, on_node = c.session.node(NODE)
    assert sid in [s["ID"] for s in on_node]

    renewed = c.session.renew(sid)
    assert renewed["ID"] == sid

    assert c.session.destroy(sid) is True
    assert c.session.info(sid)[1] is None
    assert sid not in [s["ID"] for s in c.session.list()[1]]
    with pytest.raises(consul.NotFound):
        c.session.renew(sid)


def test_session_defaults_and_serf_health(c):
    sid = c.session.create()
    _, info = c.session.info(sid)
    assert info["Behavior"] == "release"
    assert info["LockDelay"] == 15_000_000_000
    assert info["NodeChecks"] == ["serfHealth"]
    assert info.get("TTL", "") == ""
    # An explicit serfHealth check list is what py-consul documents.
    sid2 = c.session.create(checks=["serfHealth"])
    assert c.session.info(sid2)[1]["ID"] == sid2
    c.session.destroy(sid)
    c.session.destroy(sid2)


def test_session_ttl_bounds_rejected(c, registry):
    import requests

    # py-consul asserts 10 <= ttl itself; send the out-of-range body directly.
    resp = requests.put(
        f"http://127.0.0.1:{registry.port}/v1/session/create", json={"TTL": "5s"}, timeout=10
    )
    assert resp.status_code >= 400


def test_session_blocking_info_wakes_on_destroy(c):
    sid = c.session.create()
    index, info = c.session.info(sid)
    assert info is not None
    threading.Timer(0.3, lambda: c.session.destroy(sid)).start()
    new_index, gone = c.session.info(sid, index=index, wait="20s")
    assert gone is None
    assert int(new_index) > int(index)


def test_locks_acquire_release(c, prefix):
    key = f"{prefix}/leader"
    a = c.session.create(lock_delay=0)
    b = c.session.create(lock_delay=0)

    assert c.kv.put(key, "a", acquire=a) is True
    assert c.kv.put(key, "b", acquire=b) is False
    _, item = c.kv.get(key)
    assert item["Session"] == a
    assert item["LockIndex"] == 1
    assert item["Value"] == b"a"

    # The holder may update the value while holding; LockIndex does not move.
    assert c.kv.put(key, "a2", acquire=a) is True
    _, item = c.kv.get(key)
    assert (item["LockIndex"], item["Value"]) == (1, b"a2")

    # A plain put on a locked key succeeds and keeps the holder.
    assert c.kv.put(key, "plain") is True
    assert c.kv.get(key)[1]["Session"] == a

    assert c.kv.put(key, release=b, value=None) is False
    assert c.kv.put(key, release=a, value=None) is True
    _, item = c.kv.get(key)
    assert "Session" not in item
    assert item["LockIndex"] == 1

    assert c.kv.put(key, "b", acquire=b) is True
    assert c.kv.get(key)[1]["LockIndex"] == 2

    # Destroying the holder releases its lock.
    c.session.destroy(b)
    _, item = c.kv.get(key)
    assert "Session" not in item
    c.session.destroy(a)


def test_acquire_with_unknown_session_is_500(c, prefix):
    with pytest.raises(consul.ConsulException) as err:
        c.kv.put(f"{prefix}/k", "v", acquire="11111111-2222-3333-4444-555555555555")
    assert "500" in str(err.value)
    assert "invalid session" in str(err.value)


def test_txn_success(c, prefix):
    c.kv.put(f"{prefix}/existing", "old")
    _, existing = c.kv.get(f"{prefix}/existing")
    result = c.txn.put(
        [
            {"KV": {"Verb": "set", "Key": f"{prefix}/a", "Value": b64(b"A")}},
            {"KV": {"Verb": "cas", "Key": f"{prefix}/existing", "Value": b64(b"new"), "Index": existing["ModifyIndex"]}},
            {"KV": {"Verb": "check-not-exists", "Key": f"{prefix}/missing"}},
            {"KV": {"Verb": "get", "Key": f"{prefix}/a"}},
            {"KV": {"Verb": "get-tree", "Key": f"{prefix}/"}},
        ]
    )
    assert result["Errors"] is None
    results = [r["KV"] for r in result["Results"]]
    assert results[0]["Key"] == f"{prefix}/a"
    assert results[1]["Key"] == f"{prefix}/existing"
    got = [r for r in results if r["Key"] == f"{prefix}/a" and r.get("Value")]
    assert base64.b64decode(got[0]["Value"]) == b"A"
    # Writes in one transaction share its index.
    assert results[0]["ModifyIndex"] == results[1]["ModifyIndex"]
    assert c.kv.get(f"{prefix}/existing")[1]["Value"] == b"new"

    result = c.txn.put(
        [
            {"KV": {"Verb": "delete-tree", "Key": f"{prefix}/"}},
            {"KV": {"Verb": "get-or-empty", "Key": f"{prefix}/a"}},
        ]
    )
    assert result["Errors"] is None
    assert c.kv.get(f"{prefix}/", recurse=True)[1] is None


def test_txn_rollback_is_all_or_nothing(c, prefix):
    c.kv.put(f"{prefix}/guard", "g")
    _, guard = c.kv.get(f"{prefix}/guard")
    with pytest.raises(consul.ConsulException) as err:
        c.txn.put(
            [
                {"KV": {"Verb": "set", "Key": f"{prefix}/written", "Value": b64(b"w")}},
                {"KV": {"Verb": "delete", "Key": f"{prefix}/guard"}},
                {"KV": {"Verb": "cas", "Key": f"{prefix}/guard", "Value": b64(b"x"), "Index": guard["ModifyIndex"] + 100}},
            ]
        )
    assert "409" in str(err.value)
    assert '"OpIndex":2' in str(err.value).replace(" ", "")
    assert c.kv.get(f"{prefix}/written")[1] is None
    assert c.kv.get(f"{prefix}/guard")[1]["Value"] == b"g"


def test_txn_lock_verbs(c, prefix):
    sid = c.session.create(lock_delay=0)
    key = f"{prefix}/l"
    result = c.txn.put(
        [
            {"KV": {"Verb": "lock", "Key": key, "Value": b64(b"held"), "Session": sid}},
            {"KV": {"Verb": "check-session", "Key": key, "Session": sid}},
        ]
    )
    assert result["Errors"] is None
    assert c.kv.get(key)[1]["Session"] == sid
    result = c.txn.put([{"KV": {"Verb": "unlock", "Key": key, "Value": b64(b"free"), "Session": sid}}])
    assert result["Errors"] is None
    _, item = c.kv.get(key)
    assert "Session" not in item
    assert item["Value"] == b"free"
    c.session.destroy(sid)


def test_txn_limits(c, prefix):
    too_many = [{"KV": {"Verb": "set", "Key": f"{prefix}/{i}", "Value": b64(b"v")}} for i in range(129)]
    with pytest.raises(consul.ConsulException) as err:
        c.txn.put(too_many)
    assert "413" in str(err.value)
    assert c.kv.get(f"{prefix}/0")[1] is None

    just_enough = too_many[:128]
    assert c.txn.put(just_enough)["Errors"] is None
    _, keys = c.kv.get(f"{prefix}/", keys=True)
    assert len(keys) == 128


def test_value_size_limit(c, prefix):
    limit = 512 * 1024
    assert c.kv.put(f"{prefix}/max", b"x" * limit) is True
    with pytest.raises(consul.ConsulException) as err:
        c.kv.put(f"{prefix}/over", b"x" * (limit + 1))
    assert "413" in str(err.value)
    assert c.kv.get(f"{prefix}/over")[1] is None
