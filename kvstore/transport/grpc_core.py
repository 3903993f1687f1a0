"""Settings of gRPC's C core, read from the environment when grpc is first imported.

`kvstore serve` puts them in its environment before it imports grpc (kvstore/cli.py); its
front ends and partition members inherit them, and bench.floor starts its do-nothing
server with the same, so that the floor differs from ours only in our own code.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import metadata

GRPC_EXPERIMENTS_ENV = "GRPC_EXPERIMENTS"

# gRPC's EventEngine listener and the endpoints it accepts cost a member about a quarter more CPU
# per serializable range (docs/benchmarks.md "gRPC's listener"): every gRPC connection of the
# client URL reaches grpcio through the multiplexer's unix socket, and on those the EventEngine
# endpoint wakes grpc's threads (eventfd writes) far more often than the iomgr listener it
# replaced. Measured on grpcio 1.85; earlier and later releases may not know the experiment
# (grpc logs "Unknown experiment" for a name it does not have), so only inside this range.
LEGACY_LISTENER_EXPERIMENT = "event_engine_listener"
LEGACY_LISTENER_GRPCIO_MIN = (1, 60)
LEGACY_LISTENER_GRPCIO_END = (1, 86)  # exclusive: measure again before widening


def _grpcio_version() -> tuple[int, int] | None:
    try:
        major, minor = metadata.version("grpcio").split(".")[:2]
        return int(major), int(minor)
    except (metadata.PackageNotFoundError, ValueError):
        return None


def core_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables to add to environ: the legacy listener, unless GRPC_EXPERIMENTS already
    names that experiment (the operator's choice wins) or this grpcio may not know it."""
    experiments = environ.get(GRPC_EXPERIMENTS_ENV, "")
    names = {name.strip().lstrip("-") for name in experiments.split(",")}
    version = _grpcio_version()
    if LEGACY_LISTENER_EXPERIMENT in names or version is None:
        return {}
    if not LEGACY_LISTENER_GRPCIO_MIN <= version < LEGACY_LISTENER_GRPCIO_END:
        return {}
    disabled = f"-{LEGACY_LISTENER_EXPERIMENT}"
    return {GRPC_EXPERIMENTS_ENV: f"{experiments},{disabled}" if experiments else disabled}
