"""The lease table: deterministic, driven only by journal timestamps.

A lease's deadline is set from the timestamp of the journal entry that granted
or renewed it. Expiry is proposed by whichever member's clock says a lease is
due, and applied only if the expiring entry's own timestamp has reached the
deadline, so duplicate or early expiry entries are harmless no-ops. Nothing
here reads a clock.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any

# etcd's limits (server/lease/lessor.go, server/etcdserver/server.go).
MAX_LEASE_TTL_S = 9_000_000_000
# etcd raises shorter TTLs to ceil(1.5 x election timeout): 2 s with its defaults.
MIN_LEASE_TTL_S = 2


@dataclass(slots=True)
class Lease:
    id: int
    ttl_s: int  # the granted TTL
    deadline_ms: int  # journal time at which the lease expires
    keys: set[bytes] = field(default_factory=set)

    def remaining_s(self, now_ms: int) -> int:
        """Whole seconds left at now_ms, truncated like etcd's TimeToLive (may be <= 0 when due)."""
        return (self.deadline_ms - now_ms) // 1000 if self.deadline_ms > now_ms else 0


class LeaseTable:
    def __init__(self) -> None:
        self._leases: dict[int, Lease] = {}
        # (deadline_ms, lease id), with stale pairs left behind by renewals and revokes:
        # `due` skips and drops them, so finding what is due never scans every lease.
        self._deadlines: list[tuple[int, int]] = []

    def __contains__(self, lease_id: int) -> bool:
        return lease_id in self._leases

    def __len__(self) -> int:
        return len(self._leases)

    def get(self, lease_id: int) -> Lease | None:
        return self._leases.get(lease_id)

    def ids(self) -> list[int]:
        return sorted(self._leases)

    def grant(self, lease_id: int, ttl_s: int, now_ms: int) -> Lease:
        assert lease_id != 0 and lease_id not in self._leases
        lease = Lease(lease_id, ttl_s, now_ms + ttl_s * 1000)
        self._leases[lease_id] = lease
        heapq.heappush(self._deadlines, (lease.deadline_ms, lease_id))
        return lease

    def renew(self, lease_id: int, now_ms: int) -> Lease | None:
        """Restart the lease's TTL at now_ms; None if it is unknown or already due."""
        lease = self._leases.get(lease_id)
        if lease is None or now_ms >= lease.deadline_ms:
            return None
        lease.deadline_ms = now_ms + lease.ttl_s * 1000
        heapq.heappush(self._deadlines, (lease.deadline_ms, lease_id))
        return lease

    def remove(self, lease_id: int) -> Lease | None:
        return self._leases.pop(lease_id, None)

    def attach(self, lease_id: int, key: bytes) -> None:
        if lease_id:
            lease = self._leases.get(lease_id)
            assert lease is not None, "attaching a key to an unknown lease"
            lease.keys.add(key)

    def detach(self, lease_id: int, key: bytes) -> None:
        if lease_id:
            lease = self._leases.get(lease_id)
            if lease is not None:
                lease.keys.discard(key)

    def due(self, now_ms: int, limit: int) -> list[int]:
        """Up to `limit` lease ids whose deadline has passed at now_ms, earliest first."""
        heap = self._deadlines
        found: list[tuple[int, int]] = []
        while heap and heap[0][0] <= now_ms and len(found) < limit:
            deadline_ms, lease_id = heapq.heappop(heap)
            lease = self._leases.get(lease_id)
            if lease is not None and lease.deadline_ms == deadline_ms:
                found.append((deadline_ms, lease_id))
        for pair in found:  # still live until a revoke is applied: keep them findable
            heapq.heappush(heap, pair)
        return [lease_id for _, lease_id in found]

    def to_state(self) -> list[list[Any]]:
        return [[lease.id, lease.ttl_s, lease.deadline_ms, sorted(lease.keys)] for lease in self._leases.values()]

    @classmethod
    def from_state(cls, state: list[list[Any]]) -> LeaseTable:
        table = cls()
        for lease_id, ttl_s, deadline_ms, keys in state:
            table._leases[lease_id] = Lease(lease_id, ttl_s, deadline_ms, set(keys))
            table._deadlines.append((deadline_ms, lease_id))
        heapq.heapify(table._deadlines)
        return table
