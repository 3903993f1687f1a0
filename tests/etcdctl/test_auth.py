"""etcd authentication and RBAC through etcdctl, command by command against a real etcd 3.5.1:
users, roles, permissions, enable/disable, every denied operation, watches and txns under auth."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.differential.harness import PairPool
from tests.etcdctl.ctl import Compare, Ctl, Result

pytestmark = pytest.mark.skipif(shutil.which("etcdctl") is None, reason="etcdctl not on PATH")

ROOT = "--user=root:rootpw"
ALICE = "--user=alice:alicepw"
BOB = "--user=bob:bobpw"


class AuthCompare(Compare):
    """Every etcdctl call with --user authenticates (bcrypt, cost 10) on both servers: on a loaded
    machine one may miss its 10 s command timeout. Such a call is run again once, on that server only
    (the commands here are denied, read-only or idempotent)."""

    def run_both(self, args: list[str], stdin: str | None = None) -> tuple[Result, Result]:
        ra, rb = self.a.run(args, stdin), self.b.run(args, stdin)
        if TIMED_OUT in ra.err:
            ra = self.a.run(args, stdin)
        if TIMED_OUT in rb.err:
            rb = self.b.run(args, stdin)
        return ra, rb

    def both(self, args: list[str], stdin: str | None = None, expect_rc: int | None = None) -> Result:
        ra, rb = self.run_both(args, stdin)
        self.check(" ".join(args), ra, rb, expect_rc)
        return ra

    def auth_status(self, user: list[str], root: str) -> None:
        """`etcdctl [user] auth status`. etcd 3.7 answers AuthStatus to any client; the reference (3.5.1)
        wants root once auth is on. Where the reference refuses for that reason, ours must answer what
        root sees (the reference's own answer to root); anything else (auth off, root, a failed login)
        is compared as usual."""
        args = [*user, "auth", "status"]
        ra, rb = self.run_both(args)
        if ra.rc == 0 or ra.err not in AUTH_STATUS_ADMIN_ONLY:
            self.check(" ".join(args), ra, rb, None)
            return
        want = self.a.run([root, "auth", "status"])
        if want.rc != 0 or rb.as_tuple() != want.as_tuple():
            self.diffs.append(f"etcdctl {' '.join(args)} (3.7: any client)\n  {self.a.server.kind} as root: "
                              f"{want.as_tuple()!r}\n  {self.b.server.kind}: {rb.as_tuple()!r}")


TIMED_OUT = "context deadline exceeded"
# etcd 3.5.1 and 3.6 refuse AuthStatus to anyone but root once auth is on
AUTH_STATUS_ADMIN_ONLY = ("Error: etcdserver: user name is empty", "Error: etcdserver: permission denied")


@pytest.fixture
def cmp(diff_pool: PairPool) -> Iterator[AuthCompare]:
    pair = diff_pool.fresh({"auth-token-ttl": 300})
    yield AuthCompare(Ctl(pair.a), Ctl(pair.b))
    pair.stop()


def setup_users(cmp: Compare) -> None:
    """root (root role), alice (reader of /r/, writer of /w/, readwrite of /a/ and the key k1), bob (no roles)."""
    for args in (
        ["user", "add", "root", "--new-user-password=rootpw"],
        ["role", "add", "root"],
        ["user", "grant-role", "root", "root"],
        ["user", "add", "alice", "--new-user-password=alicepw"],
        ["user", "add", "bob", "--new-user-password=bobpw"],
        ["role", "add", "reader"],
        ["role", "add", "writer"],
        ["role", "grant-permission", "reader", "read", "/r/", "--prefix"],
        ["role", "grant-permission", "writer", "write", "/w/", "--prefix"],
        ["role", "grant-permission", "writer", "readwrite", "/a/", "/a0"],
        ["role", "grant-permission", "writer", "readwrite", "k1"],
        ["user", "grant-role", "alice", "reader"],
        ["user", "grant-role", "alice", "writer"],
    ):
        cmp.both(args, expect_rc=0)


def test_users_roles_and_permissions(cmp: AuthCompare) -> None:
    cmp.both(["auth", "status"])
    cmp.both(["auth", "status", "-w", "json"])
    cmp.both(["auth", "enable"])  # no root user yet
    cmp.both(["user", "add", "root", "--new-user-password=rootpw"], expect_rc=0)
    cmp.both(["user", "add", "root", "--new-user-password=again"])  # exists
    cmp.both(["user", "add", "nopw", "--no-password"], expect_rc=0)
    cmp.both(["user", "get", "nopw"])
    cmp.both(["user", "get", "ghost"])
    cmp.both(["role", "add", "r1"], expect_rc=0)
    cmp.both(["role", "add", "r1"])
    cmp.both(["role", "get", "r1"])
    cmp.both(["role", "get", "ghost"])
    for perm in (
        ["read", "single"],
        ["write", "/range/a", "/range/z"],
        ["readwrite", "/prefix/", "--prefix"],
        ["read", "/from/", "--from-key"],
        ["readwrite", "/range/a", "/range/z"],  # same key and end: the type is updated
    ):
        cmp.both(["role", "grant-permission", "r1", *perm], expect_rc=0)
    cmp.both(["role", "grant-permission", "ghost", "read", "x"])
    cmp.both(["role", "grant-permission", "r1", "read", "/z", "/a"])  # inverted range
    cmp.both(["role", "get", "r1"])
    cmp.both(["role", "get", "r1", "-w", "json"])
    cmp.both(["role", "revoke-permission", "r1", "single"], expect_rc=0)
    cmp.both(["role", "revoke-permission", "r1", "single"])  # not granted any more
    cmp.both(["role", "revoke-permission", "r1", "/range/a", "/range/b"])  # other range end
    cmp.both(["role", "revoke-permission", "ghost", "x"])
    cmp.both(["user", "grant-role", "nopw", "r1"], expect_rc=0)
    cmp.both(["user", "grant-role", "nopw", "r1"])  # granted already: no error
    cmp.both(["user", "grant-role", "nopw", "ghost"])
    cmp.both(["user", "grant-role", "ghost", "r1"])
    cmp.both(["user", "get", "nopw"])
    cmp.both(["user", "get", "nopw", "-w", "json"])
    cmp.both(["user", "revoke-role", "nopw", "root"])  # not granted
    cmp.both(["user", "revoke-role", "ghost", "r1"])
    cmp.both(["user", "list"])
    cmp.both(["role", "list"])
    cmp.both(["role", "list", "-w", "json"])
    cmp.both(["user", "passwd", "root", "--interactive=false"], stdin="rootpw2\n", expect_rc=0)
    cmp.both(["user", "passwd", "ghost", "--interactive=false"], stdin="x\n")
    cmp.both(["role", "delete", "r1"], expect_rc=0)
    cmp.both(["user", "get", "nopw"])  # the deleted role is gone from its users
    cmp.both(["role", "delete", "r1"])
    cmp.both(["user", "delete", "nopw"], expect_rc=0)
    cmp.both(["user", "delete", "nopw"])
    cmp.both(["auth", "status"])
    # etcdctl answers "root user does not have root role" by adding the role and granting it
    cmp.both(["auth", "enable"], expect_rc=0)
    cmp.auth_status([], "--user=root:rootpw2")  # the reference: now root only
    cmp.both(["auth", "enable", "--user=root:rootpw2"])  # enabled already
    cmp.both(["auth", "status", "--user=root:rootpw2"])
    cmp.both(["role", "add", "root", "--user=root:rootpw2"])  # etcdctl added it
    cmp.both(["role", "get", "root", "--user=root:rootpw2"])
    cmp.both(["user", "delete", "root", "--user=root:rootpw2"])  # not while auth is on
    cmp.both(["user", "revoke-role", "root", "root", "--user=root:rootpw2"])
    cmp.both(["role", "delete", "root", "--user=root:rootpw2"])
    cmp.both(["auth", "disable", "--user=root:rootpw2"], expect_rc=0)
    cmp.both(["auth", "status"])
    assert not cmp.diffs, cmp.report()


def test_every_operation_under_auth(cmp: AuthCompare) -> None:
    setup_users(cmp)
    cmp.both(["put", "/r/1", "v"], expect_rc=0)
    cmp.both(["put", "/w/1", "v"], expect_rc=0)
    cmp.both(["auth", "enable"], expect_rc=0)
    for who in ("", ALICE, BOB, ROOT, "--user=alice:wrong", "--user=ghost:pw"):
        user = [who] if who else []
        cmp.both([*user, "get", "/r/1"])
        cmp.both([*user, "get", "/r/", "--prefix", "--keys-only"])
        cmp.both([*user, "get", "/r/1", "/r/9"])
        cmp.both([*user, "get", "/", "--prefix", "--keys-only"])
        cmp.both([*user, "get", "/w/1"])
        cmp.both([*user, "put", "/w/2", "v"])
        cmp.both([*user, "put", "/w/2", "v", "--prev-kv"])  # prev_kv needs read permission
        cmp.both([*user, "put", "/r/2", "v"])
        cmp.both([*user, "put", "k1", "v"])
        cmp.both([*user, "get", "k1"])
        cmp.both([*user, "get", "/a/x", "/a0"])
        cmp.both([*user, "del", "/w/2"])
        cmp.both([*user, "del", "/a/", "--prefix", "--prev-kv"])
        cmp.both([*user, "del", "/w/", "--prefix"])
        cmp.both([*user, "compaction", "1"])
        cmp.both([*user, "defrag"])
        if who != ROOT:  # (the hash itself is of etcd's bbolt file: not comparable)
            cmp.both([*user, "endpoint", "hashkv", "-w", "json"])
        cmp.both([*user, "alarm", "list"])
        cmp.both([*user, "user", "list"])
        cmp.both([*user, "user", "get", "alice"])
        cmp.both([*user, "role", "get", "reader"])
        cmp.both([*user, "role", "list"])
        cmp.both([*user, "user", "add", "eve", "--new-user-password=x"])
        cmp.auth_status(user, ROOT)
        cmp.both([*user, "lease", "grant", "100"])
    assert not cmp.diffs, cmp.report()


def test_txns_under_auth(cmp: Compare) -> None:
    setup_users(cmp)
    cmp.both(["put", "/r/1", "v"], expect_rc=0)
    cmp.both(["auth", "enable"], expect_rc=0)
    txns = [
        "\nput /w/t1 v\n\n",  # write only
        'value("/r/1") = "v"\n\nput /w/t2 v\n\n',  # compare needs read
        'value("/w/x") = "v"\n\nput /w/t3 v\n\n',  # compare on a key it cannot read
        'value("/r/1") = "v"\n\nput /w/t4 v\n\nput /r/forbidden v\n\n',  # the failure branch is checked too
        'value("/r/1") = "x"\n\nput /r/forbidden v\n\nput /w/t5 v\n\n',  # ... and the success branch
        'value("/r/1") = "v"\nget /r/1\n\nget /w/1\n\n',  # read-only txn, both branches
        "\nget /r/1\nget /a/x\n\n",
        "\ndel /w/t1\n\n",
        "\nput /a/b x\nget /a/b\n\n",
    ]
    for who in (ALICE, BOB, ROOT, ""):
        user = [who] if who else []
        for txn in txns:
            cmp.both([*user, "txn"], stdin=txn)
            cmp.both([*user, "txn", "-w", "json"], stdin=txn)
    assert not cmp.diffs, cmp.report()


def test_watches_under_auth(cmp: Compare) -> None:
    setup_users(cmp)
    cmp.both(["auth", "enable"], expect_rc=0)
    cmp.both([ROOT, "put", "/r/w", "1"], expect_rc=0)
    cmp.both([ROOT, "put", "/w/w", "1"], expect_rc=0)
    for who in (ALICE, BOB, ROOT):
        cmp.watch([who, "/r/w", "--rev", "1"], seconds=3.0)
        cmp.watch([who, "/r/", "--prefix", "--rev", "1"], seconds=3.0)
        cmp.watch([who, "/w/w", "--rev", "1"], seconds=3.0)
        cmp.watch([who, "/", "--prefix", "--rev", "1"], seconds=3.0)
    cmp.watch(["/r/w", "--rev", "1"], seconds=3.0)
    assert not cmp.diffs, cmp.report()


def test_leases_under_auth(cmp: Compare) -> None:
    setup_users(cmp)
    cmp.both(["auth", "enable"], expect_rc=0)
    lease_a = cmp.a.run_raw([ROOT, "lease", "grant", "600"]).stdout.split()[1]
    lease_b = cmp.b.run_raw([ROOT, "lease", "grant", "600"]).stdout.split()[1]
    for ctl, lease in ((cmp.a, lease_a), (cmp.b, lease_b)):
        assert ctl.run([ROOT, "put", "/secret", "v", f"--lease={lease}"]).rc == 0
    results = []
    for ctl, lease in ((cmp.a, lease_a), (cmp.b, lease_b)):
        # alice may not write /secret: she can neither attach her key to its lease nor revoke it
        results.append(
            [
                ctl.run([ALICE, "put", "/w/mine", "v", f"--lease={lease}"]).as_tuple(),
                ctl.run([ALICE, "lease", "revoke", lease]).as_tuple(),
                ctl.run([ALICE, "lease", "timetolive", lease]).rc,
                ctl.run([ROOT, "lease", "revoke", lease]).as_tuple()[0],
            ]
        )
    assert results[0] == results[1], results
