"""The compare command's table: medians over rounds and ratios ours / etcd."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from bench.compare import Run, main, render_table


def run(target: str, rnd: int, throughput: float, p99_us: int) -> Run:
    return Run(
        target=target,
        workload="put",
        round=rnd,
        throughput=throughput,
        p50_us=1000,
        p99_us=p99_us,
        errors=0,
        server_cpu_us_per_op=100.0,
        tool_cores=0.5,
        host_busy=0.5,
    )


def test_table_has_medians_spreads_and_ratios() -> None:
    runs = [
        run("etcd-1", 1, 1000, 10_000),
        run("etcd-1", 2, 3000, 30_000),
        run("etcd-1", 3, 2000, 20_000),
        run("kvstore", 1, 500, 40_000),
        run("kvstore", 2, 700, 60_000),
        run("kvstore", 3, 600, 50_000),
    ]
    table = render_table(runs, ["etcd-1", "kvstore"], ["put"], [("kvstore", "etcd-1"), ("kvstore-3", "etcd-3")])
    lines = table.splitlines()
    assert lines[0] == "| workload | metric | etcd-1 | kvstore | kvstore / etcd-1 |"
    ops = next(line for line in lines if "| ops/s |" in line)
    assert "2,000 (1,000 .. 3,000)" in ops and "600 (500 .. 700)" in ops and ops.endswith("| 0.30 |")
    p99 = next(line for line in lines if "| p99 ms |" in line)
    assert "20.00 (10.00 .. 30.00)" in p99 and p99.endswith("| 2.50 |")


def test_summary_has_one_ratio_row_per_workload() -> None:
    from bench.compare import render_summary

    runs = [run("etcd-1", 1, 1000, 10_000), run("kvstore", 1, 250, 40_000)]
    text = render_summary(runs, ["etcd-1", "kvstore"], ["put"], [("kvstore", "etcd-1"), ("kvstore-3", "etcd-3")])
    lines = text.splitlines()
    assert lines[0] == "| workload | kvstore / etcd-1 ops/s | p99 | CPU/op |"
    assert lines[2] == "| put | 0.25 | 4.00 | 1.00 |"


def test_missing_target_gives_no_ratio() -> None:
    table = render_table([run("etcd-1", 1, 1000, 1000)], ["etcd-1"], ["put"], [("kvstore", "etcd-1")])
    assert "kvstore /" not in table


@pytest.mark.skipif(shutil.which("etcd") is None, reason="needs etcd")
def test_compare_writes_a_table_for_etcd(tmp_path: Path) -> None:
    out = tmp_path / "cmp.md"
    args = ["--targets", "etcd-1", "--workloads", "put", "--duration", "0.5", "--rounds", "1"]
    assert main([*args, "--out", str(out), "--work-dir", str(tmp_path / "work")]) == 0
    text = out.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| put | ops/s |"))
    assert float(row.split("|")[3].strip().replace(",", "")) > 0
    assert "## Machine" in text and "etcd: 3." in text and "## Every run" in text


@pytest.mark.skipif(shutil.which("etcd") is None, reason="needs etcd")
def test_a_target_that_does_not_start_is_reported_not_fatal(tmp_path: Path) -> None:
    out = tmp_path / "cmp.md"
    args = ["--targets", "etcd-1,kvstore", "--workloads", "put", "--duration", "0.5", "--rounds", "1"]
    args += ["--kvstore-args=--no-such-flag", "--out", str(out), "--work-dir", str(tmp_path / "work")]
    assert main(args) == 0
    text = out.read_text()
    assert "- **kvstore**: did not start" in text
    assert "| put | ops/s |" in text and "kvstore / etcd-1" not in text


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("etcd") is None, reason="needs etcd")
def test_compare_end_to_end_against_etcd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "cmp.md"
    monkeypatch.setattr(sys, "argv", ["compare"])
    rc = main(
        [
            "--targets",
            "etcd-1,kvstore",
            "--workloads",
            "put,kube",
            "--duration",
            "1",
            "--rounds",
            "1",
            "--out",
            str(out),
            "--work-dir",
            str(tmp_path / "work"),
        ]
    )
    assert rc == 0
    text = out.read_text()
    assert "| put | ops/s |" in text and "## Machine" in text


def test_default_pytest_run_does_not_collect_the_micro_benchmarks() -> None:
    """`pytest` from the root collects tests/ only and skips benchmarks; bench/micro needs --benchmark-only."""
    import tomllib

    root = Path(__file__).resolve().parents[2]
    cfg = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert cfg["testpaths"] == ["tests"]
    assert "--benchmark-skip" in cfg["addopts"]
    assert (root / "bench" / "micro" / "conftest.py").exists()


def test_client_connections_counts_each_process_s_established_connections_on_the_port() -> None:
    """How `compare` reports the kernel's split of the driver's connections over a member's processes."""
    import os
    import socket
    import subprocess

    from bench.runner import client_connections

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    accepted = [listener.accept()[0] for _ in clients]
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        # The accepted ends are on the port; the clients' ends only have it as their remote port.
        assert client_connections([other.pid, os.getpid()], port) == [0, 3]
        accepted[0].close()
        clients[0].close()
        assert client_connections([os.getpid()], port) == [2]
    finally:
        other.kill()
        other.wait()
        for s in [*clients, *accepted, listener]:
            s.close()
