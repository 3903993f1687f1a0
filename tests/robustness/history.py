"""What the robustness recorder writes and the checkers read: operations and watch responses.

One JSON object per line. An operation is ``{"t": "op", ...Op fields}``; a watch
response is ``{"t": "watch", ...WatchResponse fields}``; the recorder also writes
``{"t": "fault", ...}`` lines (from the runner) and a final ``{"t": "end"}``.

Times are ``time.monotonic_ns()`` of the recording process. An operation whose
outcome is unknown (the RPC failed in a way that leaves it open: a deadline, a
lost connection, UNAVAILABLE) has ``ret = None``: it may or may not have taken
effect, at any time after its call.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Operation kinds and their fields.
#   put     in: key, value              out: rev
#   get     in: key                     out: value (None if absent), mod_rev, rev (header)
#   delete  in: key                     out: deleted (0/1), rev
#   cas     in: key, expected, value    out: ok (bool), rev; on failure also value, mod_rev (the current kv)
#   grant   in: lease                   out: ok
#   revoke  in: lease                   out: ok (False: not found)
KINDS = ("put", "get", "delete", "cas", "grant", "revoke")
WRITES = ("put", "delete", "cas")


@dataclass(slots=True)
class Op:
    client: int
    member: str
    kind: str
    call: int
    ret: int | None  # None: outcome unknown
    inp: dict[str, Any]
    out: dict[str, Any] | None = None  # None when unknown or failed for sure
    error: str = ""  # the error of a failed or unknown operation
    failed: bool = False  # definitely not applied (an error that says so): not part of the history

    @property
    def key(self) -> str:
        if self.kind in ("grant", "revoke"):
            return f"lease/{self.inp['lease']}"
        return str(self.inp["key"])

    @property
    def revision(self) -> int | None:
        """The revision this operation's effect got, if it was a write with a known outcome that wrote."""
        if self.ret is None or self.out is None:
            return None
        if self.kind == "put":
            return int(self.out["rev"])
        if self.kind == "delete" and self.out["deleted"]:
            return int(self.out["rev"])
        if self.kind == "cas" and self.out["ok"]:
            return int(self.out["rev"])
        return None


@dataclass(slots=True)
class Event:
    type: str  # PUT | DELETE
    key: str
    value: str
    mod_rev: int
    prev: tuple[str, int] | None  # prev_kv (value, mod_revision), None if the key did not exist


@dataclass(slots=True)
class WatchResponse:
    watcher: int
    member: str
    at: int  # monotonic ns when received
    rev: int  # header revision
    events: list[Event] = field(default_factory=list)
    progress: bool = False  # a progress notification (no events)
    created: bool = False
    start: int = 0  # for a created response: the start_revision asked for
    broken: str = ""  # the stream broke here (the watcher then resumes, maybe elsewhere)


@dataclass(slots=True)
class Fault:
    name: str
    target: str
    start: int
    end: int
    detail: str = ""
    excluded: list[str] = field(default_factory=list)  # members that cannot reach two AZs during it


@dataclass(slots=True)
class History:
    ops: list[Op] = field(default_factory=list)
    watch: list[WatchResponse] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    members: list[str] = field(default_factory=list)
    started: int = 0
    ended: int = 0
    final_revision: int = 0  # the store's revision after the last write


def op_line(op: Op) -> str:
    return json.dumps({"t": "op", **asdict(op)})


def watch_line(w: WatchResponse) -> str:
    return json.dumps({"t": "watch", **asdict(w)})


def fault_line(f: Fault) -> str:
    return json.dumps({"t": "fault", **asdict(f)})


def load(path: Path) -> History:
    h = History()
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line of a recorder that was killed
        t = d.pop("t")
        if t == "op":
            h.ops.append(Op(**d))
        elif t == "watch":
            d["events"] = [
                Event(e["type"], e["key"], e["value"], e["mod_rev"], tuple(e["prev"]) if e["prev"] else None)
                for e in d["events"]
            ]
            h.watch.append(WatchResponse(**d))
        elif t == "fault":
            h.faults.append(Fault(**d))
        elif t == "start":
            h.started = int(d["at"])
            h.members = list(d["members"])
        elif t == "end":
            h.ended = int(d["at"])
            h.final_revision = int(d.get("final", 0))
    return h
