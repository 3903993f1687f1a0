"""The member registry: who serves a journal log, decided in apply like the lease table.

Each member registers itself in its log and renews its registration through
the log (a heartbeat entry carrying its id, name, URLs and a liveness TTL).
A registration's deadline comes from the heartbeat entry's journal timestamp,
and a member whose deadline has passed is dropped when a later entry's
timestamp says so: the same on every member, no clock read. A member that
comes back re-registers with its next heartbeat. MemberRemove evicts an id for
good (its heartbeats are refused from then on, and it stops serving);
MemberAdd pre-registers an id with peer URLs, which the member started with
those peer URLs adopts; MemberUpdate changes a member's peer URLs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kvstore import errors
from kvstore.errors import fail
from proto.etcdserverpb import rpc_pb2 as pb

MEMBER_TTL_MS_MIN = 1000


@dataclass(slots=True)
class MemberRecord:
    id: int
    name: str = ""
    peer_urls: list[str] = field(default_factory=list)
    client_urls: list[str] = field(default_factory=list)
    deadline_ms: int | None = None  # None: pre-registered by MemberAdd, not started yet


def as_pb(record: MemberRecord) -> Any:
    return pb.Member(ID=record.id, name=record.name, peerURLs=record.peer_urls, clientURLs=record.client_urls)


def from_pb(member: Any) -> MemberRecord:
    return MemberRecord(member.ID, member.name, list(member.peerURLs), list(member.clientURLs))


class MemberRegistry:
    def __init__(self) -> None:
        self._members: dict[int, MemberRecord] = {}
        self._removed: set[int] = set()

    def __contains__(self, member_id: int) -> bool:
        return member_id in self._members

    def get(self, member_id: int) -> MemberRecord | None:
        return self._members.get(member_id)

    def listed(self) -> list[MemberRecord]:
        """Every registered member (live or pre-registered), by id as etcd lists them."""
        return [self._members[i] for i in sorted(self._members)]

    def is_removed(self, member_id: int) -> bool:
        return member_id in self._removed

    def heartbeat(self, record: MemberRecord, ttl_ms: int, now_ms: int) -> MemberRecord:
        """Register or renew a member at journal time now_ms."""
        if record.id in self._removed:
            raise fail(errors.MEMBER_REMOVED)
        current = self._members.get(record.id)
        if current is None or current.deadline_ms is None:
            # registering (again, or into its MemberAdd entry): the member's own peer URLs; once it is
            # registered, its heartbeats keep what MemberUpdate set
            peer_urls = list(record.peer_urls) or (current.peer_urls if current else [])
            current = MemberRecord(record.id, peer_urls=peer_urls)
            self._members[record.id] = current
        current.name = record.name
        current.client_urls = list(record.client_urls)
        current.deadline_ms = now_ms + max(ttl_ms, MEMBER_TTL_MS_MIN)
        return current

    def expire(self, now_ms: int) -> list[int]:
        """Drop started members whose liveness deadline has passed at now_ms."""
        gone = [i for i, m in self._members.items() if m.deadline_ms is not None and now_ms >= m.deadline_ms]
        for member_id in gone:
            del self._members[member_id]
        return gone

    def add(self, member_id: int, peer_urls: list[str]) -> MemberRecord:
        if member_id in self._members or member_id in self._removed:
            raise fail(errors.MEMBER_EXIST)
        taken = {u for m in self._members.values() for u in m.peer_urls}
        if taken & set(peer_urls):
            raise fail(errors.PEER_URL_EXIST)
        record = MemberRecord(member_id, peer_urls=list(peer_urls))
        self._members[member_id] = record
        return record

    def claim(self, peer_urls: list[str]) -> int | None:
        """The id MemberAdd pre-registered for a member advertising these peer URLs, if any."""
        for member_id in sorted(self._members):
            m = self._members[member_id]
            if m.deadline_ms is None and set(m.peer_urls) & set(peer_urls):
                return member_id
        return None

    def remove(self, member_id: int) -> None:
        if member_id not in self._members:
            raise fail(errors.MEMBER_NOT_FOUND)
        del self._members[member_id]
        self._removed.add(member_id)

    def update(self, member_id: int, peer_urls: list[str]) -> None:
        record = self._members.get(member_id)
        if record is None:
            raise fail(errors.MEMBER_NOT_FOUND)
        taken = {u for i, m in self._members.items() if i != member_id for u in m.peer_urls}
        if taken & set(peer_urls):
            raise fail(errors.PEER_URL_EXIST)
        record.peer_urls = list(peer_urls)

    def to_state(self) -> dict[str, Any]:
        return {
            "members": [[m.id, m.name, m.peer_urls, m.client_urls, m.deadline_ms] for m in self.listed()],
            "removed": sorted(self._removed),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> MemberRegistry:
        registry = cls()
        for member_id, name, peer_urls, client_urls, deadline_ms in state["members"]:
            record = MemberRecord(member_id, name, list(peer_urls), list(client_urls), deadline_ms)
            registry._members[member_id] = record
        registry._removed = set(state["removed"])
        return registry
