"""The LMDB environment that holds a member's whole state, and its write batches.

One memory-mapped file (on tmpfs by default) holds every named database the
state machine uses; nothing of the state lives on the Python heap. The layout
follows etcd's bbolt buckets:

- `records`: revision (main, sub: 8 + 8 bytes big-endian) -> serialized mvccpb.KeyValue
  (the newest; older ones packed by revision into `packed`: kvstore/mvcc/records.py)
- `index`:   key -> its revisions (dupsort: revision + 1 flag byte, 1 = tombstone)
- `live`:    key -> revision of its newest record, for keys whose newest record is live
- `prefix_counts`: "/"-terminated prefix -> live keys under it (counts of kube's lists)
- `lease`, `lease_keys`, `lease_due`: the lease table (kvstore/lease.py)
- `meta`:    name -> blob, one per piece of state-machine state (see META_*)

Every change of a journal batch is made in ONE write transaction, together
with the journal position it reaches, so a crash at any instant leaves exactly
"everything up to position P". Nothing is fsynced: the journal is the
durability, and a lost file is rebuilt from the journal's snapshot and tail.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import struct
import tempfile
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import lmdb

# Names of the databases in the environment; a new concept with its own table adds its name here.
DB_RECORDS = b"records"
DB_PACKED = b"packed"
DB_INDEX = b"index"
DB_LIVE = b"live"
DB_LEASE = b"lease"
DB_LEASE_KEYS = b"lease_keys"
DB_LEASE_DUE = b"lease_due"
DB_PREFIX_COUNTS = b"prefix_counts"
DB_META = b"meta"
DATABASES: tuple[bytes, ...] = (
    DB_RECORDS,
    DB_PACKED,
    DB_INDEX,
    DB_LIVE,
    DB_PREFIX_COUNTS,
    DB_LEASE,
    DB_LEASE_KEYS,
    DB_LEASE_DUE,
    DB_META,
)
DUPSORT_DATABASES = frozenset({DB_INDEX})

# Meta entries that are the member's own business, not part of the replicated state:
# never put in a snapshot.
META_JOURNAL = b"journal"  # msgpack {"token", "log"}: which journal this file follows
META_COMPACTOR = b"compactor"  # physical compaction progress (invisible to reads)
# u64: the highest compaction target whose physical steps began (records below it may be gone
# from the file); a front end's watch feed reads it (kvstore/workers/watches.py).
META_PHYSICAL_COMPACT = b"physical_compact"
META_LOCAL = frozenset({META_JOURNAL, META_COMPACTOR, META_PHYSICAL_COMPACT})
META_FORMAT = b"format"
FORMAT_VERSION = b"kvstore-lmdb-2"  # 2: keys longer than 470 bytes stored hashed, old records packed

STATE_FILE = "state.mdb"
MAP_SIZE_MIN_BYTES = 1 << 30
# The map is sparse: reserving address space costs nothing until pages are written.
MAP_SIZE_HEADROOM = 2
READERS_MAX = 126
LMDB_KEY_BYTES_MAX = 511  # LMDB's compiled-in key size limit

# Closing an environment unmaps its file, and the kernel holds the process's mmap lock while it
# tears down the page tables of the whole mapping (0.05-0.5 s per GiB here): every mmap() and
# munmap() of the event loop's thread (its allocators') waits behind it. Dropping the mapped
# pages in steps of this size first leaves the close nothing to tear down.
UNMAP_STEP_BYTES = 16 << 20
_MADV_DONTNEED = 4

_U64 = struct.Struct(">Q")
_REV = struct.Struct(">QQ")


def rev_bytes(main: int, sub: int = 0) -> bytes:
    return _REV.pack(main, sub)


def rev_main(rev: bytes) -> int:
    main: int = _U64.unpack_from(rev)[0]
    return main


def u64(value: int) -> bytes:
    return _U64.pack(value)


def from_u64(data: bytes) -> int:
    value: int = _U64.unpack(data)[0]
    return value


def map_size_for(quota_bytes: int) -> int:
    """Address space to reserve for a quota (0 = no quota: etcd's 8 GiB suggested maximum)."""
    quota = quota_bytes if quota_bytes > 0 else 8 << 30
    return max(MAP_SIZE_MIN_BYTES, quota * MAP_SIZE_HEADROOM)


class StateFileRefused(Exception):
    """The state file cannot be used (another journal, the future of this one, damaged)."""


class Backend:
    """An LMDB environment with the project's databases, and one write batch at a time.

    `txn` is what every core reads and writes through: the open write
    transaction during a batch, otherwise a read transaction renewed after
    every commit (so reads between batches see the newest committed state).
    """

    def __init__(self, path: str, *, map_size: int = MAP_SIZE_MIN_BYTES, owns_dir: str | None = None) -> None:
        self.path = path
        self.map_size = map_size
        self._owns_dir = owns_dir
        self.env = self._open(path, map_size)
        self.lock_path = path + "-lock"
        self._swaps = 0
        self.dbs = self._open_dbs(self.env)
        self._write: Any = None
        self._reader: Any = None
        self.count_deltas = CountDeltas()
        self.commits = 0
        # The file only grows when a write transaction commits: sized then, not per request.
        self._file_bytes = os.path.getsize(path)
        self._file_id = _file_id(path)
        self._closed = False

    @staticmethod
    def _open(path: str, map_size: int) -> Any:
        # A file shorter than LMDB's last page means a cut file: mapping it would fault on read.
        env = lmdb.open(
            path,
            subdir=False,
            map_size=map_size,
            max_dbs=len(DATABASES) + 8,
            max_readers=READERS_MAX,
            sync=False,
            metasync=False,
            readahead=False,
            meminit=False,
            lock=True,
        )
        env.reader_check()  # reader slots of a killed process would pin old pages
        info = env.info()
        needed = (info["last_pgno"] + 1) * env.stat()["psize"]
        if os.path.getsize(path) < needed:
            env.close()
            raise StateFileRefused(f"{path} is cut short ({os.path.getsize(path)} of {needed} bytes)")
        return env

    @classmethod
    def temporary(cls) -> Backend:
        """A private environment in a fresh temp dir (tests, scratch state), removed by close()."""
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None
        directory = tempfile.mkdtemp(prefix="kvstore-state-", dir=base)
        backend = cls(os.path.join(directory, STATE_FILE), owns_dir=directory)
        # Removed when closed, or at the latest when collected or at exit (tmpfs is memory).
        weakref.finalize(backend, shutil.rmtree, directory, True)
        return backend

    # ----------------------------------------------------------- transactions

    @property
    def txn(self) -> Any:
        if self._write is not None:
            return self._write
        if self._reader is None:
            self._reader = self.env.begin(buffers=False)
        return self._reader

    @property
    def in_batch(self) -> bool:
        return self._write is not None

    def begin_batch(self) -> None:
        assert self._write is None, "one write batch at a time"
        self._drop_reader()
        self._write = self.env.begin(write=True)

    def flush_counts(self) -> None:
        """Write the batch's pending prefix count changes into it (at the latest at commit)."""
        assert self._write is not None, "counts are written inside a write batch"
        self.count_deltas.write(self._write, self.dbs[DB_PREFIX_COUNTS])

    def commit_batch(self) -> None:
        if self.count_deltas.deltas:
            try:
                self.flush_counts()
            except BaseException:
                self.abort_batch()
                raise
        txn, self._write = self._write, None
        txn.commit()
        self.commits += 1
        self._file_bytes = os.path.getsize(self.path)

    def abort_batch(self) -> None:
        self.count_deltas.clear()
        txn, self._write = self._write, None
        if txn is not None:
            txn.abort()

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """A write batch, or nothing new if one is open already (the outer one commits)."""
        if self._write is not None:
            yield
            return
        self.begin_batch()
        try:
            yield
        except BaseException:
            self.abort_batch()
            raise
        self.commit_batch()

    def nested(self) -> _Nested:
        """A child transaction of the open batch: undone as a whole if the body raises."""
        return _Nested(self)

    def _drop_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.abort()

    def snapshot_txn(self) -> Any:
        """A read transaction of its own (a snapshot stream that outlives loop turns)."""
        return self.env.begin(buffers=False)

    # -------------------------------------------------------------------- meta

    def get_meta(self, name: bytes, txn: Any = None) -> bytes | None:
        value: bytes | None = (txn or self.txn).get(name, db=self.dbs[DB_META])
        return value

    def put_meta(self, name: bytes, blob: bytes) -> None:
        assert self._write is not None, "meta is written inside a write batch"
        self._write.put(name, blob, db=self.dbs[DB_META])

    def delete_meta(self, name: bytes) -> None:
        assert self._write is not None
        self._write.delete(name, db=self.dbs[DB_META])

    # ------------------------------------------------------------------- sizes

    @property
    def file_bytes(self) -> int:
        """The real size of the file (etcd's dbSize), as of the last commit (the quota gate reads
        it for every write: no stat per request)."""
        return self._file_bytes

    @property
    def in_use_bytes(self) -> int:
        """Pages holding data, as bbolt counts its in-use size (etcd's dbSizeInUse)."""
        txn = self.txn
        psize: int = self.env.stat()["psize"]
        pages = 2  # the two meta pages
        stats = [txn.stat(self.dbs[name]) for name in DATABASES]
        stats.append(self.env.stat())  # the main database, which names the others
        for s in stats:
            pages += s["branch_pages"] + s["leaf_pages"] + s["overflow_pages"]
        return pages * psize

    def entries(self, name: bytes) -> int:
        n: int = self.txn.stat(self.dbs[name])["entries"]
        return n

    # ------------------------------------------------------------ maintenance

    def compact_copy(self, target: str) -> None:
        """A compacting copy of the committed state to target (safe from another thread)."""
        if os.path.exists(target):
            os.remove(target)
        self.env.copy(target, compact=True)

    def swap_in(self, replacement: str) -> Callable[[], None]:
        """Make the environment in file `replacement` this backend's, under this backend's path.

        Cheap on the event loop: the new file is opened and renamed into place; closing the
        old environment (unmapping it) and freeing its file (tmpfs pages) is the returned
        cleanup, to run in a thread. The new environment keeps the lock file named after
        `replacement`, so each replacement needs a name of its own (swap_path).
        """
        assert self._write is None, "swap between batches"
        self._drop_reader()
        env = self._open(replacement, self.map_size)
        dbs = self._open_dbs(env)
        old_env, old_lock, old_id, old_bytes = self.env, self.lock_path, self._file_id, self._file_bytes
        aside = f"{self.path}.old-{self._swaps}"
        # Other processes that open the file read-only (kvstore/workers) must share the new
        # environment's reader table: the canonical lock name points to its lock file, before
        # the file is renamed into place (the old file has no writer any more: a reader of it
        # needs no slot in its table).
        canonical_lock = self.path + "-lock"
        link = f"{canonical_lock}.link-{self._swaps}"
        with contextlib.suppress(FileNotFoundError):
            os.remove(link)
        os.symlink(os.path.basename(replacement + "-lock"), link)
        os.replace(link, canonical_lock)
        os.replace(self.path, aside)
        os.replace(replacement, self.path)
        self.env, self.dbs, self.lock_path = env, dbs, replacement + "-lock"
        self._file_bytes = os.path.getsize(self.path)
        self._file_id = _file_id(self.path)

        def cleanup() -> None:
            drop_mapped_pages(old_id, old_bytes)
            old_env.close()
            for p in (aside, old_lock):
                if p == canonical_lock:  # now the link to the new lock file
                    continue
                with contextlib.suppress(FileNotFoundError):
                    os.remove(p)

        return cleanup

    def swap_path(self, kind: str) -> str:
        """A fresh name beside the file for a replacement (defragment, snapshot install)."""
        self._swaps += 1
        path = f"{self.path}.{kind}-{self._swaps}"
        remove_state_file(path)
        return path

    @staticmethod
    def _open_dbs(env: Any) -> dict[bytes, Any]:
        dbs: dict[bytes, Any] = {}
        with env.begin(write=True) as txn:
            for name in DATABASES:
                dupsort = name in DUPSORT_DATABASES
                dbs[name] = env.open_db(name, txn=txn, dupsort=dupsort, dupfixed=dupsort)
            if txn.get(META_FORMAT, db=dbs[DB_META]) is None:
                txn.put(META_FORMAT, FORMAT_VERSION, db=dbs[DB_META])
        return dbs

    def close(self, *, drop_pages: bool = True) -> None:
        """drop_pages=False: unmap in one go, for a file of which few pages were read (dropping
        visits the whole range: 6 ms per GiB even where nothing is mapped, too long on the loop)."""
        if self._closed:  # the file may be another environment's by now (a swapped-in copy)
            return
        self._closed = True
        self.abort_batch()
        self._drop_reader()
        if drop_pages:
            drop_mapped_pages(self._file_id, self._file_bytes)
        self.env.close()
        if self.lock_path != self.path + "-lock":  # a swapped-in file's lock has a name of its own
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.lock_path)
            if os.path.islink(self.path + "-lock"):  # the link swap_in made to it
                os.remove(self.path + "-lock")
        if self._owns_dir is not None:
            shutil.rmtree(self._owns_dir, ignore_errors=True)


def _file_id(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def drop_mapped_pages(file_id: tuple[int, int], file_bytes: int, step_bytes: int = UNMAP_STEP_BYTES) -> int:
    """Drop this process's page-table entries of the shared mappings of a file, in steps (the
    file's pages stay where they are: a later read maps them again). Returns the bytes visited;
    0 where /proc/self/maps is not there (the close then does it in one go)."""
    dev, ino = file_id
    want = f"{os.major(dev):02x}:{os.minor(dev):02x}"
    spans: list[tuple[int, int]] = []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                # start-end perms offset dev inode path
                fields = line.split(maxsplit=5)
                if len(fields) < 5 or fields[4] != str(ino) or fields[3] != want or fields[1][3:4] != "s":
                    continue
                start, end = (int(x, 16) for x in fields[0].split("-"))
                length = min(end - start, file_bytes - int(fields[2], 16))
                if length > 0:
                    spans.append((start, length))
    except OSError:
        return 0
    for start, length in spans:
        for off in range(0, length, step_bytes):
            _madvise(start + off, min(step_bytes, length - off), _MADV_DONTNEED)
    return sum(length for _, length in spans)


_libc = ctypes.CDLL(None, use_errno=True)
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.madvise.restype = ctypes.c_int


def _madvise(addr: int, length: int, advice: int) -> None:
    _libc.madvise(addr, length, advice)  # a failure leaves the pages to the close


def remove_state_file(path: str) -> None:
    for p in (path, path + "-lock"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(p)


class _Nested:
    """Backend.nested(): a class rather than a generator context manager, as it runs once per
    journal entry applied (the generator's machinery was a tenth of an entry's apply time)."""

    __slots__ = ("backend", "parent", "undo_mark")

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.parent: Any = backend._write
        assert self.parent is not None, "a nested transaction needs an open batch"

    def __enter__(self) -> None:
        self.backend._write = self.backend.env.begin(write=True, parent=self.parent)
        self.undo_mark = len(self.backend.count_deltas.log)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        child, self.backend._write = self.backend._write, self.parent
        if exc_type is None:
            child.commit()
        else:
            child.abort()
            self.backend.count_deltas.undo_to(self.undo_mark)


class CountDeltas:
    """The changes of the prefix counts (`prefix_counts`) made in the open write batch, written
    once per prefix when the batch is flushed or commits.

    A new key changes the count of each of its "/"-terminated prefixes: 100 new keys under one
    prefix read and wrote the same few counters 100 times each, a quarter of a put's apply time
    (kvstore/mvcc/keyindex.py reads a count as the stored one plus the pending change). Changes
    are kept per tuple of prefixes (the keys under one "/" share theirs: one dict update a key),
    and spread over the prefixes at `write`. `log` holds every change of the batch in order, so
    a nested transaction (one per journal entry) that is undone undoes its own: `undo_to` the
    log's length when it began.
    """

    __slots__ = ("deltas", "log")

    def __init__(self) -> None:
        self.deltas: dict[tuple[bytes, ...], int] = {}  # stored prefixes -> change since the batch began
        self.log: list[tuple[tuple[bytes, ...], int]] = []

    def add(self, prefixes: tuple[bytes, ...], delta: int) -> None:
        deltas = self.deltas
        deltas[prefixes] = deltas.get(prefixes, 0) + delta
        self.log.append((prefixes, delta))

    def get(self, prefix: bytes) -> int:
        """The pending change of one stored prefix."""
        return sum(delta for prefixes, delta in self.deltas.items() if prefix in prefixes)

    def undo_to(self, mark: int) -> None:
        """Undo the changes logged since the log was mark long."""
        deltas = self.deltas
        for prefixes, delta in self.log[mark:]:
            deltas[prefixes] -= delta
        del self.log[mark:]

    def write(self, txn: Any, db: Any) -> None:
        """Fold the changes into the counts in txn (a count that reaches 0 is removed)."""
        per_prefix: dict[bytes, int] = {}
        for prefixes, delta in self.deltas.items():
            if delta:
                for p in prefixes:
                    per_prefix[p] = per_prefix.get(p, 0) + delta
        for prefix in sorted(per_prefix):  # key order: neighbouring counts share pages
            delta = per_prefix[prefix]
            if not delta:
                continue
            raw = txn.get(prefix, db=db)
            n = (from_u64(raw) if raw else 0) + delta
            if n:
                txn.put(prefix, u64(n), db=db)
            else:
                txn.delete(prefix, db=db)
        self.clear()

    def clear(self) -> None:
        self.deltas.clear()
        self.log.clear()
