"""`kvstore serve --workers N`: several processes serve one member's client URLs.

- supervisor.py (in the member's process, the applier): starts N-1 front-end
  processes, restarts one that dies, stops them with the member
- frontend.py: a front-end process: accepts gRPC and HTTP on the same client
  URLs (SO_REUSEPORT), answers reads from its own read-only view of the state
  file, writes through the applier and watches from its own hub, forwards
  every other call to it
- forward.py: the gRPC calls a front end passes on, as bytes
- notify.py: the channel from the member's process to each front end (applied
  positions, read barriers, the front ends' appends and their results,
  compaction fences)
- reads.py: Range and read-only Txn answered by a front end
- writes.py: Put, DeleteRange and Txn proposed by a front end
- watches.py: watch streams served by a front end (the member's hub, fed from the view)
- view.py: the read-only view of the state file in another process
- metrics.py: the front ends' counts, summed into the member's /metrics
- cpus.py: the CPU each process is pinned to (one process per CPU)

See docs/workers.md.
"""

from __future__ import annotations

import hashlib
import os
import tempfile


def member_socket_path(state_dir: str, role: str) -> str:
    """A unix socket of one member's processes, in the temp dir, named after the state dir
    (one set per member; the state dir holds only state)."""
    digest = hashlib.sha256(os.path.abspath(state_dir).encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"kvstore-{role}-{digest}.sock")
