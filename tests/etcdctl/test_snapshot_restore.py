"""`etcdctl snapshot save` from each server, restored into a new server of the same kind (etcd:
`etcdutl snapshot restore`; ours: `kvstore serve --restore-snapshot`), then both restored servers are
compared like any differential scenario: keys, revisions, history, compaction, leases."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.differential.harness import Pair, PairPool, render_mismatches, run_steps
from tests.differential.harness import Scenario as _Scenario
from tests.differential.normalize import LID, R
from tests.differential.session import Session
from tests.differential.steps import compact, delete, grant, op_put, put, range_, txn, unary
from tests.etcdctl.ctl import Ctl
from tests.servers import ServerProcess, start_etcd, start_kvstore


def _write() -> list:
    return [grant(600, LID(1)), put("a", "1"), put("b", "1", lease=LID(1)),
            txn([], [op_put("a", "2"), op_put("c", "1")]), delete("b"), put("d", "1", lease=LID(1)),
            compact(R(3)), put("a", "3")]


def _check() -> list:
    return [range_(b"\0", range_end=b"\0"), range_("a", revision=R(3)), range_("a", revision=R(4)),
            range_("a", revision=R(2)), unary("LeaseLeases"),
            unary("LeaseTimeToLive", {"ID": LID(1), "keys": True}, drop=("TTL",)),
            put("e", "1"), range_(b"\0", range_end=b"\0", keys_only=True)]


def _sessions(pair: Pair) -> tuple[Session, Session]:
    return (Session(pair.a.channel(), b"", 1, 0, label=pair.a.kind, server=pair.a),
            Session(pair.b.channel(), b"", 1, 0, label=pair.b.kind, server=pair.b))


def _save(server: ServerProcess, path: Path) -> None:
    r = Ctl(server).run_raw(["snapshot", "save", str(path)])
    assert r.returncode == 0, (server.kind, r.stdout, r.stderr)


@pytest.mark.slow  # ~20 s: four servers; tests/cluster/test_snapshot_restore.py covers ours alone in CI
def test_snapshot_restore_seeds_a_new_server(diff_pool: PairPool, tmp_path: Path) -> None:
    pair = diff_pool.fresh()
    files = (tmp_path / "a.db", tmp_path / "b.db")
    try:
        sa, sb = _sessions(pair)
        assert not run_steps(_write(), sa, sb)
        _save(pair.a, files[0])
        _save(pair.b, files[1])
    finally:
        pair.stop()
    a = start_etcd("restored-ref", restore_from=files[0])
    try:
        if pair.b.kind == "kvstore":
            b = start_kvstore("restored-sut", extra_args=[f"--restore-snapshot={files[1]}"])
        else:
            b = start_etcd("restored-sut", restore_from=files[1])
        restored = Pair(a, b)
        try:
            sa, sb = _sessions(restored)
            mismatches = run_steps(_check(), sa, sb)
            assert not mismatches, render_mismatches(_Scenario("snapshot_restore", _check), restored, mismatches)
        finally:
            b.stop()
    finally:
        a.stop()
