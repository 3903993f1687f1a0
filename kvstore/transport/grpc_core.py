"""Settings of gRPC's C core, read from the environment when grpc is first imported.

`kvstore serve` puts them in its environment before it imports grpc (kvstore/cli.py); its
front ends inherit them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib import metadata

from kvstore.flags import env_name

GRPC_EXPERIMENTS_ENV = "GRPC_EXPERIMENTS"

# Behind the client URL's multiplexer every gRPC connection reaches grpcio through a unix socket,
# and there gRPC's EventEngine listener and the endpoints it accepts wake grpc's threads (eventfd
# writes) far more often than the iomgr listener it replaced: about a fifth more CPU per
# serializable range (docs/benchmarks.md, session 7). On TCP (gRPC owning the client port, with
# --listen-client-http-urls) the EventEngine is the faster one, so it stays there. Measured on
# grpcio 1.85; other releases may not know the experiment (grpc logs "Unknown experiment"), so
# only inside this range.
LEGACY_LISTENER_EXPERIMENT = "event_engine_listener"
LEGACY_LISTENER_GRPCIO_MIN = (1, 60)
LEGACY_LISTENER_GRPCIO_END = (1, 86)  # exclusive: measure again before widening


def _grpcio_version() -> tuple[int, int] | None:
    try:
        major, minor = metadata.version("grpcio").split(".")[:2]
        return int(major), int(minor)
    except (metadata.PackageNotFoundError, ValueError):
        return None


def _flag(argv: Sequence[str], environ: Mapping[str, str], flag: str) -> str:
    """A serve flag's value as given on the command line (which wins) or in its ETCD_ variable."""
    for i, arg in enumerate(argv):
        if arg.startswith(f"{flag}="):
            return arg.partition("=")[2]
        if arg == flag:
            return argv[i + 1] if i + 1 < len(argv) else ""
    return environ.get(env_name(flag), "")


def grpc_behind_multiplexer(argv: Sequence[str], environ: Mapping[str, str]) -> bool:
    """Whether `kvstore serve` with these flags serves gRPC through the multiplexer's unix socket:
    unless --listen-client-http-urls gives HTTP its own URLs and TLS is not on the client URLs
    (the multiplexer terminates TLS, kvstore/transport/cmux.py)."""
    if "https://" in _flag(argv, environ, "--listen-client-urls"):
        return True
    return not _flag(argv, environ, "--listen-client-http-urls")


def core_environment(environ: Mapping[str, str], behind_multiplexer: bool = True) -> dict[str, str]:
    """The variables to add to environ: behind the multiplexer, the legacy listener, unless
    GRPC_EXPERIMENTS already names that experiment (the operator's choice wins) or this grpcio
    may not know it."""
    if not behind_multiplexer:
        return {}
    experiments = environ.get(GRPC_EXPERIMENTS_ENV, "")
    names = {name.strip().lstrip("-") for name in experiments.split(",")}
    version = _grpcio_version()
    if LEGACY_LISTENER_EXPERIMENT in names or version is None:
        return {}
    if not LEGACY_LISTENER_GRPCIO_MIN <= version < LEGACY_LISTENER_GRPCIO_END:
        return {}
    disabled = f"-{LEGACY_LISTENER_EXPERIMENT}"
    return {GRPC_EXPERIMENTS_ENV: f"{experiments},{disabled}" if experiments else disabled}
