"""What a client-library driver observed, normalised so that two servers can be compared.

A driver (drive_sync.py, drive_aetcd.py) runs in its own process, because the client libraries
ship their own copies of etcd's .proto files and cannot share a protobuf descriptor pool with
ours. It records every observation here and prints the transcript as one JSON line.

Normalised: revisions are relative to the revision the driver saw first (`base`), lease IDs are
replaced by the order in which the driver met them (etcd picks IDs from its member ID and a
clock), byte strings are decoded. Nothing else is normalised: values, versions, counts, event
types and orders must be identical on both servers.

Only the standard library may be imported here (the drivers import it).
"""

from __future__ import annotations

import json
import sys
from typing import Any

WAIT_S = 15.0  # bound on every wait for a watch event or a lease expiry


class CheckFailed(AssertionError):
    pass


class Transcript:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.base_revision = 0
        self.steps: list[list[Any]] = []
        self._lease_names: dict[int, str] = {}

    # -- normalisation -----------------------------------------------------------------------------
    def rev(self, revision: int) -> int:
        """A revision relative to the base (0 stays 0: 'none')."""
        assert self.base_revision > 0, "set base_revision first"
        return 0 if revision == 0 else revision - self.base_revision

    def lease(self, lease_id: int) -> str:
        if lease_id == 0:
            return "none"
        return self._lease_names.setdefault(lease_id, f"lease#{len(self._lease_names) + 1}")

    def key(self, key: bytes | str) -> str:
        s = key.decode() if isinstance(key, bytes) else key
        return s[len(self.prefix) :] if s.startswith(self.prefix) else s

    @staticmethod
    def text(value: bytes | str | None) -> str | None:
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else value

    def kv(
        self, key: bytes, value: bytes, create_revision: int, mod_revision: int, version: int, lease: int
    ) -> dict[str, Any]:
        return {
            "key": self.key(key),
            "value": self.text(value),
            "create": self.rev(create_revision),
            "mod": self.rev(mod_revision),
            "version": version,
            "lease": self.lease(lease),
        }

    def pb_kv(self, kv: Any) -> dict[str, Any]:
        """A mvccpb.KeyValue of whichever copy of the proto the library ships."""
        return self.kv(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)

    def pb_event(self, ev: Any, with_prev: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "DELETE" if ev.type == 1 else "PUT", "kv": self.pb_kv(ev.kv)}
        if with_prev:
            out["prev"] = self.pb_kv(ev.prev_kv) if ev.HasField("prev_kv") else None
        return out

    # -- recording ---------------------------------------------------------------------------------
    def record(self, step: str, observed: Any) -> Any:
        self.steps.append([step, observed])
        return observed

    def check(self, step: str, ok: bool, detail: Any) -> None:
        """A semantic check made by the driver itself (true on any etcd-compatible server)."""
        if not ok:
            raise CheckFailed(f"{step}: {detail!r}")

    def emit(self) -> None:
        sys.stdout.write(json.dumps({"base": self.base_revision, "steps": self.steps}) + "\n")
        sys.stdout.flush()
