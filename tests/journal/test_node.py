"""Journal nodes in one process (real sockets, real disks): client protocol and failover."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from journal.api import Entry, Journal, PositionMismatch, PositionTrimmed, Snapshot
from journal.client import JournalClient
from tests.journal.cluster import InProcessCluster


async def read_until(c: JournalClient, log: str, first: int, last: int, timeout_s: float = 10.0) -> list[Entry]:
    out: list[Entry] = []

    async def run() -> None:
        async for batch in c.read(log, first):
            out.extend(batch)
            if out[-1].position >= last:
                return

    await asyncio.wait_for(run(), timeout_s)
    return out


async def test_append_read_barrier_status(cluster: InProcessCluster) -> None:
    c: Journal = cluster.client()
    a = await c.append("pods", [b"a", b"b"])
    assert [x.position for x in a] == [1, 2]
    many = await asyncio.gather(*(c.append("pods", [str(i).encode()]) for i in range(300)))
    positions = sorted(x[0].position for x in many)
    assert positions == list(range(3, 303))
    assert await c.barrier("pods") >= 302
    st = await c.status("pods")
    assert st.committed >= 302 and st.leader == cluster.addr(await cluster.leader("pods"))
    got = await read_until(c, "pods", 1, 302)  # type: ignore[arg-type]
    assert [e.position for e in got] == list(range(1, 303))
    by_pos = {e.position: e.data for e in got}
    for i, x in enumerate(many):
        assert by_pos[x[0].position] == str(i).encode()
    ts = [e.timestamp_ms for e in got]
    assert ts == sorted(ts)
    await c.close()


async def test_reads_from_every_node(cluster: InProcessCluster) -> None:
    c = cluster.client()
    await c.append("l", [b"x%d" % i for i in range(20)])
    for n in cluster.ids:
        one = JournalClient([cluster.addr(n)])
        got = await read_until(one, "l", 5, 20)
        assert [e.data for e in got] == [b"x%d" % i for i in range(4, 20)]
        await one.close()
    await c.close()


async def test_redirect_from_follower(cluster: InProcessCluster) -> None:
    c = cluster.client()
    await c.append("r", [b"first"])
    leader = await cluster.leader("r")
    follower = next(n for n in cluster.ids if n != leader)
    only_follower = JournalClient([cluster.addr(follower)])
    a = await only_follower.append("r", [b"via-redirect"])
    assert a[0].position == 2
    await only_follower.close()
    await c.close()


async def test_conditional_append_and_idempotent_retry(cluster: InProcessCluster) -> None:
    c = cluster.client()
    assert (await c.append("c", [b"a"], expected_position=0))[0].position == 1
    with pytest.raises(PositionMismatch) as e:
        await c.append("c", [b"b"], expected_position=0)
    assert e.value.tail == 1
    # Re-sending the same (client id, seq) returns the original positions, not new ones.
    payload = {"log": "c", "client": c.client_id, "seq": 1000, "entries": [b"once"], "expected": None}
    first = await c._leader_call("c", "append", dict(payload))
    again = await c._leader_call("c", "append", dict(payload))
    assert first == {**again, "id": first["id"]}
    assert await c.barrier("c") == 2
    await c.close()


async def test_leader_failover_loses_nothing(cluster: InProcessCluster) -> None:
    c = cluster.client()
    acked: list[tuple[int, bytes]] = []
    stop = asyncio.Event()

    async def writer(w: int) -> None:
        i = 0
        while not stop.is_set():
            data = f"w{w}-{i}".encode()
            a = await c.append("f", [data])
            acked.append((a[0].position, data))
            i += 1

    tasks = [asyncio.create_task(writer(w)) for w in range(4)]
    await asyncio.sleep(0.5)
    old = await cluster.leader("f")
    await cluster.stop(old)
    before = len(acked)
    await asyncio.sleep(2.0)
    assert len(acked) > before, "appends did not resume after the leader stopped"
    await cluster.start(old)
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.gather(*tasks)
    last = max(p for p, _ in acked)
    got = await read_until(c, "f", 1, last)
    by_pos = {e.position: e.data for e in got}
    assert [e.position for e in got] == list(range(1, len(got) + 1))
    for p, data in acked:
        assert by_pos[p] == data
    assert len(set(by_pos.values())) == len(by_pos), "an entry was appended twice"
    await c.close()


async def test_snapshot_and_trim(cluster: InProcessCluster) -> None:
    c = cluster.client()
    assert await c.snapshot_get("s") is None
    await c.append("s", [b"%d" % i for i in range(100)])
    await c.snapshot_put("s", Snapshot(60, b"state@60"))
    assert await c.snapshot_get("s") == Snapshot(60, b"state@60")
    await c.trim("s", 60)
    await asyncio.sleep(0.2)
    with pytest.raises(PositionTrimmed):
        await read_until(c, "s", 1, 5)
    got = await read_until(c, "s", 60, 100)
    assert got[0].position == 60 and got[-1].data == b"99"
    await c.close()


async def test_restart_whole_cluster_keeps_log(tmp_path: Path) -> None:
    cl = InProcessCluster(tmp_path)
    await cl.start()
    c = cl.client()
    await c.append("p", [b"a", b"b", b"c"])
    await c.close()
    await cl.close()
    await cl.start()
    c = cl.client()
    a = await c.append("p", [b"d"])
    assert a[0].position == 4
    got = await read_until(c, "p", 1, 4)
    assert [e.data for e in got] == [b"a", b"b", b"c", b"d"]
    await c.close()
    await cl.close()


async def test_lagging_follower_catches_up_through_a_snapshot(cluster: InProcessCluster) -> None:
    c = cluster.client()
    await c.append("g", [b"a%d" % i for i in range(10)])
    leader = await cluster.leader("g")
    lagging = next(n for n in cluster.ids if n != leader)
    await cluster.stop(lagging)
    for i in range(5):
        await c.append("g", [b"b%d-%d" % (i, j) for j in range(20)])
    await c.trim("g", 80)  # the leader no longer holds what the stopped node lacks
    await asyncio.sleep(0.3)
    await cluster.start(lagging)
    # The restarted node installs the leader's snapshot, then serves reads from there.
    one = JournalClient([cluster.addr(lagging)])
    got = await read_until(one, "g", 80, 110)
    assert [e.position for e in got] == list(range(80, 111))
    assert got[-1].data == b"b4-19"
    with pytest.raises(PositionTrimmed):
        await read_until(one, "g", 1, 2)
    await one.close()
    # And it restarts cleanly from what it persisted.
    await cluster.stop(lagging)
    await cluster.start(lagging)
    one = JournalClient([cluster.addr(lagging)])
    assert (await read_until(one, "g", 100, 110))[-1].data == b"b4-19"
    await one.close()
    await c.close()


async def test_five_nodes_survive_two_failures(tmp_path: Path) -> None:
    cl = InProcessCluster(tmp_path, ids="abcde")
    await cl.start()
    c = cl.client()
    try:
        await c.append("five", [b"a"])
        leader = await cl.leader("five")
        for n in [leader, next(n for n in cl.ids if n != leader)]:
            await cl.stop(n)
        a = await c.append("five", [b"b"])
        assert a[0].position == 2
        got = await read_until(c, "five", 1, 2)
        assert [e.data for e in got] == [b"a", b"b"]
    finally:
        await c.close()
        await cl.close()


async def test_oversized_request_fails_fast(cluster: InProcessCluster) -> None:
    c = JournalClient([cluster.addr(n) for n in cluster.ids], frame_bytes_max=64 * 1024)
    with pytest.raises(ValueError, match="over the limit"):
        await c.append("big", [b"x" * 100_000])
    assert c.retries == 0
    await c.close()


async def test_entries_larger_than_etcds_request_limit(cluster: InProcessCluster) -> None:
    c = cluster.client()
    big = bytes(range(256)) * (2 * 1024 * 1024 // 256)  # 2 MiB: etcd accepts requests up to 1.5 MiB
    a = await c.append("big", [b"small", big])
    assert [x.position for x in a] == [1, 2]
    got = await read_until(c, "big", 1, 2)
    assert got[1].data == big
    await c.close()


async def test_leader_reads_catch_up_anywhere_then_move_to_the_leader(cluster: InProcessCluster) -> None:
    c = cluster.client()
    await c.append("mv", [b"%d" % i for i in range(50)])
    leader = await cluster.leader("mv")
    follower = next(n for n in cluster.ids if n != leader)
    for _ in range(500):  # until the follower knows all 50 are committed
        if cluster.nodes[follower]._replicas["mv"].readable_position >= 50:
            break
        await asyncio.sleep(0.01)
    r = cluster.client()
    assert r.read_from == "leader"
    r._leader["mv"] = cluster.addr(follower)  # as if the leader had moved since we learnt it
    got: list[Entry] = []

    async def tail() -> None:
        async for batch in r.read("mv", 1):
            got.extend(batch)
            if got[-1].position >= 60:
                return

    task = asyncio.create_task(tail())
    while len(got) < 50:
        await asyncio.sleep(0.01)
    await c.append("mv", [b"%d" % i for i in range(50, 60)])
    await asyncio.wait_for(task, 10)
    # The history came from the follower; at the tail it sent the stream on to the leader.
    assert cluster.nodes[follower].entries_served == 50
    assert cluster.nodes[leader].entries_served == 10
    assert r.retries == 1 and r._leader["mv"] == cluster.addr(leader)
    assert [e.data for e in got[:60]] == [b"%d" % i for i in range(60)]
    await r.close()
    await c.close()


async def test_append_rides_through_a_full_outage(tmp_path: Path) -> None:
    cl = InProcessCluster(tmp_path)
    await cl.start()
    c = cl.client(request_timeout_ms=20_000)
    try:
        await c.append("o", [b"before"])
        for n in list(cl.ids):
            await cl.stop(n)
        pending = asyncio.create_task(c.append("o", [b"during"]))
        await asyncio.sleep(1.0)
        assert not pending.done()
        await cl.start()
        a = await asyncio.wait_for(pending, 15)
        assert a[0].position == 2
        assert [e.data for e in await read_until(c, "o", 1, 2)] == [b"before", b"during"]
    finally:
        await c.close()
        await cl.close()


async def test_a_reader_that_fell_behind_gets_the_frames_it_received_as_one_batch(cluster: InProcessCluster) -> None:
    c = cluster.client()
    await c.append("lag", [b"0"])
    r = cluster.client()
    stream = r.read("lag", 1).__aiter__()
    got = list(await asyncio.wait_for(anext(stream), 10))
    # 50 commits, one frame each on the stream, while its reader applies nothing (as a paused or busy member).
    for i in range(1, 51):
        await c.append("lag", [b"%d" % i])
    await asyncio.sleep(0.2)
    batches = 0
    while got[-1].position < 51:
        got.extend(await asyncio.wait_for(anext(stream), 10))
        batches += 1
    assert [e.data for e in got] == [b"%d" % i for i in range(51)]
    assert batches <= 2, batches  # one batch a frame before: one write transaction, one notify each
    await stream.aclose()
    await r.close()
