"""How `kvstore serve --partitions` turns its own flags into one command line per partition."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvstore.partition.plan import PlanError
from kvstore.partition.supervisor import check_listeners, partition_args, passthrough_args, plan_for
from kvstore.server import build_parser, usable_cores


def args_for(*argv: str) -> tuple[list[str], list[list[str]]]:
    parser = build_parser()
    args = parser.parse_args(list(argv))
    plan = plan_for(args)
    per = [partition_args(args, plan, i) for i in range(len(plan.partitions))]
    check_listeners(per, plan)
    return passthrough_args(parser, args), per


def test_shared_flags_pass_through_and_per_partition_flags_are_set() -> None:
    common, per = args_for(
        "--partitions", "kube", "--data-dir", "/d", "--max-txn-ops", "64", "--journal-fsync", "batch",
        "--journal-endpoints", "h:1,h:2,h:3", "--listen-metrics-urls", "http://127.0.0.1:2391",
    )  # fmt: skip
    assert sorted(common) == ["--journal-endpoints=h:1,h:2,h:3", "--journal-fsync=batch", "--max-txn-ops=64"]
    events = per[1]
    assert "--name=events" in events and "--data-dir=/d/events" in events
    assert "--listen-client-urls=http://127.0.0.1:2380" in events and "--journal-log=events" in events
    assert "--listen-metrics-urls=http://127.0.0.1:2392" in events
    assert "--initial-cluster-token=etcd-cluster-events" in events
    assert "--initial-cluster-token=etcd-cluster" in per[0] and "--journal-log=default" in per[0]
    assert f"--quota-backend-bytes={2 * 1024**3}" in events


def test_plan_quota_wins_over_the_flag(tmp_path: Path) -> None:
    plan = tmp_path / "p.toml"
    plan.write_text("[[partition]]\nname='default'\n[[partition]]\nname='ev'\nresources=['/events']\n"
                    "quota_backend_bytes=1048576\n")  # fmt: skip
    _, per = args_for("--partitions", str(plan), "--quota-backend-bytes", "4096000", "--name", "m1")
    assert "--quota-backend-bytes=4096000" in per[0] and "--name=m1-default" in per[0]
    assert "--quota-backend-bytes=1048576" in per[1] and "--name=m1-ev" in per[1]


def test_listeners_that_collide_are_refused() -> None:
    with pytest.raises(PlanError, match="would listen on port 2381"):
        args_for("--partitions", "kube", "--listen-client-urls", "http://0.0.0.0:2379",
                 "--listen-metrics-urls", "http://0.0.0.0:2381")  # fmt: skip


def test_workers_are_the_usable_cores_shared_among_the_partitions() -> None:
    _, per = args_for("--partitions", "kube")  # 5 partitions
    assert all(f"--workers={max(1, usable_cores() // 5)}" in p for p in per)
    common, per = args_for("--partitions", "kube", "--workers", "2")
    assert all("--workers=2" in p for p in per) and not any(a.startswith("--workers") for a in common)
