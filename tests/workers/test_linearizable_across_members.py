"""Linearizable ranges in a front end across members: a write another member acknowledged is read.

Two members on one replicated journal; m2 runs two processes. Its front end answers linearizable
ranges itself (kvstore/workers/notify.py): a barrier from the member's process, then the wait for
m2's applier to reach it. Without the barrier the front end reads what m2 applied so far, which
can be behind a write m1 just acknowledged.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from proto.etcdserverpb import rpc_pb2 as pb
from proto.etcdserverpb import rpc_pb2_grpc as rpc
from tests.servers import ServerProcess, members_on_journal
from tests.workers.test_workers import CONNECTIONS, WAIT_S, front_end_ranges, front_ends_serving, own_channel, wait_for

WRITES = 40


@pytest.fixture
def members() -> Iterator[tuple[ServerProcess, ServerProcess]]:
    with members_on_journal("kvstore-workers-cluster-", {"w-m1": {"workers": 1}, "w-m2": {"workers": 2}}) as (_, ms):
        wait_for(lambda: front_ends_serving(ms["w-m2"]) == 1, "m2's front end to serve")
        yield ms["w-m1"], ms["w-m2"]


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
