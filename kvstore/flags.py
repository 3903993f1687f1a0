"""Command-line conventions taken from etcd: Go-style boolean flags and ETCD_* environment variables."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any


def parse_bool(text: str) -> bool:
    """Go's strconv.ParseBool, which etcd's boolean flags and ETCD_* variables go through."""
    value = text.strip().lower()
    if value in ("1", "t", "true"):
        return True
    if value in ("0", "f", "false"):
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean value {text!r}")


GO_BOOL: dict[str, Any] = {"nargs": "?", "const": True, "default": False, "type": parse_bool, "metavar": "BOOL"}


def env_name(flag: str) -> str:
    """etcd's environment variable for a flag: --cert-file -> ETCD_CERT_FILE."""
    return "ETCD_" + flag.lstrip("-").upper().replace("-", "_")


def apply_env_defaults(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """Every flag can come from its ETCD_* variable, as in etcd; a flag on the command line wins."""
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        value = environ.get(env_name(action.option_strings[0]))
        if value is None:
            continue
        action.default = value  # argparse runs `type` on string defaults
