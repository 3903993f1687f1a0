"""Process logging for journal nodes and members: readable lines, or etcd's structured JSON.

``--log-format json`` writes one JSON object per line the way etcd's zap logger
does (``--logger zap``): ``level``, ``ts`` (ISO 8601, UTC, milliseconds),
``caller`` (``package/file.py:line``), ``msg``, then fields. Fields given once
for the process (a member's ``member`` and ``partition``, a journal node's
``journal-node`` and ``az``) are in every line; a log call adds its own with
``extra=``, e.g. ``extra={"journal_position": 42}`` (keys are written with
hyphens, as etcd's: ``journal-position``). (Members import this module:
journal is the lower layer.)
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

LOG_FORMATS = ("console", "json")
LOGGERS = ("zap",)  # etcd 3.5+ has only zap; the flag is accepted for its command lines
CONSOLE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# zap's level names
_LEVELS = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warn", logging.ERROR: "error",
           logging.CRITICAL: "fatal"}  # fmt: skip
# Attributes every LogRecord has: anything else came in through extra=.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, fields: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.fields = {k.replace("_", "-"): v for k, v in (fields or {}).items()}

    def format(self, record: logging.LogRecord) -> str:
        seconds = time.gmtime(record.created)
        out: dict[str, Any] = {
            "level": _LEVELS.get(record.levelno, "info"),
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", seconds) + f".{int(record.msecs):03d}Z",
            "caller": f"{os.path.basename(os.path.dirname(record.pathname))}/{record.filename}:{record.lineno}",
            "msg": record.getMessage(),
            **self.fields,
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and not key.startswith("_"):
                out[key.replace("_", "-")] = value
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))


def python_level(level: str) -> str:
    """etcd's --log-level names (debug, info, warn, error, panic, fatal) as logging's."""
    level = level.lower()
    return {"warn": "WARNING", "panic": "CRITICAL", "fatal": "CRITICAL"}.get(level, level.upper())


def announce(logger: logging.Logger, msg: str, **fields: Any) -> None:
    """An info line written whatever the level (start-up lines that scripts and people wait for)."""
    caller = sys._getframe(1)
    record = logger.makeRecord(logger.name, logging.INFO, caller.f_code.co_filename, caller.f_lineno, msg, (), None,
                               extra=fields)  # fmt: skip
    logger.handle(record)


def setup_logging(level: str, log_format: str = "console", fields: dict[str, Any] | None = None) -> None:
    """Configure the root logger to stderr (etcd's default --log-outputs)."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"--log-format must be one of {LOG_FORMATS}, not {log_format!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(fields) if log_format == "json" else logging.Formatter(CONSOLE_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(python_level(level))
