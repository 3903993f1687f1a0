"""journal.logs: etcd's structured JSON lines (zap's field names) and the console format."""

from __future__ import annotations

import io
import json
import logging

import pytest

from journal.logs import JsonFormatter, python_level, setup_logging


def _line(formatter: logging.Formatter, level: int, msg: str, *args: object, **extra: object) -> str:
    logger = logging.getLogger("kvstore.test-logs")
    record = logger.makeRecord(logger.name, level, "/x/kvstore/member.py", 42, msg, args, None, extra=extra)
    return formatter.format(record)


def test_json_line_has_zaps_keys_process_fields_and_call_fields() -> None:
    f = JsonFormatter({"member": "m1", "partition": "pods"})
    out = json.loads(_line(f, logging.WARNING, "applied to %d", 7, journal_position=7, local_member_id="ab"))
    assert list(out)[:4] == ["level", "ts", "caller", "msg"]
    assert out["level"] == "warn" and out["caller"] == "kvstore/member.py:42" and out["msg"] == "applied to 7"
    assert out["ts"].endswith("Z") and len(out["ts"]) == len("2026-12-01T11:24:22.193Z")
    assert (out["member"], out["partition"], out["journal-position"], out["local-member-id"]) == ("m1", "pods", 7, "ab")


def test_json_line_carries_the_exception() -> None:
    f = JsonFormatter()
    logger = logging.getLogger("kvstore.test-logs")
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logger.makeRecord(logger.name, logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    out = json.loads(f.format(record))
    assert out["level"] == "error" and "ValueError: boom" in out["error"]


def test_levels_take_etcds_names() -> None:
    assert [python_level(x) for x in ("debug", "info", "warn", "error", "panic", "fatal")] == [
        "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", "CRITICAL",
    ]  # fmt: skip


def test_setup_logging_rejects_an_unknown_format() -> None:
    with pytest.raises(ValueError, match="--log-format"):
        setup_logging("info", "yaml")


def test_setup_logging_json_replaces_the_root_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        setup_logging("info", "json", {"journal_node": "a"})
        logging.getLogger("journal").info("hello")
        assert json.loads(err.getvalue().splitlines()[-1])["journal-node"] == "a"
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
