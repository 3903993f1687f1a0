"""Front ends of a member on a replicated journal, beside another member.

Two members on one replicated journal; m2 runs two processes. Its front end answers linearizable
ranges itself (kvstore/workers/notify.py): a barrier from the member's process, then the wait for
m2's applier to reach it. Without the barrier the front end reads what m2 applied so far, which
can be behind a write m1 just acknowledged. Its writes go to the journal with its own journal
client, not through m2's process.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from proto.etcdserverpb import rpc_pb2 as pb
from proto.etcdserverpb import rpc_pb2_grpc as rpc
from tests.servers import JournalNodes, ServerProcess, members_on_journal
from tests.workers.test_workers import (
    CONNECTIONS,
    WAIT_S,
    children,
    front_end_handled,
    front_end_ranges,
    front_ends_serving,
    own_channel,
    wait_for,
)

WRITES = 40


@pytest.fixture
def cluster() -> Iterator[tuple[JournalNodes, ServerProcess, ServerProcess]]:
    with members_on_journal("kvstore-workers-cluster-", {"w-m1": {"workers": 1}, "w-m2": {"workers": 2}}) as (
        nodes,
        ms,
    ):
        wait_for(lambda: front_ends_serving(ms["w-m2"]) == 1, "m2's front end to serve")
        yield nodes, ms["w-m1"], ms["w-m2"]


@pytest.fixture
def members(cluster: tuple[JournalNodes, ServerProcess, ServerProcess]) -> tuple[ServerProcess, ServerProcess]:
    return cluster[1], cluster[2]


def tcp_peer_ports(pid: int) -> set[int]:
    """Remote ports of the process's established TCP connections (its sockets in /proc/net/tcp)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().name
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = set()
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "01" and fields[9] in inodes:  # ESTABLISHED
            ports.add(int(fields[2].rsplit(":", 1)[1], 16))
    return ports


def test_a_front_end_reads_what_another_member_acknowledged(members: tuple[ServerProcess, ServerProcess]) -> None:
    m1, m2 = members
    writer = rpc.KVStub(m1.channel())
    channels: list[grpc.Channel] = [own_channel(m2) for _ in range(CONNECTIONS)]
    try:
        readers = [rpc.KVStub(ch) for ch in channels]
        before = front_end_ranges(m2)
        for i in range(WRITES):
            put = writer.Put(pb.PutRequest(key=b"/across/k", value=b"%d" % i), timeout=WAIT_S)
            got = readers[i % len(readers)].Range(pb.RangeRequest(key=b"/across/k"), timeout=WAIT_S)
            assert [kv.value for kv in got.kvs] == [b"%d" % i]
            assert got.header.revision >= put.header.revision
        assert front_end_ranges(m2) - before > 0, "no linearizable range reached m2's front end"
    finally:
        for ch in channels:
            ch.close()


def test_a_front_end_appends_to_the_journal_itself(cluster: tuple[JournalNodes, ServerProcess, ServerProcess]) -> None:
    """Writes a front end answers go to the journal through its own journal client (no hop through
    the member's process), in the one order every member applies: m1 reads each of them."""
    nodes, m1, m2 = cluster
    assert m2.proc is not None
    front_end = children(m2.proc.pid)[0]
    reader = rpc.KVStub(m1.channel())
    channels: list[grpc.Channel] = [own_channel(m2) for _ in range(CONNECTIONS)]
    try:
        before = front_end_handled(m2, "Put")
        revisions = []
        for i, ch in enumerate(channels):
            put = rpc.KVStub(ch).Put(pb.PutRequest(key=b"/direct/%d" % i, value=b"%d" % i), timeout=WAIT_S)
            revisions.append(put.header.revision)
            got = reader.Range(pb.RangeRequest(key=b"/direct/%d" % i), timeout=WAIT_S)
            assert [kv.value for kv in got.kvs] == [b"%d" % i]
            assert got.kvs[0].mod_revision == put.header.revision
        assert revisions == sorted(revisions) and len(set(revisions)) == len(revisions)
        assert front_end_handled(m2, "Put") - before > 0, "no put reached m2's front end"
        journal_ports = set(nodes.ports.values())
        assert tcp_peer_ports(front_end) & journal_ports, "the front end holds no connection to a journal node"
    finally:
        for ch in channels:
            ch.close()
