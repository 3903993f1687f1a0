"""A front end's read-only view of its member's state file.

The applier is the only writer of the LMDB environment; front-end processes
open the same file read-only (LMDB supports any number of reader processes:
their read transactions sit in the lock file's reader table, so the writer
never reuses a page one of them still reads). Each request reads through a
fresh read transaction that ends with it, so a front end sees every batch the
applier committed before the request began and never pins old pages while it
is idle.

What the store keeps on the heap between batches (revision, compact revision,
live keys) and the auth store are read again whenever the environment moved
to a newer transaction. A defragment or a snapshot install replaces the file
(kvstore/mvcc/backend.py `swap_in`): the path then names a new inode, and the
view opens it (`state.mdb-lock` follows the applier's current lock file).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import lmdb
import msgpack

from kvstore.auth.store import AuthStore
from kvstore.mvcc.backend import DATABASES, DUPSORT_DATABASES, READERS_MAX, Backend
from kvstore.mvcc.store import META_MVCC, MVCCStore
from kvstore.statemachine import META_AUTH

log = logging.getLogger(__name__)


class ReadOnlyBackend(Backend):
    """The applier's environment, opened read-only in another process."""

    @staticmethod
    def _open(path: str, map_size: int) -> Any:
        return lmdb.open(
            path,
            subdir=False,
            map_size=map_size,
            max_dbs=len(DATABASES) + 8,
            max_readers=READERS_MAX,
            readonly=True,
            readahead=False,
            lock=True,
        )

    @staticmethod
    def _open_dbs(env: Any) -> dict[bytes, Any]:
        dbs: dict[bytes, Any] = {}
        for name in DATABASES:  # without a txn: py-lmdb's handles from a read txn die with it
            dupsort = name in DUPSORT_DATABASES
            dbs[name] = env.open_db(name, create=False, dupsort=dupsort, dupfixed=dupsort)
        return dbs

    def begin_batch(self) -> None:
        raise AssertionError("a front end never writes the state file")


class StateView:
    """The store as the applier last committed it; `reading()` brackets one request."""

    def __init__(self, path: str, map_size: int) -> None:
        self.path = path
        self.map_size = map_size
        self.backend = ReadOnlyBackend(path, map_size=map_size)
        self._inode = os.stat(path).st_ino
        self.store = MVCCStore(self.backend)
        self.auth = AuthStore()  # users, roles and the switch, as the applier last committed them
        self._txn_id = -1
        self._auth_raw: bytes | None = None
        # Called with the new backend when the file was replaced, before the old one closes
        # (the watch feed moves its own read transaction over: kvstore/workers/watches.py).
        self.replaced_listeners: list[Callable[[ReadOnlyBackend], None]] = []
        self.release()  # the store's counters were read through a transaction: not held until a first read

    def follow_replacement(self) -> None:
        """Open the file again if a defragment or a snapshot install replaced it."""
        self._reopen_if_replaced()

    def _reopen_if_replaced(self) -> None:
        try:
            inode = os.stat(self.path).st_ino
        except FileNotFoundError:  # in the middle of a swap: the old file still serves
            return
        if inode == self._inode:
            return
        old = self.backend
        self.backend = ReadOnlyBackend(self.path, map_size=self.map_size)
        self._inode = inode
        self.store = MVCCStore(self.backend)
        self._txn_id = -1
        for listener in self.replaced_listeners:
            listener(self.backend)
        old.close()
        log.info("state file replaced (defragment or snapshot install): reopened")

    def refresh(self) -> None:
        """Start a read transaction at the newest commit; load the heap counters if it moved."""
        self._reopen_if_replaced()
        backend = self.backend
        backend._drop_reader()
        txn = backend.txn
        txn_id = txn.id()
        if txn_id == self._txn_id:
            return
        self._txn_id = txn_id
        raw = backend.get_meta(META_MVCC)
        if raw is not None:
            revision, compact_revision, live_keys = msgpack.unpackb(raw)
            self.store.restore_counters((revision, compact_revision, live_keys, None))
        auth_raw = backend.get_meta(META_AUTH)
        if auth_raw != self._auth_raw:
            self._auth_raw = auth_raw
            self.auth = AuthStore.from_state(msgpack.unpackb(auth_raw, raw=False)) if auth_raw else AuthStore()

    def current_auth_revision(self) -> int:
        """The auth revision the applier last committed (the member's Authenticator reads its own).
        Not inside `reading()`: it reads through a transaction of its own."""
        with self.reading():
            return self.auth.revision

    def release(self) -> None:
        """End the read transaction: an idle front end pins no old pages."""
        self.backend._drop_reader()

    @contextlib.contextmanager
    def reading(self) -> Iterator[MVCCStore]:
        self.refresh()
        try:
            yield self.store
        finally:
            self.release()

    def close(self) -> None:
        self.backend.close()
