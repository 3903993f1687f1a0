"""etcdctl end to end: the same commands against a real etcd and the server under test, outputs compared."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.differential.harness import Pair, PairPool, align_revisions
from tests.etcdctl.ctl import ETCDCTL, Compare, Ctl, Result

pytestmark = pytest.mark.skipif(shutil.which("etcdctl") is None, reason="etcdctl not on PATH")


@pytest.fixture
def cmp(diff_pool: PairPool) -> Iterator[Compare]:
    """A Compare on the shared pair, revisions aligned so `-w json` headers compare."""
    pair = diff_pool.shared()
    align_revisions(pair.a.channel(), pair.b.channel())
    c = Compare(Ctl(pair.a), Ctl(pair.b))
    yield c
    # leave no lease behind: an expiring key would move revisions under later tests
    for ctl in (c.a, c.b):
        for lid in list(ctl.leases.names):
            ctl.run_raw(["lease", "revoke", f"{lid:x}"])


def _fresh(diff_pool: PairPool, flags: dict[str, object] | None = None) -> tuple[Pair, Compare]:
    pair = diff_pool.fresh(flags)
    return pair, Compare(Ctl(pair.a), Ctl(pair.b))


def test_put_get_options(cmp: Compare) -> None:
    p = "/ctl/get/"
    for k, v in [("b", "2"), ("a", "1"), ("c", "3"), ("a", "11"), ("d", "0")]:
        cmp.both(["put", p + k, v], expect_rc=0)
    cmp.both(["put", p + "a", "12", "--prev-kv"], expect_rc=0)
    cmp.both(["get", p + "a"])
    cmp.both(["get", p + "a", "-w", "json"])
    cmp.both(["get", p, "--prefix"])
    cmp.both(["get", p, "--prefix", "--limit", "2"])
    cmp.both(["get", p, "--prefix", "--limit", "2", "-w", "json"])
    cmp.both(["get", p, "--prefix", "--sort-by", "VALUE", "--order", "DESCEND"])
    cmp.both(["get", p, "--prefix", "--sort-by", "CREATE", "--order", "ASCEND"])
    cmp.both(["get", p, "--prefix", "--sort-by", "MODIFY", "--order", "DESCEND", "--limit", "2"])
    cmp.both(["get", p, "--prefix", "--sort-by", "VERSION", "--order", "DESCEND", "--limit", "1"])
    cmp.both(["get", p, "--prefix", "--keys-only"])
    cmp.both(["get", p, "--prefix", "--count-only", "-w", "json"])
    cmp.both(["get", p, "--prefix", "--print-value-only"])
    cmp.both(["get", p + "a", p + "c"])
    cmp.both(["get", p + "b", "--from-key", "--limit", "2"])
    cmp.both(["get", p, "--prefix", "--consistency", "s", "--keys-only"])
    rev = cmp.a.run(["get", p + "a", "-w", "json"]).out["kvs"][0]["create_revision"]
    cmp.both(["get", p + "a", "--rev", str(rev)])
    cmp.both(["get", p, "--prefix", "--rev", str(rev + 1), "-w", "json"])
    cmp.both(["get", p, "--prefix", "--min-mod-revision", str(rev + 2)])
    cmp.both(["get", p, "--prefix", "--max-create-revision", str(rev + 1)])
    cmp.both(["get", p + "a", "--rev", str(10**9)], expect_rc=1)
    cmp.both(["get", p + "missing"])
    cmp.both(["get", ""], expect_rc=1)
    assert not cmp.diffs, cmp.report()


def test_del(cmp: Compare) -> None:
    p = "/ctl/del/"
    for k in ("a", "b", "c", "d"):
        cmp.both(["put", p + k, k])
    cmp.both(["del", p + "a"])
    cmp.both(["del", p + "a"])
    cmp.both(["del", p + "b", "--prev-kv"])
    cmp.both(["del", p, "--prefix", "-w", "json"])
    cmp.both(["put", p + "x", "1"])
    cmp.both(["del", p + "x", "--prev-kv", "-w", "json"])
    cmp.both(["get", p, "--prefix", "--count-only", "-w", "json"])
    assert not cmp.diffs, cmp.report()


def test_txn_interactive(cmp: Compare) -> None:
    p = "/ctl/txn/"
    cmp.both(["put", p + "k", "v1"])
    script = (f'mod("{p}k") > "0"\nval("{p}k") = "v1"\n\n'
              f"put {p}k v2\nget {p}k\n\n"
              f"get {p}k\n\n")
    cmp.both(["txn", "-i"], stdin=script, expect_rc=0)
    cmp.both(["txn", "-i"], stdin=script, expect_rc=0)  # now the compare fails: the failure branch runs
    cmp.both(["txn"], stdin=f'ver("{p}k") = "2"\n\ndel {p}k\n\nput {p}other x\n\n')
    cmp.both(["txn", "-w", "json"], stdin=f'create("{p}k") = "0"\n\nput {p}k v3\n\n\n')
    cmp.both(["txn"], stdin=f"\nput {p}a 1\nput {p}a 2\n\n\n", expect_rc=1)  # duplicate key
    cmp.both(["get", p, "--prefix"])
    assert not cmp.diffs, cmp.report()


def test_watch_rev_and_prev_kv(cmp: Compare) -> None:
    p = "/ctl/watch/"
    start = cmp.a.run(["put", p + "a", "1", "-w", "json"]).out["header"]["revision"]
    cmp.b.run(["put", p + "a", "1"])
    for args in (["put", p + "b", "2"], ["put", p + "a", "3"], ["del", p + "a"], ["put", p + "c", "4"]):
        cmp.both(args)
    cmp.watch([p + "a", "--rev", str(start)])
    cmp.watch([p, "--prefix", "--rev", str(start), "--prev-kv"])
    cmp.watch([p, "--prefix", "--rev", str(start + 2), "-w", "json"])
    cmp.watch([p + "a", p + "c", "--rev", str(start)])
    assert not cmp.diffs, cmp.report()


def test_lease_commands(cmp: Compare) -> None:
    p = "/ctl/lease/"
    cmp.both(["lease", "grant", "600"], expect_rc=0)
    lid_a = next(iter(cmp.a.leases.names))
    lid_b = next(iter(cmp.b.leases.names))

    def on_both(args_a: list[str], args_b: list[str]) -> None:
        cmp.check(" ".join(args_a), cmp.a.run(args_a), cmp.b.run(args_b), None)

    on_both(["put", p + "k1", "v", f"--lease={lid_a:x}"], ["put", p + "k1", "v", f"--lease={lid_b:x}"])
    on_both(["put", p + "k2", "v", f"--lease={lid_a:x}"], ["put", p + "k2", "v", f"--lease={lid_b:x}"])
    on_both(["lease", "timetolive", f"{lid_a:x}"], ["lease", "timetolive", f"{lid_b:x}"])
    on_both(["lease", "timetolive", f"{lid_a:x}", "--keys"], ["lease", "timetolive", f"{lid_b:x}", "--keys"])
    on_both(["lease", "keep-alive", "--once", f"{lid_a:x}"], ["lease", "keep-alive", "--once", f"{lid_b:x}"])
    cmp.both(["lease", "list"])
    cmp.both(["get", p, "--prefix", "-w", "json"])
    on_both(["lease", "revoke", f"{lid_a:x}"], ["lease", "revoke", f"{lid_b:x}"])
    cmp.both(["get", p, "--prefix", "--count-only"])
    on_both(["lease", "timetolive", f"{lid_a:x}"], ["lease", "timetolive", f"{lid_b:x}"])
    on_both(["lease", "revoke", f"{lid_a:x}"], ["lease", "revoke", f"{lid_b:x}"])
    cmp.both(["lease", "timetolive", "1234abcd"])
    cmp.both(["lease", "revoke", "1234abcd"], expect_rc=1)
    cmp.both(["lease", "keep-alive", "--once", "1234abcd"])
    cmp.both(["put", p + "k3", "v", "--lease=1234abcd"], expect_rc=1)
    assert not cmp.diffs, cmp.report()


def test_compaction(diff_pool: PairPool) -> None:
    pair, cmp = _fresh(diff_pool)
    try:
        for i in range(5):
            cmp.both(["put", "k", str(i)])
        cmp.both(["compaction", "3"], expect_rc=0)
        cmp.both(["compaction", "3"], expect_rc=1)
        cmp.both(["compaction", "100"], expect_rc=1)
        cmp.both(["get", "k", "--rev", "2"], expect_rc=1)
        cmp.both(["get", "k", "--rev", "3"])
        cmp.both(["compaction", "--physical", "5"], expect_rc=0)
        cmp.watch(["k", "--rev", "2"], seconds=1.0)
        assert not cmp.diffs, cmp.report()
    finally:
        pair.stop()


def test_endpoint_status_health_member_list(cmp: Compare) -> None:
    cmp.both(["endpoint", "health"], expect_rc=0)
    cmp.both(["endpoint", "health", "--cluster"], expect_rc=0)
    # status: compare what is comparable (ids, versions, sizes and raft numbers are per server)
    for ctl in (cmp.a, cmp.b):
        r = ctl.run(["endpoint", "status", "-w", "json"])
        assert r.rc == 0, (ctl.server, r)
        assert r.out[0]["Status"]["leader"], (ctl.server.kind, r.out)
        fields = ctl.run_raw(["endpoint", "status"]).stdout.rstrip("\n").split(", ")
        # endpoint, ID, version, db size, is leader, is learner, raft term, raft index, applied index, errors
        assert len(fields) == 10, (ctl.server.kind, fields)
        assert fields[4] == "true" and fields[5] == "false", (ctl.server.kind, fields)
        members = ctl.run_raw(["member", "list"]).stdout.strip().splitlines()
        assert len(members) == 1, (ctl.server.kind, members)
        m = members[0].split(", ")
        assert m[1] == "started" and m[4] == ctl.server.client_url and m[5] == "false", (ctl.server.kind, m)
        table = ctl.run_raw(["member", "list", "-w", "table"])
        assert table.returncode == 0 and ctl.server.client_url in table.stdout
    assert not cmp.diffs, cmp.report()


def test_snapshot_save(cmp: Compare, tmp_path: Path) -> None:
    cmp.both(["put", "/ctl/snap/k", "v"])
    for ctl in (cmp.a, cmp.b):
        path = tmp_path / f"{ctl.server.kind}-{ctl.server.port}.db"
        r = ctl.run_raw(["snapshot", "save", str(path)])
        assert r.returncode == 0, (ctl.server.kind, r.stdout, r.stderr)
        assert f"Snapshot saved at {path}" in r.stdout, (ctl.server.kind, r.stdout)
        size = path.stat().st_size
        assert size > 0 and size % 512 == 32, (ctl.server.kind, size)


def test_defrag(cmp: Compare) -> None:
    cmp.both(["defrag"], expect_rc=0)
    assert not cmp.diffs, cmp.report()


def test_alarm_nospace_workflow(diff_pool: PairPool) -> None:
    pair, cmp = _fresh(diff_pool, {"quota-backend-bytes": 100_000})
    try:
        cmp.both(["alarm", "list"], expect_rc=0)
        cmp.both(["put", "small", "1"], expect_rc=0)
        cmp.both(["put", "big", "x" * 120_000], expect_rc=1)
        cmp.both(["alarm", "list"])
        cmp.both(["put", "small", "2"], expect_rc=1)
        cmp.both(["endpoint", "health"], expect_rc=1)
        cmp.both(["get", "small"])
        cmp.both(["compaction", "2"])
        cmp.both(["defrag"])
        cmp.both(["alarm", "disarm"])
        cmp.both(["alarm", "list"])
        cmp.both(["put", "small", "3"], expect_rc=0)
        cmp.both(["endpoint", "health"], expect_rc=0)
        assert not cmp.diffs, cmp.report()
    finally:
        pair.stop()


def _interactive_watch(ctl: Ctl, key: str) -> subprocess.Popen[str]:
    env = dict(os.environ, ETCDCTL_API="3")
    return subprocess.Popen([ETCDCTL, f"--endpoints={ctl.server.endpoint}", "watch", "-i"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_watch_interactive_progress(cmp: Compare) -> None:
    """`watch -i` with `progress` (a WatchProgressRequest): answered with the current revision once the
    watcher is synced. (etcd 3.5.1 also answers before a --rev watcher has caught up, printing the
    progress line before the history: bug #15220, fixed in 3.5.13; so only a synced watcher is compared.)"""
    key = "/ctl/watchi/k"
    cmp.both(["put", key, "v1"])
    procs = [_interactive_watch(c, key) for c in (cmp.a, cmp.b)]

    def send(line: str) -> None:
        for p in procs:
            assert p.stdin is not None
            p.stdin.write(line + "\n")
            p.stdin.flush()

    send(f"watch {key}")
    time.sleep(0.5)
    send("progress")
    time.sleep(0.3)
    cmp.both(["put", key, "v2"])
    time.sleep(0.3)
    send("progress")
    time.sleep(0.3)
    outs = []
    for p, c in zip(procs, (cmp.a, cmp.b), strict=True):
        p.terminate()
        out, _ = p.communicate(timeout=10)
        # stderr is not compared: both etcdctls are stopped by a signal, and whether one printed
        # "error reading watch request line: EOF" first depends only on when the signal landed.
        outs.append(Result(0, c.norm_text(out), ""))
    cmp.check("watch -i (watch, progress, put, progress)", outs[0], outs[1], None)
    assert "progress notify:" in outs[0].out, outs[0]
    assert not cmp.diffs, cmp.report()


def test_lock(cmp: Compare) -> None:
    cmp.both(["lock", "/ctl/lock/name", "echo", "locked"], expect_rc=0)
    cmp.both(["get", "/ctl/lock/", "--prefix", "--count-only", "-w", "json"])
    assert not cmp.diffs, cmp.report()
