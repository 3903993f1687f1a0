"""The member registry, applied from journal entries: liveness from entry timestamps, evictions for good."""

from __future__ import annotations

import msgpack
import pytest

from kvstore import errors
from kvstore.errors import EtcdError
from kvstore.membership import MemberRegistry
from kvstore.statemachine import Kind, StateMachine, encode_entry
from proto.etcdserverpb import rpc_pb2 as pb
from tests.unit.test_mvcc import Driver

TTL_MS = 5000


def heartbeat(d: Driver, member_id: int, name: str, at_ms: int, peer: str = "", client: str = "") -> object:
    d.now_ms = at_ms
    me = pb.Member(ID=member_id, name=name, peerURLs=[peer] if peer else [], clientURLs=[client] if client else [])
    d.position += 1
    payload = msgpack.packb([me.SerializeToString(), TTL_MS])
    out = d.sm.apply(d.position, at_ms, encode_entry(Kind.MEMBER_HEARTBEAT, 7, d.position, payload))
    return out.result


def listed(d: Driver) -> list[tuple[int, str]]:
    return [(m.id, m.name) for m in d.sm.members.listed()]


def test_members_register_renew_and_expire_by_journal_time() -> None:
    d = Driver()
    for i, name in ((3, "c"), (1, "a"), (2, "b")):
        heartbeat(d, i, name, 1000, client=f"http://127.0.0.1:{2379 + i}")
    assert listed(d) == [(1, "a"), (2, "b"), (3, "c")]  # by id, as etcd lists them
    heartbeat(d, 1, "a", 4000)
    heartbeat(d, 2, "b", 4000)
    heartbeat(d, 1, "a", 6500)  # 3's deadline (6000) has passed at this entry's time
    assert listed(d) == [(1, "a"), (2, "b")]
    heartbeat(d, 3, "c", 7000)  # a member that comes back registers again
    assert listed(d) == [(1, "a"), (2, "b"), (3, "c")]
    assert d.sm.members.get(3).client_urls == []  # type: ignore[union-attr]


def test_remove_evicts_for_good_and_add_preregisters() -> None:
    d = Driver()
    heartbeat(d, 1, "a", 1000, peer="http://10.0.0.1:2380")
    heartbeat(d, 2, "b", 1000, peer="http://10.0.0.2:2380")
    resp = d.apply(Kind.MEMBER_REMOVE, pb.MemberRemoveRequest(ID=2))
    assert [m.ID for m in resp.members] == [1]  # type: ignore[attr-defined]
    assert d.last.removed_member == 2
    refused = heartbeat(d, 2, "b", 2000)
    assert refused == errors.fail(errors.MEMBER_REMOVED)
    with pytest.raises(EtcdError) as e:
        d.apply(Kind.MEMBER_REMOVE, pb.MemberRemoveRequest(ID=2))
    assert e.value == errors.fail(errors.MEMBER_NOT_FOUND)
    with pytest.raises(EtcdError) as e:
        d.apply(Kind.MEMBER_ADD, pb.Member(ID=9, peerURLs=["http://10.0.0.1:2380"]))
    assert e.value == errors.fail(errors.PEER_URL_EXIST)
    added = d.apply(Kind.MEMBER_ADD, pb.Member(ID=9, peerURLs=["http://10.0.0.9:2380"]))
    assert added.member.ID == 9 and not added.member.name  # type: ignore[attr-defined]
    assert d.sm.members.claim(["http://10.0.0.9:2380"]) == 9
    heartbeat(d, 1, "a", 100_000)  # a pre-registered member does not expire: it never started
    assert listed(d) == [(1, "a"), (9, "")]
    heartbeat(d, 9, "new", 100_001)
    assert d.sm.members.get(9).peer_urls == ["http://10.0.0.9:2380"]  # type: ignore[union-attr]
    d.apply(Kind.MEMBER_UPDATE, pb.MemberUpdateRequest(ID=9, peerURLs=["http://10.0.0.99:2380"]))
    heartbeat(d, 9, "new", 100_002, peer="http://10.0.0.9:2380")  # heartbeats keep the updated URL
    assert d.sm.members.get(9).peer_urls == ["http://10.0.0.99:2380"]  # type: ignore[union-attr]
    with pytest.raises(EtcdError) as e:
        d.apply(Kind.MEMBER_UPDATE, pb.MemberUpdateRequest(ID=42, peerURLs=["http://x:1"]))
    assert e.value == errors.fail(errors.MEMBER_NOT_FOUND)


def test_registry_state_round_trips_through_checkpoints() -> None:
    d = Driver()
    heartbeat(d, 1, "a", 1000, peer="http://p:1", client="http://c:1")
    d.apply(Kind.MEMBER_ADD, pb.Member(ID=5, peerURLs=["http://p:5"]))
    heartbeat(d, 2, "b", 1000)
    d.apply(Kind.MEMBER_REMOVE, pb.MemberRemoveRequest(ID=2))
    again = StateMachine.loads(d.sm.dumps())
    assert again.members.to_state() == d.sm.members.to_state()
    assert again.members.is_removed(2)
    assert MemberRegistry.from_state(d.sm.members.to_state()).to_state() == d.sm.members.to_state()
