"""Build the project's Go programs (the Go load driver, the Go client tests) offline.

They import etcd's Go client (go.etcd.io/etcd/clientv3, etcd 3.4) from Debian's golang-etcd-server-dev,
which installs it and all its dependencies as a GOPATH tree: GOPATH mode, no module download, no network.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

# Debian's golang-*-dev packages install Go sources here; KVSTORE_GOPATH points elsewhere.
GOCODE_DIR = Path(os.environ.get("KVSTORE_GOPATH", "/usr/share/gocode"))
CLIENTV3_PACKAGE = "go.etcd.io/etcd/clientv3"
BUILD_TIMEOUT_S = 600.0  # a cold build of clientv3 and grpc takes ~30 s on 2 busy cores


def go_missing() -> str | None:
    """Why Go programs cannot be built here, or None when they can."""
    if shutil.which("go") is None:
        return "no `go` on PATH (apt-get install golang-go)"
    if not (GOCODE_DIR / "src" / CLIENTV3_PACKAGE).is_dir():
        return f"no {CLIENTV3_PACKAGE} under {GOCODE_DIR}/src (apt-get install golang-etcd-server-dev)"
    return None


def go_build(src_dir: Path, out: Path, gocache: Path) -> Path:
    """`go build` the main package in src_dir into the executable out (GOPATH mode, offline)."""
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": str(GOCODE_DIR),
        "GOCACHE": str(gocache),
        "GOFLAGS": "",
        "CGO_ENABLED": "0",
    }
    sources = sorted(str(p) for p in src_dir.glob("*.go") if not p.name.endswith("_test.go"))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    proc = subprocess.run(
        ["go", "build", "-o", str(tmp), *sources],
        env=env,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"go build {src_dir} failed:\n{proc.stderr}")
    tmp.replace(out)  # atomic: a concurrent user sees the old binary or the new one, never half
    return out


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kvstore" / "go"


def cached_build(src_dir: Path, name: str) -> Path:
    """The executable built from src_dir, compiled into the cache on first use (and again when a source
    file or the Go version changes)."""
    digest = hashlib.sha256()
    version = subprocess.run(["go", "version"], capture_output=True, text=True, timeout=30).stdout
    digest.update(version.encode())
    for p in sorted(src_dir.glob("*.go")):
        digest.update(p.name.encode() + b"\0" + p.read_bytes())
    out = cache_dir() / f"{name}-{digest.hexdigest()[:16]}"
    if out.exists():
        return out
    return go_build(src_dir, out, cache_dir() / "gocache")
