"""Membership from the journal: three members on one log, seen through a real etcdctl.

Each member registers in the log and renews through it; `etcdctl member list` lists all three
from any of them; a killed member leaves the list once its liveness TTL has passed (decided from
journal timestamps); `member remove` makes the removed member stop serving; `member add`
pre-registers an id that the member started with those peer URLs takes; `member update` changes
the peer URLs shown.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.servers import JournalNodes, ServerProcess, etcd_binary, free_port, members_on_journal, start_on_journal

LIVENESS = {"member-liveness-ttl": "3s"}
# The 3-member partition: three members on one journal log (tests/clients/test_go_autosync.py too).
THREE_MEMBERS = {name: LIVENESS for name in ("m1", "m2", "m3")}
WAIT_S = 30.0


def ctl(member: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [etcd_binary("etcdctl") or "etcdctl", f"--endpoints={member.endpoint}", "--command-timeout=10s", *args],
        capture_output=True, text=True, timeout=30,
    )


def members(member: ServerProcess) -> list[dict[str, Any]]:
    r = ctl(member, "member", "list", "-w", "json")
    assert r.returncode == 0, r.stderr
    out: list[dict[str, Any]] = json.loads(r.stdout).get("members", [])
    return out


def names(member: ServerProcess) -> list[str]:
    return sorted(m.get("name", "") for m in members(member))


def wait_for(what: Any, want: Any) -> Any:
    deadline = time.monotonic() + WAIT_S
    got = what()
    while got != want and time.monotonic() < deadline:
        time.sleep(0.2)
        got = what()
    return got


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[JournalNodes, dict[str, ServerProcess]]]:
    with members_on_journal("kvstore-membership-", THREE_MEMBERS) as c:
        yield c


def start_member(nodes: JournalNodes, name: str, peer_url: str = "") -> ServerProcess:
    return start_on_journal(nodes, name, LIVENESS, peer_url)


def test_member_list_shows_every_member_from_any_member(cluster: tuple[JournalNodes, dict[str, ServerProcess]]) -> None:
    _, ms = cluster
    for m in ms.values():
        assert wait_for(lambda m=m: names(m), ["m1", "m2", "m3"]) == ["m1", "m2", "m3"]
    listed = {x["name"]: x for x in members(ms["m1"])}
    for name, m in ms.items():
        assert listed[name]["clientURLs"] == [m.client_url]
        assert listed[name]["peerURLs"]
    table = ctl(ms["m2"], "member", "list", "-w", "table")
    assert table.returncode == 0 and all(m.client_url in table.stdout for m in ms.values()), table.stdout


def test_a_killed_member_leaves_after_its_liveness_expires(
    cluster: tuple[JournalNodes, dict[str, ServerProcess]],
) -> None:
    _, ms = cluster
    assert wait_for(lambda: names(ms["m1"]), ["m1", "m2", "m3"]) == ["m1", "m2", "m3"]
    ms["m3"].kill()
    assert "m3" in names(ms["m1"])  # still listed: its liveness has not run out yet
    assert wait_for(lambda: names(ms["m1"]), ["m1", "m2"]) == ["m1", "m2"]
    assert names(ms["m2"]) == ["m1", "m2"]
    ms["m3"].start()  # it comes back: it registers again
    assert wait_for(lambda: names(ms["m1"]), ["m1", "m2", "m3"]) == ["m1", "m2", "m3"]


def test_member_remove_stops_the_removed_member(cluster: tuple[JournalNodes, dict[str, ServerProcess]]) -> None:
    _, ms = cluster
    victim = next(x for x in members(ms["m1"]) if x["name"] == "m2")
    r = ctl(ms["m1"], "member", "remove", format(victim["ID"], "x"))
    assert r.returncode == 0, r.stderr
    assert "removed from cluster" in r.stdout
    proc = ms["m2"].proc
    assert proc is not None
    proc.wait(WAIT_S)  # it stops serving, as a removed etcd member does
    assert names(ms["m1"]) == ["m1", "m3"]
    again = ctl(ms["m1"], "member", "remove", format(victim["ID"], "x"))
    assert again.returncode != 0 and "member not found" in again.stderr
    # restarted on its data dir, a removed member is refused by the log and stops again
    restarted = subprocess.Popen(ms["m2"].argv, env=ms["m2"].env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
    assert restarted.wait(WAIT_S) is not None
    assert names(ms["m1"]) == ["m1", "m3"]


def test_member_add_preregisters_and_update_changes_peer_urls(
    cluster: tuple[JournalNodes, dict[str, ServerProcess]],
) -> None:
    nodes, ms = cluster
    peer = f"http://127.0.0.1:{free_port()}"
    r = ctl(ms["m1"], "member", "add", "m4", f"--peer-urls={peer}")
    assert r.returncode == 0, r.stderr
    added = next(x for x in members(ms["m1"]) if peer in x.get("peerURLs", []))
    assert not added.get("name") and not added.get("clientURLs")  # unstarted, as etcd lists it
    bad = ctl(ms["m1"], "member", "add", "m5", f"--peer-urls={peer}")
    assert bad.returncode != 0 and "Peer URLs already exists" in bad.stderr
    ms["m4"] = start_member(nodes, "m4", peer)
    assert wait_for(lambda: names(ms["m1"]), ["m1", "m3", "m4"]) == ["m1", "m3", "m4"]
    m4 = next(x for x in members(ms["m1"]) if x["name"] == "m4")
    assert m4["ID"] == added["ID"] and m4["clientURLs"] == [ms["m4"].client_url]
    new_peer = f"http://127.0.0.1:{free_port()}"
    r = ctl(ms["m3"], "member", "update", format(m4["ID"], "x"), f"--peer-urls={new_peer}")
    assert r.returncode == 0, r.stderr
    assert next(x for x in members(ms["m1"]) if x["name"] == "m4")["peerURLs"] == [new_peer]
