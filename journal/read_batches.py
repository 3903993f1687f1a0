"""Batches of a journal node's read streams: committed DATA entries, by position."""

from __future__ import annotations

from typing import Any

from journal import replication as r

READ_BATCH_ENTRIES_MAX = 1024
READ_BATCH_BYTES_MAX = 1024 * 1024


def entries_from(core: r.ReplicationCore, position: int, upto: int, index_hint: int) -> tuple[list[list[Any]], int]:
    """Committed DATA entries from position (<= upto), and the index to look at next time."""
    st = core.status()
    lo, hi = st.first_index, st.last_index
    index = index_hint
    got = core.log_entries(index, index) if index >= lo else []
    if not got or got[0].position != position or got[0].kind is not r.EntryKind.DATA:
        # Smallest index whose position is >= position: the DATA entry
        # holding it (a NOOP repeats the position before it).
        while lo < hi:
            mid = (lo + hi) // 2
            if core.log_entries(mid, mid)[0].position >= position:
                hi = mid
            else:
                lo = mid + 1
        index = lo
    out: list[list[Any]] = []
    size = 0
    for e in core.log_entries(index, index + READ_BATCH_ENTRIES_MAX - 1):
        index = e.index + 1
        if e.kind is not r.EntryKind.DATA:
            continue
        if e.position > upto or size > READ_BATCH_BYTES_MAX:
            index = e.index
            break
        assert e.position == position + len(out), (e.position, position, len(out))
        out.append([e.position, e.timestamp_ms, e.data])
        size += len(e.data)
    return out, index
