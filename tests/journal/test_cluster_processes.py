"""Real journal node processes on loopback under faults.

A client appends without pause while nodes are killed (-9), paused
(SIGSTOP/SIGCONT, leader and follower) and restarted with a torn segment
tail. After each fault appends must flow again, and at the end every acknowledged entry must be in
the log exactly once, at the position its acknowledgement gave, on every node.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.journal_procs import NodeProc, ProcCluster
from journal.client import JournalClient
from tests.journal.appender import Load, verify

LOG = "faults"


async def verify_cluster(cluster: ProcCluster, acked: list[tuple[int, bytes]]) -> None:
    await verify(cluster.endpoints, LOG, acked)


def tear_tail(node: NodeProc) -> int:
    """Append half a record's worth of garbage to the node's last segment."""
    segs = sorted((node.data_dir / "logs" / LOG / "raft").glob("*.seg"))
    assert segs, "no segment to tear"
    with open(segs[-1], "ab") as f:
        f.write(b"\x40\x00\x00\x00" + b"torn!" * 7)
    return len(segs)


async def run_faults(tmp_path: Path, rounds: int, writers: int) -> None:
    cluster = ProcCluster(tmp_path, "abc", fsync="always", tick_ms=50)
    cluster.start()
    client = JournalClient(cluster.endpoints, rpc_timeout_ms=1000)
    load = Load(client, LOG, writers)
    try:
        await load.progress(50, 30, "start")
        for _ in range(rounds):
            # 1. kill -9 the leader, restart it later.
            leader = await cluster.leader(client, LOG)
            leader.kill()
            await load.progress(50, 20, f"kill -9 of leader {leader.node_id}")
            leader.start()
            leader.wait_listening()
            await load.progress(50, 20, f"restart of {leader.node_id}")
            # 2. kill -9 a follower.
            leader = await cluster.leader(client, LOG)
            follower = next(n for n in cluster.nodes.values() if n is not leader)
            follower.kill()
            await load.progress(50, 20, f"kill -9 of follower {follower.node_id}")
            follower.start()
            follower.wait_listening()
            # 3. SIGSTOP the leader past the election timeout, then SIGCONT.
            leader = await cluster.leader(client, LOG)
            leader.pause()
            await load.progress(50, 20, f"SIGSTOP of leader {leader.node_id}")
            leader.cont()
            await load.progress(50, 20, f"SIGCONT of {leader.node_id}")
            # 4. kill -9 a node, tear its segment tail, restart it.
            victim = next(n for n in cluster.nodes.values() if n.node_id != leader.node_id)
            victim.kill()
            tear_tail(victim)
            victim.start()
            victim.wait_listening()
            await load.progress(50, 20, f"restart of {victim.node_id} with a torn tail")
            assert "truncating segment" in victim.stderr_tail(20_000), victim.stderr_tail()
            # 5. SIGSTOP a follower for a while (the leader keeps committing with the
            #    third node), then SIGCONT: it catches up.
            leader = await cluster.leader(client, LOG)
            follower = next(n for n in cluster.nodes.values() if n is not leader)
            follower.pause()
            await load.progress(100, 20, f"SIGSTOP of follower {follower.node_id}")
            follower.cont()
            await load.progress(50, 20, f"SIGCONT of follower {follower.node_id}")
        await load.stop()
        await verify_cluster(cluster, load.acked)
    finally:
        if not load.stopped:
            await load.halt()
        await client.close()
        cluster.stop()


async def test_faults_short(tmp_path: Path) -> None:
    await run_faults(tmp_path, rounds=1, writers=4)


@pytest.mark.slow
async def test_faults_long(tmp_path: Path) -> None:
    await run_faults(tmp_path, rounds=10, writers=16)
