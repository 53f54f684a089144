"""``ferrymq cluster up|status|stop|start|down``: the state file, PID checks, argv, status
rendering, and whole lifecycles with real etcd and real processes.

Two kinds of lifecycle test: one with stand-in nodes (a small HTTP server that speaks
the node's command line and ``/_ferry/status`` contract, written to the test's
directory), which checks every command's bookkeeping against a cluster whose status is
known exactly; and one with real ``ferrymq node`` processes through the real command
line. Every process a test starts is killed by its PID in a fixture finaliser, also
when the test fails.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _ports import free_base_port

from ferrymq._cluster import _local
from ferrymq._cluster._catalog import QueueEntry, encode_entry
from ferrymq._cluster._layout import Layout, encode_state
from ferrymq._cluster._local import (
    STATE_FILE,
    ClusterState,
    EtcdRecord,
    LocalClusterError,
    NodeRecord,
    Settings,
    is_ours,
    load_state,
    node_argv,
    render_status,
    save_state,
)
from ferrymq._coordination import ETCD_INSTALL_HINT, etcd_binary
from ferrymq._coordination._etcd_process import member_healthy
from ferrymq._replication._election import PartitionState

REPO = Path(__file__).resolve().parents[2]

# A stand-in for `ferrymq node`: same flags, same stderr line, a canned /_ferry/status.
# Every replica holds the replica set QUEUE_PARTITION (of queue "orders"), which n1
# leads at epoch 1 with a commit of 10; n2 acknowledged 10, n3 only 7. n1 is the
# controller. FAKE_NODE_MODE=crash makes it exit at once (a node that cannot start).
QUEUE_PARTITION = "orders-0badcafe"
FAKE_NODE = textwrap.dedent('''
    import argparse, json, os, signal, sys, threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    p = argparse.ArgumentParser()
    for flag in ("--node-id", "--host", "--data-dir", "--etcd", "--cluster",
                 "--min-insync-replicas", "--durability", "--lease-ttl-seconds"):
        p.add_argument(flag)
    p.add_argument("--port", type=int)
    p.add_argument("--replicas", type=int)
    a = p.parse_args()
    if os.environ.get("FAKE_NODE_MODE") == "crash":
        print("fake node: cannot start, as asked", file=sys.stderr, flush=True)
        sys.exit(3)
    os.makedirs(a.data_dir, exist_ok=True)
    with open(os.path.join(a.data_dir, "argv.json"), "w") as fh:
        json.dump(sys.argv[1:], fh)
    replicas = [f"n{i + 1}" for i in range(a.replicas)]
    leader = a.node_id == "n1"
    status = {"node": a.node_id, "cluster": a.cluster, "lease": True,
              "controller": leader, "partitions": {"PARTITION": {
                  "queue": "orders", "partition": "PARTITION",
                  "role": "leader" if leader else "follower", "leader": "n1",
                  "epoch": 1, "replicas": replicas, "isr": replicas, "min_isr": 2,
                  "sync": True, "commit_seq": 10, "position": [1, 10],
                  "followers": {"n2": 10, "n3": 7} if leader else {}}}}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path != "/_ferry/status":
                self.send_error(404)
                return
            body = json.dumps(status).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer((a.host, a.port), Handler)
    signal.signal(signal.SIGTERM,
                  lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"ferrymq node {a.node_id} listening on http://{a.host}:{a.port}",
          file=sys.stderr, flush=True)
    server.serve_forever()
''').replace("PARTITION", QUEUE_PARTITION)


def require_etcd() -> None:
    if etcd_binary() is None:
        pytest.skip(ETCD_INSTALL_HINT)


def kill_everything_recorded(data_dir: Path) -> None:
    """The finaliser: SIGKILL every process the state file names that is still ours."""
    try:
        state = load_state(data_dir)
    except LocalClusterError:
        return
    if state is None:
        return
    for rec in state.records():
        if is_ours(rec.pid, rec.argv):
            assert rec.pid is not None
            os.kill(rec.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(is_ours(r.pid, r.argv) for r in state.records()):
        time.sleep(0.05)


@pytest.fixture
def cluster_dir(tmp_path: Path) -> Iterator[Path]:
    data_dir = tmp_path / "cluster"
    try:
        yield data_dir
    finally:
        kill_everything_recorded(data_dir)


@pytest.fixture
def fake_node(tmp_path: Path) -> list[str]:
    script = tmp_path / "fake_node.py"
    script.write_text(FAKE_NODE)
    return [sys.executable, str(script)]


def status_json(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    assert _local.main(["status", "--data-dir", str(data_dir), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert isinstance(doc, dict)
    return doc


def etcd_put(client_url: str, key: bytes, value: bytes) -> None:
    body = json.dumps({"key": base64.b64encode(key).decode(),
                       "value": base64.b64encode(value).decode()}).encode()
    with urllib.request.urlopen(urllib.request.Request(client_url + "/v3/kv/put", data=body),
                                timeout=5) as resp:
        resp.read()


def etcd_delete(client_url: str, key: bytes) -> None:
    body = json.dumps({"key": base64.b64encode(key).decode()}).encode()
    with urllib.request.urlopen(
            urllib.request.Request(client_url + "/v3/kv/deleterange", data=body),
            timeout=5) as resp:
        resp.read()


def a_state(tmp_path: Path, **settings: Any) -> ClusterState:
    s = Settings(**{"nodes": 3, "etcd_members": 1, "base_port": 9324, "replicas": 3,
                    **settings})
    state = ClusterState(cluster="ferry", settings=s)
    state.etcd.append(EtcdRecord(name="etcd1", client_port=40001, peer_port=40002,
                                 data_dir=str(tmp_path / "etcd" / "etcd1"),
                                 log=str(tmp_path / "logs" / "etcd1.log"),
                                 argv=["etcd", "--name", "etcd1"]))
    for i in range(s.nodes):
        rec = NodeRecord(id=f"n{i + 1}", host="127.0.0.1", port=9324 + i,
                         data_dir=str(tmp_path / "nodes" / f"n{i + 1}"),
                         log=str(tmp_path / "logs" / f"n{i + 1}.log"), argv=[])
        rec.argv = node_argv(["ferrymq-node"], rec, state)
        state.nodes.append(rec)
    return state


# -- units: argv, state file, PIDs, status ------------------------------------------------


def test_node_argv_follows_the_node_contract(tmp_path: Path) -> None:
    state = a_state(tmp_path, min_insync_replicas=2, durability="async", lease_ttl_seconds=4,
                    partitions=4)
    state.etcd.append(EtcdRecord(name="etcd2", client_port=40003, peer_port=40004,
                                 data_dir="x", log="y", argv=[]))
    rec = state.nodes[1]
    assert node_argv(["ferrymq-node"], rec, state) == [
        "ferrymq-node", "--node-id", "n2", "--host", "127.0.0.1", "--port", "9325",
        "--data-dir", str(tmp_path / "nodes" / "n2"),
        "--etcd", "http://127.0.0.1:40001,http://127.0.0.1:40003",
        "--cluster", "ferry", "--replicas", "3", "--min-insync-replicas", "2",
        "--durability", "async", "--lease-ttl-seconds", "4", "--partitions", "4",
    ]
    # Settings left to the node's defaults are not passed at all.
    bare = node_argv(["ferrymq-node"], rec, a_state(tmp_path))
    assert "--min-insync-replicas" not in bare and "--durability" not in bare
    assert "--lease-ttl-seconds" not in bare and "--partitions" not in bare


def test_the_state_file_round_trips_and_refuses_what_it_did_not_write(tmp_path: Path) -> None:
    state = a_state(tmp_path, durability="sync")
    state.nodes[0].pid = 4242
    save_state(tmp_path, state)
    assert load_state(tmp_path) == state
    assert not (tmp_path / (STATE_FILE + ".tmp")).exists()
    assert load_state(tmp_path / "nowhere") is None
    doc = json.loads((tmp_path / STATE_FILE).read_text())
    doc["format"] = 99
    (tmp_path / STATE_FILE).write_text(json.dumps(doc))
    with pytest.raises(LocalClusterError, match="format 99"):
        load_state(tmp_path)
    (tmp_path / STATE_FILE).write_text('{"format": 1, "cluster": "x"}')
    with pytest.raises(LocalClusterError, match="not a cluster state file"):
        load_state(tmp_path)


def test_a_pid_is_ours_only_while_it_runs_the_recorded_argv() -> None:
    argv = [sys.executable, "-c", "import time; time.sleep(60)", "ferrymq-test-marker"]
    proc = subprocess.Popen(argv)
    try:
        _local._wait_exec(proc.pid)  # Popen may return before the exec is complete
        assert is_ours(proc.pid, argv)
        assert not is_ours(proc.pid, argv[:-1])  # same program, other arguments
        assert not is_ours(proc.pid, [*argv, "x"])
        assert not is_ours(None, argv)
    finally:
        proc.kill()
        proc.wait()
    assert not is_ours(proc.pid, argv)


def test_stop_never_signals_a_pid_that_is_not_ours_any_more(tmp_path: Path) -> None:
    """A recorded PID now running something else (a recycled PID) is left alone."""
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        rec = NodeRecord(id="n1", host="127.0.0.1", port=1, data_dir="d", log="l",
                         argv=["ferrymq-node", "--node-id", "n1"], pid=stranger.pid)
        assert _local._stop([rec], term_wait_s=0.2, kill_wait_s=0.2) == []
        time.sleep(0.2)
        assert stranger.poll() is None
        assert rec.pid is None
    finally:
        stranger.kill()
        stranger.wait()


def test_stop_sends_sigkill_after_the_grace(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import signal, sys, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "print('ready', flush=True)\ntime.sleep(60)"]
    log = tmp_path / "stubborn.log"
    pid = _local._spawn_detached(argv, dict(os.environ), log)
    rec = NodeRecord(id="n9", host="127.0.0.1", port=1, data_dir="d", log=str(log),
                     argv=argv, pid=pid)
    try:
        deadline = time.monotonic() + 10
        while b"ready" not in log.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.02)  # SIGTERM before the handler is set would just end it
        started = time.monotonic()
        assert _local._stop([rec], term_wait_s=0.5, kill_wait_s=5) == ["n9"]
        assert time.monotonic() - started >= 0.5  # it did wait for SIGTERM first
        assert not is_ours(pid, argv)
    finally:
        if is_ours(pid, argv):
            os.kill(pid, signal.SIGKILL)


def test_a_detached_process_has_its_own_session_and_logs_to_its_file(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import os, sys, time\n"
            "print('out', os.getsid(0)); print('err', file=sys.stderr, flush=True)\n"
            "time.sleep(60)"]
    log = tmp_path / "logs" / "p.log"
    pid = _local._spawn_detached(argv, dict(os.environ), log)
    try:
        deadline = time.monotonic() + 10
        while b"err" not in log.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.02)
        text = log.read_text()
        assert f"out {pid}" in text  # session leader: its session id is its own PID
        assert "err" in text
        assert os.getsid(pid) != os.getsid(0)
    finally:
        os.kill(pid, signal.SIGKILL)
        _local._reap(pid)


P = "q-00c0ffee"


def canned_status(role: str, node: str, *, partition: str = P, lease: bool = True,
                  controller: bool = False, **extra: Any) -> dict[str, Any]:
    """A node's status holding one replica set, ``partition`` of queue "q"."""
    report = {"queue": "q", "partition": partition, "role": role, "leader": "n2",
              "epoch": 3, "replicas": ["n1", "n2", "n3"], "isr": ["n1", "n2", "n3"],
              "min_isr": 2, "sync": True, "commit_seq": 120, "position": [3, 120],
              "followers": {}, **extra}
    return {"node": node, "cluster": "ferry", "lease": lease, "controller": controller,
            "partitions": {partition: report}}


def test_lag_is_read_from_the_leaders_report_of_that_replica_set() -> None:
    statuses: dict[str, dict[str, Any] | None] = {
        "n1": canned_status("follower", "n1"),
        "n2": canned_status("leader", "n2", followers={"n1": 118, "n3": 125}),
        "n3": None,
    }
    doc = {"leader": "n2", "epoch": 3, "replicas": ["n1", "n2", "n3"], "isr": ["n1", "n2"]}
    # commit - acked, floored at 0 (a follower may have appended past the commit).
    assert _local._lag(P, doc, statuses) == {"n1": 2, "n3": 0}
    # A follower the leader does not report is unknown, not "0 behind".
    statuses["n2"] = canned_status("leader", "n2", followers={"n1": 118})
    assert _local._lag(P, doc, statuses) == {"n1": 2, "n3": None}
    # Without the leader's own report (down, or it no longer leads that epoch): unknown.
    assert _local._lag(P, {**doc, "epoch": 4}, statuses) is None
    # Its report of another replica set says nothing of this one.
    assert _local._lag("other-00000000", doc, statuses) is None
    statuses["n2"] = None
    assert _local._lag(P, doc, statuses) is None


def test_partitions_from_the_nodes_take_the_newest_epoch_of_each() -> None:
    two = "r-00000002"
    n2 = canned_status("leader", "n2", isr=["n2", "n3"])
    n2["partitions"][two] = {**n2["partitions"][P], "queue": None, "partition": two,
                             "role": "follower", "leader": "n3", "epoch": 7}
    statuses: dict[str, dict[str, Any] | None] = {
        "n1": canned_status("leader", "n1", leader="n1", epoch=2),  # deposed, not yet told
        "n2": n2,
        "n3": canned_status("follower", "n3", partition=two, queue="r", leader="n3",
                            epoch=7, isr=["n3"]),
        "n4": None,
        "n5": {"node": "n5", "partitions": "not a map"},  # another program's answer
    }
    assert _local._partitions_from_nodes(statuses) == [
        (P, "q", {"leader": "n2", "epoch": 3, "replicas": ["n1", "n2", "n3"],
                  "isr": ["n2", "n3"], "min_isr": 2, "sync": True}),
        # Same epoch from two followers: the first report wins; the queue comes from
        # whichever report names one.
        (two, "r", {"leader": "n3", "epoch": 7, "replicas": ["n1", "n2", "n3"],
                    "isr": ["n2", "n3"], "min_isr": 2, "sync": True})]


def test_health_needs_every_node_one_controller_and_a_leader_per_replica_set(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = a_state(tmp_path)
    statuses: dict[str, dict[str, Any] | None] = {
        "n1": canned_status("follower", "n1"),
        "n2": canned_status("leader", "n2", controller=True),
        "n3": canned_status("follower", "n3"),
    }
    sets: list[tuple[str, str | None, dict[str, Any]]] | None = []
    monkeypatch.setattr(_local, "_node_status", lambda rec: statuses[rec.id])
    monkeypatch.setattr(_local, "_etcd_view", lambda state: sets)
    # A fresh cluster: no replica set at all, and healthy.
    assert _local._health(state) == (True, "", "n2")
    statuses["n3"] = None
    assert _local._health(state)[:2] == (False, "no status from n3")
    statuses["n3"] = canned_status("follower", "n3", lease=False)
    assert _local._health(state)[:2] == (False, "n3 not registered in etcd yet")
    statuses["n3"] = canned_status("follower", "n3", controller=True)
    assert _local._health(state)[:2] == (
        False, "several nodes report themselves controller: n2, n3")
    statuses["n2"] = canned_status("leader", "n2")
    statuses["n3"] = canned_status("follower", "n3")
    assert _local._health(state)[:2] == (False, "no node reports itself controller")
    statuses["n2"] = canned_status("leader", "n2", controller=True)
    sets = None
    assert _local._health(state) == (False, "no etcd member answers a read", "n2")
    doc = {"leader": None, "epoch": 0, "replicas": ["n1", "n2", "n3"],
           "isr": ["n1", "n2", "n3"]}
    sets = [(P, "q", doc)]
    assert _local._health(state)[:2] == (False, f"the replica set {P} of q has no leader yet")
    # etcd names a leader that does not (yet) say it leads that epoch.
    sets = [(P, "q", {**doc, "leader": "n2", "epoch": 4})]
    assert _local._health(state)[:2] == (
        False, f"n2 does not report itself leader of the replica set {P} of q at epoch 4")
    sets = [(P, "q", {**doc, "leader": "n2", "epoch": 3})]
    assert _local._health(state) == (True, "", "n2")


def test_the_human_status_is_a_table() -> None:
    doc = {
        "nodes": [{"id": "n1", "url": "http://127.0.0.1:9324", "pid": 11, "alive": True,
                   "leads": 2},
                  {"id": "n2", "url": "http://127.0.0.1:9325", "pid": None, "alive": False,
                   "leads": 0}],
        "partitions": [{"queue": "orders", "partition": "orders-1a2b3c4d", "leader": "n1",
                        "epoch": 3, "replicas": ["n1", "n2"], "isr": ["n1"],
                        "lag": {"n2": None}},
                       {"queue": None, "partition": "x-00000000", "leader": None,
                        "epoch": 0, "replicas": ["n1"], "isr": ["n1"], "lag": None}],
        "etcd": [{"name": "etcd1", "client_url": "http://127.0.0.1:2379", "pid": 7,
                  "alive": True}],
    }
    lines = render_status(doc).splitlines()
    assert lines[0].split() == ["NODE", "URL", "PID", "ALIVE", "LEADS"]
    assert lines[1].split() == ["n1", "http://127.0.0.1:9324", "11", "yes", "2"]
    assert lines[2].split() == ["n2", "http://127.0.0.1:9325", "-", "no", "0"]
    assert lines[1].index("http") == lines[0].index("URL")  # columns line up
    rows = [ln.split() for ln in lines]
    assert ["orders", "orders-1a2b3c4d", "n1", "3", "n1,n2", "n1", "n2:-"] in rows
    assert ["-", "x-00000000", "-", "0", "n1", "n1", "unknown"] in rows
    assert ["etcd1", "http://127.0.0.1:2379", "7", "yes"] in rows
    doc["partitions"] = []
    assert "no queue yet" in render_status(doc)


@pytest.mark.parametrize(("args", "message"), [
    (["--nodes", "3", "--replicas", "4"], "--replicas 4 is more than --nodes 3"),
    (["--replicas", "2", "--min-insync-replicas", "3"], "--min-insync-replicas 3 is more"),
    (["--port", "65534", "--nodes", "3"], "no room for 3 nodes"),
])
def test_settings_that_cannot_work_are_a_usage_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert _local.main(["up", "--data-dir", str(tmp_path / "c"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "c").exists()  # nothing was started or written


@pytest.mark.parametrize("args", [["--nodes", "0"], ["--etcd-members", "2"],
                                  ["--durability", "maybe"], ["--cluster", "a/b"],
                                  ["--cluster", "a.b"]])
def test_bad_options_are_one_line_and_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        _local.main(["up", "--data-dir", str(tmp_path), *args])
    assert exit_.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_without_etcd_up_fails_with_the_install_hint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FERRYMQ_ETCD", str(tmp_path / "no-etcd-here"))
    assert _local.main(["up", "--data-dir", str(tmp_path / "c")]) == 1
    assert ETCD_INSTALL_HINT in capsys.readouterr().err


def test_commands_on_a_directory_without_a_cluster(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for command in (["status"], ["stop", "--node", "n1"], ["start", "--node", "n1"]):
        assert _local.main([*command, "--data-dir", str(tmp_path)]) == 1
        assert "no cluster in" in capsys.readouterr().err
    assert _local.main(["down", "--data-dir", str(tmp_path)]) == 0  # idempotent


# -- lifecycles ----------------------------------------------------------------------------


def test_lifecycle_with_stand_in_nodes(
        cluster_dir: Path, fake_node: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    require_etcd()
    base = free_base_port(3)
    up = ["up", "--data-dir", str(cluster_dir), "--nodes", "3", "--port", str(base),
          "--durability", "async"]
    assert _local.main(up, node_command=fake_node) == 0
    out = capsys.readouterr().out
    for i in range(3):
        assert f"n{i + 1}  http://127.0.0.1:{base + i}" in out
    state = load_state(cluster_dir)
    assert state is not None
    # Every process runs in its own session (outlives the command and its terminal).
    for rec in state.records():
        assert rec.pid is not None and os.getsid(rec.pid) == rec.pid
    argv_seen = json.loads((cluster_dir / "nodes" / "n2" / "argv.json").read_text())
    assert argv_seen[argv_seen.index("--etcd") + 1] == state.etcd[0].client_url
    assert argv_seen[argv_seen.index("--durability") + 1] == "async"

    # No queue yet, so no replica set in etcd.
    doc = status_json(cluster_dir, capsys)
    assert set(doc) == {"nodes", "partitions", "etcd"}
    assert [(n["id"], n["alive"], n["leads"]) for n in doc["nodes"]] == [
        ("n1", True, 0), ("n2", True, 0), ("n3", True, 0)]
    assert doc["partitions"] == []
    assert doc["etcd"] == [{"name": "etcd1", "client_url": state.etcd[0].client_url,
                            "pid": state.etcd[0].pid, "alive": True}]
    # A queue's replica set as the placing node and the controller would write it, and
    # its catalog entry; its lag from n1's report of it. A replica set no catalog entry
    # names (its creator died mid-placement, say) is listed with no queue.
    client = state.etcd[0].client_url
    layout = Layout("ferry")
    etcd_put(client, layout.partition(QUEUE_PARTITION), encode_state(
        PartitionState(leader="n1", epoch=1, replicas=("n1", "n2", "n3"),
                       isr=("n1", "n2"), min_isr=2, sync=True)))
    etcd_put(client, layout.queue("orders"),
             encode_entry(QueueEntry("orders", "creating", QUEUE_PARTITION)))
    etcd_put(client, layout.partition("lost-00000000"), encode_state(
        PartitionState(leader=None, epoch=0, replicas=("n2",), isr=("n2",), min_isr=1,
                       sync=False)))
    etcd_put(client, layout.queue("gone"), encode_entry(
        QueueEntry("gone", "deleted", None, deleted_ms=1)))
    doc = status_json(cluster_dir, capsys)
    assert doc["partitions"] == [
        {"queue": None, "partition": "lost-00000000", "leader": None, "epoch": 0,
         "replicas": ["n2"], "isr": ["n2"], "min_isr": 1, "sync": False, "moving": None,
         "lag": None},
        {"queue": "orders", "partition": QUEUE_PARTITION, "leader": "n1", "epoch": 1,
         "replicas": ["n1", "n2", "n3"], "isr": ["n1", "n2"], "min_isr": 2, "sync": True,
         "moving": None, "lag": {"n2": 0, "n3": 3}}]
    assert [n["leads"] for n in doc["nodes"]] == [1, 0, 0]
    assert _local.main(["status", "--data-dir", str(cluster_dir)]) == 0
    out = capsys.readouterr().out
    assert "n2:0 n3:3" in out and f"orders  {QUEUE_PARTITION}" in out
    etcd_delete(client, layout.partition("lost-00000000"))

    # A second `up` on a running cluster is refused.
    assert _local.main(up, node_command=fake_node) == 1
    assert "already running" in capsys.readouterr().err

    # stop by PID; start again; a kill -9 followed by start.
    old_pid = state.nodes[1].pid
    assert _local.main(["stop", "--data-dir", str(cluster_dir), "--node", "n2"]) == 0
    doc = status_json(cluster_dir, capsys)
    assert doc["nodes"][1] == {"id": "n2", "url": f"http://127.0.0.1:{base + 1}",
                               "pid": None, "alive": False, "leads": 0}
    assert _local.main(["stop", "--data-dir", str(cluster_dir), "--node", "n2"]) == 0
    assert "was not running" in capsys.readouterr().err
    assert _local.main(["start", "--data-dir", str(cluster_dir), "--node", "n2"]) == 0
    assert _local.main(["start", "--data-dir", str(cluster_dir), "--node", "n2"]) == 1
    assert "already running" in capsys.readouterr().err
    doc = status_json(cluster_dir, capsys)
    assert doc["nodes"][1]["alive"] and doc["nodes"][1]["pid"] not in (None, old_pid)
    n3_pid = doc["nodes"][2]["pid"]
    os.kill(n3_pid, signal.SIGKILL)
    _local._reap(n3_pid)
    assert not status_json(cluster_dir, capsys)["nodes"][2]["alive"]
    assert _local.main(["start", "--data-dir", str(cluster_dir), "--node", "n3"]) == 0
    assert status_json(cluster_dir, capsys)["nodes"][2]["alive"]

    # With etcd down, the replica set comes from the nodes' own reports.
    assert _local.main(["stop", "--data-dir", str(cluster_dir), "--node", "etcd1"]) == 0
    doc = status_json(cluster_dir, capsys)
    assert not doc["etcd"][0]["alive"]
    assert [(p["queue"], p["leader"], p["isr"], p["lag"]) for p in doc["partitions"]] == [
        ("orders", "n1", ["n1", "n2", "n3"], {"n2": 0, "n3": 3})]
    assert [n["leads"] for n in doc["nodes"]] == [1, 0, 0]

    # down stops everything by PID, keeps the data, and is idempotent.
    before = load_state(cluster_dir)
    assert before is not None
    assert _local.main(["down", "--data-dir", str(cluster_dir)]) == 0
    assert not any(is_ours(r.pid, r.argv) for r in before.records())
    assert _local.main(["down", "--data-dir", str(cluster_dir)]) == 0
    assert "nothing was running" in capsys.readouterr().err
    assert (cluster_dir / "nodes" / "n1" / "argv.json").exists()

    # `up` again restarts the recorded cluster (same ports, same data); other options
    # are refused rather than silently ignored.
    assert _local.main([*up, "--replicas", "2"], node_command=fake_node) == 1
    assert "holds a stopped cluster" in capsys.readouterr().err
    assert _local.main(up, node_command=fake_node) == 0
    assert f"n3  http://127.0.0.1:{base + 2}" in capsys.readouterr().out
    assert load_state(cluster_dir).etcd[0].client_port == state.etcd[0].client_port  # type: ignore[union-attr]
    assert _local.main(["down", "--data-dir", str(cluster_dir), "--purge"]) == 0
    assert not cluster_dir.exists()


def test_three_etcd_members_one_restarted_without_and_with_a_quorum(
        cluster_dir: Path, fake_node: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    require_etcd()
    assert _local.main(["up", "--data-dir", str(cluster_dir), "--nodes", "1",
                        "--etcd-members", "3", "--port", str(free_base_port(1))],
                       node_command=fake_node) == 0
    state = load_state(cluster_dir)
    assert state is not None
    urls = ",".join(m.client_url for m in state.etcd)
    assert f"etcd  {urls}" in capsys.readouterr().out
    argv_seen = json.loads((cluster_dir / "nodes" / "n1" / "argv.json").read_text())
    assert argv_seen[argv_seen.index("--etcd") + 1] == urls
    for name in ("etcd1", "etcd2", "etcd3"):
        assert _local.main(["stop", "--data-dir", str(cluster_dir), "--node", name]) == 0
    # The first one back cannot serve alone, and `start` says so instead of waiting for
    # a health that cannot come.
    started = time.monotonic()
    assert _local.main(["start", "--data-dir", str(cluster_dir), "--node", "etcd1"]) == 0
    assert time.monotonic() - started < 10
    assert "will serve once 2 of 3 etcd members run (1 do now)" in capsys.readouterr().err
    # With a quorum, `start` returns once the member is healthy.
    assert _local.main(["start", "--data-dir", str(cluster_dir), "--node", "etcd2"]) == 0
    assert member_healthy(state.etcd[1].client_url)
    doc = status_json(cluster_dir, capsys)
    assert [m["alive"] for m in doc["etcd"]] == [True, True, False]
    assert _local.main(["down", "--data-dir", str(cluster_dir)]) == 0


def test_a_node_that_cannot_start_fails_up_with_its_log(
        cluster_dir: Path, fake_node: list[str], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    require_etcd()
    monkeypatch.setenv("FAKE_NODE_MODE", "crash")
    started = time.monotonic()
    code = _local.main(["up", "--data-dir", str(cluster_dir), "--nodes", "2",
                        "--port", str(free_base_port(2))], node_command=fake_node)
    assert code == 1
    assert time.monotonic() - started < 30  # reported at once, not after the 60 s wait
    err = capsys.readouterr().err
    assert "exited while starting" in err and "cannot start, as asked" in err
    assert _local.main(["down", "--data-dir", str(cluster_dir)]) == 0


def test_up_refuses_a_port_in_use(
        cluster_dir: Path, fake_node: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    require_etcd()
    base = free_base_port(2)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", base + 1))
        taken.listen()
        code = _local.main(["up", "--data-dir", str(cluster_dir), "--nodes", "2",
                            "--port", str(base)], node_command=fake_node)
    assert code == 1
    assert f"port {base + 1} on 127.0.0.1 (for n2) is in use" in capsys.readouterr().err
    assert load_state(cluster_dir) is None  # nothing started, nothing recorded


def test_end_to_end_with_real_nodes(cluster_dir: Path) -> None:
    """The real command line and real `ferrymq node`s: up (no replica set yet), a queue
    created (its replica set appears), status, stop the queue's leader (a new one takes
    over), start it again, kill -9 a follower and start it, down. A message sent before
    the failover is received after it."""
    require_etcd()
    boto3 = pytest.importorskip("boto3", reason="boto3 comes with the test extra")
    base = free_base_port(3)
    cli = [sys.executable, "-m", "ferrymq._cluster._local"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([*cli, *args, "--data-dir", str(cluster_dir)], env=env,
                              capture_output=True, text=True, timeout=90, check=False)
        assert done.returncode == 0, (args, done.stderr)
        return done

    def status() -> dict[str, Any]:
        doc = json.loads(run("status", "--json").stdout)
        assert isinstance(doc, dict)
        return doc

    def queue_set(doc: dict[str, Any]) -> dict[str, Any] | None:
        found = [p for p in doc["partitions"] if p["queue"] == "local-cli"]
        return found[0] if found else None

    def wait_for(what: str, check: Any, timeout_s: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            doc = status()
            if check(doc):
                return doc
            assert time.monotonic() < deadline, f"{what}: {json.dumps(doc)}"
            time.sleep(0.2)

    up = run("up", "--nodes", "3", "--port", str(base), "--lease-ttl-seconds", "2")
    for i in range(3):
        assert f"n{i + 1}  http://127.0.0.1:{base + i}" in up.stdout
    assert "(controller n" in up.stdout
    doc = status()
    assert [n["alive"] for n in doc["nodes"]] == [True, True, True]
    assert doc["partitions"] == [] and [n["leads"] for n in doc["nodes"]] == [0, 0, 0]
    assert "no queue yet" in run("status").stdout

    sqs = boto3.client("sqs", endpoint_url=f"http://127.0.0.1:{base}", region_name="us-east-1",
                       aws_access_key_id="x", aws_secret_access_key="x")
    url = sqs.create_queue(QueueName="local-cli")["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="before the failover")
    doc = wait_for("the queue's replica set in sync", lambda d: (
        (p := queue_set(d)) is not None and sorted(p["isr"]) == ["n1", "n2", "n3"]
        and p["lag"] is not None))
    (part,) = doc["partitions"]
    leader = part["leader"]
    assert part["partition"].startswith("local-cli-") and part["epoch"] >= 1
    assert set(part["lag"]) == {"n1", "n2", "n3"} - {leader}
    assert {n["id"]: n["leads"] for n in doc["nodes"]}[leader] == 1
    assert f"local-cli  {part['partition']}  {leader}  " in run("status").stdout

    run("stop", "--node", leader)
    doc = wait_for("a new leader", lambda d: (p := queue_set(d)) is not None
                   and p["leader"] not in (None, leader) and p["lag"] is not None)
    assert [n["alive"] for n in doc["nodes"] if n["id"] == leader] == [False]
    run("start", "--node", leader)
    assert all(n["alive"] for n in status()["nodes"])

    now = queue_set(status())
    assert now is not None
    victim = next(n for n in status()["nodes"] if n["id"] != now["leader"])
    os.kill(victim["pid"], signal.SIGKILL)
    wait_for("the kill seen", lambda d: not d["nodes"][int(victim["id"][1:]) - 1]["alive"])
    run("start", "--node", victim["id"])
    wait_for("every node in sync again", lambda d: all(n["alive"] for n in d["nodes"])
             and (p := queue_set(d)) is not None and sorted(p["isr"]) == ["n1", "n2", "n3"])
    got = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=5).get("Messages", [])
    assert [m["Body"] for m in got] == ["before the failover"]

    run("down")
    state = load_state(cluster_dir)
    assert state is not None and not any(is_ours(r.pid, r.argv) for r in state.records())
