"""Run the same etcdctl command against two servers and compare the normalised outputs.

What differs by server and is normalised away: endpoints (ports), member and cluster ids, lease ids
chosen by the server (named in order of first appearance, per server), raft terms, DB sizes, versions,
timings, and remaining TTLs (compared within a tolerance). Everything else must be byte-equal.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from tests.differential.normalize import TTL_TOLERANCE_S, LeaseNames
from tests.servers import ServerProcess, etcd_binary

ETCDCTL = etcd_binary("etcdctl") or "etcdctl"
CMD_TIMEOUT_S = 20.0


@dataclass
class Result:
    rc: int
    out: Any
    err: str
    ttls: list[int] = field(default_factory=list)  # remaining TTLs printed, compared within a tolerance
    raw: str = field(default="", compare=False)

    def as_tuple(self) -> tuple[int, Any, str]:
        return (self.rc, self.out, self.err)

    def same_as(self, other: Result) -> bool:
        return self.as_tuple() == other.as_tuple() and len(self.ttls) == len(other.ttls) and all(
            (x == y) if min(x, y) <= 0 else abs(x - y) <= TTL_TOLERANCE_S for x, y in zip(self.ttls, other.ttls,
                                                                                         strict=True))


@dataclass
class Ctl:
    """etcdctl bound to one server, with that server's lease-id names."""

    server: ServerProcess
    leases: LeaseNames = field(default_factory=LeaseNames)
    _ttls: list[int] = field(default_factory=list)

    def base_args(self) -> list[str]:
        """etcdctl and its endpoint (with the TLS files, for an https:// server)."""
        if self.server.tls is None:
            return [ETCDCTL, f"--endpoints={self.server.endpoint}"]
        ca, cert, key = self.server.tls
        out = [ETCDCTL, f"--endpoints=https://{self.server.endpoint}", f"--cacert={ca}"]
        if cert is not None and key is not None:
            out += [f"--cert={cert}", f"--key={key}"]
        return out

    def run_raw(self, args: list[str], stdin: str | None = None, timeout_s: float = CMD_TIMEOUT_S,
                ) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, ETCDCTL_API="3")
        argv = [*self.base_args(), "--command-timeout=10s", *args]
        return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout_s, env=env)

    def run(self, args: list[str], stdin: str | None = None) -> Result:
        p = self.run_raw(args, stdin)
        json_out = "-w" in args and args[args.index("-w") + 1] == "json"
        self._ttls = []
        out: Any = self.norm_json(p.stdout) if json_out and p.stdout.strip() else self.norm_text(p.stdout)
        return Result(p.returncode, out, self.norm_err(p.stderr), self._ttls)

    def watch_start(self, args: list[str]) -> subprocess.Popen[str]:
        """Start `etcdctl watch ...`; finish it with watch_result()."""
        env = dict(os.environ, ETCDCTL_API="3")
        argv = [*self.base_args(), "watch", *args]
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    def watch_result(self, p: subprocess.Popen[str], args: list[str], seconds: float,
                     want_lines: int | None = None) -> Result:
        """Let the watch run `seconds` (or until it printed `want_lines` lines), stop it; the printed
        events are the result."""
        assert p.stdout is not None
        lines: list[str] = []

        def read() -> None:
            assert p.stdout is not None
            for line in p.stdout:
                lines.append(line)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and (want_lines is None or len(lines) < want_lines):
            time.sleep(0.02)
        if want_lines is not None and len(lines) >= want_lines:
            time.sleep(0.2)  # anything extra the server under test would print shows up too
        p.terminate()
        _, err = p.communicate(timeout=10)
        reader.join(10)
        out = "".join(lines)
        self._ttls = []
        json_out = "-w" in args and args[args.index("-w") + 1] == "json"
        norm: Any = self.norm_json(out) if json_out and out.strip() else self.norm_text(out)
        return Result(0, norm, self.norm_err(err), self._ttls, raw=out)

    # -- normalisation ------------------------------------------------------------------------------------
    def norm_text(self, text: str) -> str:
        text = text.replace(self.server.endpoint, "<endpoint>")
        text = text.replace(self.server.client_url, "<client-url>")
        # lease ids are printed in hex: "lease 694d7f7c8c8a0a0b granted ..."; `lease list` prints one per line
        text = re.sub(r"(lease )([0-9a-f]+)", lambda m: m.group(1) + self._lease_hex(m.group(2)), text)
        text = re.sub(r"(?m)^([0-9a-f]{16})$", lambda m: self._lease_hex(m.group(1)), text)
        text = re.sub(r"remaining\((-?\d+)s\)", self._ttl_sub, text)
        text = re.sub(r"took = [0-9.]+[µmn]?s", "took = <t>", text)
        text = re.sub(r"memberID:\d+", "memberID:<member>", text)  # a single member raises every alarm
        # attached keys come from a Go map walk: their order is unspecified
        text = re.sub(r"attached keys\(\[([^\]]*)\]\)",
                      lambda m: "attached keys([" + " ".join(sorted(m.group(1).split())) + "])", text)
        return text

    def norm_err(self, text: str) -> str:
        # etcdctl's client library logs JSON lines (retries, timestamps); keep only etcdctl's own messages
        lines = [ln for ln in text.splitlines() if not ln.startswith("{")]
        return self.norm_text("\n".join(lines))

    def norm_json(self, text: str) -> Any:
        try:
            return self._norm_obj(json.loads(text))
        except json.JSONDecodeError:
            return [self._norm_obj(json.loads(ln)) for ln in text.splitlines() if ln.strip()]

    def _norm_obj(self, o: Any, parent: str = "") -> Any:
        if isinstance(o, dict):
            out = {}
            for k, v in o.items():
                if k in ("cluster_id", "member_id", "raft_term", "ClusterId", "MemberId", "RaftTerm"):
                    continue
                if k in ("ID", "lease") and isinstance(v, int) and parent != "members":
                    out[k] = self.leases.name(v)
                else:
                    out[k] = self._norm_obj(v, k)
            return out
        if isinstance(o, list):
            return [self._norm_obj(v, parent) for v in o]
        return o

    def _lease_hex(self, h: str) -> str:
        return str(self.leases.name(int(h, 16)))

    def _ttl_sub(self, m: re.Match[str]) -> str:
        # remaining TTLs drift by a second between two servers: compared apart, within TTL_TOLERANCE_S
        self._ttls.append(int(m.group(1)))
        return "remaining(<ttl>)"


@dataclass
class Compare:
    """Collects differences between the two servers over a test, reported all at once."""

    a: Ctl
    b: Ctl
    diffs: list[str] = field(default_factory=list)

    def both(self, args: list[str], stdin: str | None = None, expect_rc: int | None = None) -> Result:
        ra, rb = self.a.run(args, stdin), self.b.run(args, stdin)
        self.check(" ".join(args), ra, rb, expect_rc)
        return ra

    def watch(self, args: list[str], seconds: float = 1.0, catch_up_s: float = 8.0) -> Result:
        """Both watches run at once; the reference for `seconds`, the server under test until it printed
        as many lines as the reference did (or `catch_up_s` more), so a loaded machine does not flake."""
        pa, pb = self.a.watch_start(args), self.b.watch_start(args)
        ra = self.a.watch_result(pa, args, seconds)
        want_lines = len(ra.raw.splitlines())
        rb = self.b.watch_result(pb, args, catch_up_s, want_lines=want_lines)
        self.check("watch " + " ".join(args), ra, rb, None)
        return ra

    def check(self, label: str, ra: Result, rb: Result, expect_rc: int | None) -> None:
        if not ra.same_as(rb):
            self.diffs.append(f"etcdctl {label}\n  {self.a.server.kind}: {ra.as_tuple()!r}\n"
                              f"  {self.b.server.kind}: {rb.as_tuple()!r}")
        if expect_rc is not None and ra.rc != expect_rc:
            self.diffs.append(f"etcdctl {label}: reference exit code {ra.rc} != {expect_rc}: {ra!r}")

    def report(self) -> str:
        return f"{len(self.diffs)} difference(s):\n" + "\n".join(self.diffs)
