"""The lease table: deterministic, driven only by journal timestamps, stored in the backend.

A lease's deadline is set from the timestamp of the journal entry that granted
or renewed it. Expiry is proposed by whichever member's clock says a lease is
due, and applied only if the expiring entry's own timestamp has reached the
deadline, so duplicate or early expiry entries are harmless no-ops. Nothing
here reads a clock.

Three databases of the member's LMDB environment (kvstore/mvcc/backend.py):
`lease` (id -> ttl, deadline), `lease_keys` (id + stored key -> nothing: the keys
attached; a long key's stored form is kvstore/mvcc/keyindex.py's) and `lease_due`
(deadline + id -> nothing: finding what is due is a cursor scan from the start,
never a scan of every lease).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from kvstore.mvcc.backend import DB_LEASE, DB_LEASE_DUE, DB_LEASE_KEYS, Backend
from kvstore.mvcc.keyindex import full_key, stored_key

# etcd's limits (server/lease/lessor.go, server/etcdserver/server.go).
MAX_LEASE_TTL_S = 9_000_000_000
# etcd raises shorter TTLs to ceil(1.5 x election timeout): 2 s with its defaults.
MIN_LEASE_TTL_S = 2

_ID = struct.Struct(">Q")
_LEASE = struct.Struct(">qq")  # ttl_s, deadline_ms
_DUE = struct.Struct(">qQ")  # deadline_ms, id key
_ID_OFFSET = 1 << 63  # ids are int64: offset so that byte order is numeric order


def _id_key(lease_id: int) -> bytes:
    return _ID.pack(lease_id + _ID_OFFSET)


def _id_of(key: bytes) -> int:
    value: int = _ID.unpack_from(key)[0]
    return value - _ID_OFFSET


def _due_key(deadline_ms: int, lease_id: int) -> bytes:
    return _DUE.pack(deadline_ms, lease_id + _ID_OFFSET)


@dataclass(slots=True)
class Lease:
    id: int
    ttl_s: int  # the granted TTL
    deadline_ms: int  # journal time at which the lease expires
    keys: list[bytes] = field(default_factory=list)  # attached keys, sorted (filled by get(with_keys=True))

    def remaining_s(self, now_ms: int) -> int:
        """Whole seconds left at now_ms, truncated like etcd's TimeToLive (may be <= 0 when due)."""
        return (self.deadline_ms - now_ms) // 1000 if self.deadline_ms > now_ms else 0


class LeaseTable:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._db = backend.dbs[DB_LEASE]
        self._keys_db = backend.dbs[DB_LEASE_KEYS]
        self._due_db = backend.dbs[DB_LEASE_DUE]

    def __contains__(self, lease_id: int) -> bool:
        return self.backend.txn.get(_id_key(lease_id), db=self._db) is not None

    def __len__(self) -> int:
        return self.backend.entries(DB_LEASE)

    def get(self, lease_id: int, *, with_keys: bool = True) -> Lease | None:
        txn = self.backend.txn
        raw = txn.get(_id_key(lease_id), db=self._db)
        if raw is None:
            return None
        ttl_s, deadline_ms = _LEASE.unpack(raw)
        lease = Lease(lease_id, ttl_s, deadline_ms)
        if with_keys:
            lease.keys = self._attached(txn, lease_id)
        return lease

    def _attached(self, txn: Any, lease_id: int) -> list[bytes]:
        prefix = _id_key(lease_id)
        cur = txn.cursor(self._keys_db)
        out: list[bytes] = []
        if not cur.set_range(prefix):
            return out
        for k in cur.iternext(keys=True, values=False):
            if not k.startswith(prefix):
                break
            out.append(full_key(txn, self.backend.dbs, k[len(prefix) :]))
        return out

    def ids(self) -> list[int]:
        cur = self.backend.txn.cursor(self._db)
        return [_id_of(k) for k in cur.iternext(keys=True, values=False)]

    def _store(self, lease: Lease) -> None:
        txn = self.backend.txn
        txn.put(_id_key(lease.id), _LEASE.pack(lease.ttl_s, lease.deadline_ms), db=self._db)
        txn.put(_due_key(lease.deadline_ms, lease.id), b"", db=self._due_db)

    def grant(self, lease_id: int, ttl_s: int, now_ms: int) -> Lease:
        assert lease_id != 0 and lease_id not in self
        lease = Lease(lease_id, ttl_s, now_ms + ttl_s * 1000)
        self._store(lease)
        return lease

    def renew(self, lease_id: int, now_ms: int) -> Lease | None:
        """Restart the lease's TTL at now_ms; None if it is unknown or already due."""
        lease = self.get(lease_id, with_keys=False)
        if lease is None or now_ms >= lease.deadline_ms:
            return None
        self.backend.txn.delete(_due_key(lease.deadline_ms, lease_id), db=self._due_db)
        lease.deadline_ms = now_ms + lease.ttl_s * 1000
        self._store(lease)
        return lease

    def remove(self, lease_id: int) -> Lease | None:
        lease = self.get(lease_id)
        if lease is None:
            return None
        txn = self.backend.txn
        txn.delete(_id_key(lease_id), db=self._db)
        txn.delete(_due_key(lease.deadline_ms, lease_id), db=self._due_db)
        prefix = _id_key(lease_id)
        for key in lease.keys:
            txn.delete(prefix + stored_key(key), db=self._keys_db)
        return lease

    def attach(self, lease_id: int, key: bytes) -> None:
        if lease_id:
            assert lease_id in self, "attaching a key to an unknown lease"
            self.backend.txn.put(_id_key(lease_id) + stored_key(key), b"", db=self._keys_db)

    def detach(self, lease_id: int, key: bytes) -> None:
        if lease_id:
            self.backend.txn.delete(_id_key(lease_id) + stored_key(key), db=self._keys_db)

    def due(self, now_ms: int, limit: int) -> list[int]:
        """Up to `limit` lease ids whose deadline has passed at now_ms, earliest first."""
        cur = self.backend.txn.cursor(self._due_db)
        found: list[int] = []
        if not cur.first():
            return found
        for k in cur.iternext(keys=True, values=False):
            deadline_ms, id_key = _DUE.unpack(k)
            if deadline_ms > now_ms or len(found) >= limit:
                break
            found.append(id_key - _ID_OFFSET)
        return found
