"""etcd's gRPC errors, code and message exactly as etcd sends them.

Clients (clientv3, and through it kube-apiserver) map errors back to types by
their message text, so a message that differs by one byte is a different error.
"""

from __future__ import annotations

import grpc

Code = grpc.StatusCode


class EtcdError(Exception):
    """An error the client sees as a gRPC status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EtcdError) and (self.code, self.message) == (other.code, other.message)

    def __hash__(self) -> int:
        return hash((self.code, self.message))

    def __repr__(self) -> str:
        return f"EtcdError({self.code.name}, {self.message!r})"


def _error(code: grpc.StatusCode, message: str) -> tuple[grpc.StatusCode, str]:
    return (code, message)


EMPTY_KEY = _error(Code.INVALID_ARGUMENT, "etcdserver: key is not provided")
KEY_NOT_FOUND = _error(Code.INVALID_ARGUMENT, "etcdserver: key not found")
VALUE_PROVIDED = _error(Code.INVALID_ARGUMENT, "etcdserver: value is provided")
LEASE_PROVIDED = _error(Code.INVALID_ARGUMENT, "etcdserver: lease is provided")
TOO_MANY_OPS = _error(Code.INVALID_ARGUMENT, "etcdserver: too many operations in txn request")
DUPLICATE_KEY = _error(Code.INVALID_ARGUMENT, "etcdserver: duplicate key given in txn request")
INVALID_SORT_OPTION = _error(Code.INVALID_ARGUMENT, "etcdserver: invalid sort option")
COMPACTED = _error(Code.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted")
FUTURE_REV = _error(Code.OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision")
NO_SPACE = _error(Code.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded")
REQUEST_TOO_LARGE = _error(Code.INVALID_ARGUMENT, "etcdserver: request is too large")
TOO_MANY_REQUESTS = _error(Code.RESOURCE_EXHAUSTED, "etcdserver: too many requests")
LEASE_NOT_FOUND = _error(Code.NOT_FOUND, "etcdserver: requested lease not found")
LEASE_EXISTS = _error(Code.FAILED_PRECONDITION, "etcdserver: lease already exists")
LEASE_TTL_TOO_LARGE = _error(Code.OUT_OF_RANGE, "etcdserver: too large lease TTL")
NO_LEADER = _error(Code.UNAVAILABLE, "etcdserver: no leader")
TIMEOUT = _error(Code.UNAVAILABLE, "etcdserver: request timed out")
STOPPED = _error(Code.UNAVAILABLE, "etcdserver: server stopped")
NOT_CAPABLE = _error(Code.FAILED_PRECONDITION, "etcdserver: not capable")
BAD_LEADER_TRANSFEREE = _error(Code.FAILED_PRECONDITION, "etcdserver: bad leader transferee")
MEMBER_NOT_FOUND = _error(Code.NOT_FOUND, "etcdserver: member not found")
MEMBER_EXIST = _error(Code.FAILED_PRECONDITION, "etcdserver: member ID already exist")
PEER_URL_EXIST = _error(Code.FAILED_PRECONDITION, "etcdserver: Peer URLs already exists")
MEMBER_BAD_URLS = _error(Code.INVALID_ARGUMENT, "etcdserver: given member URLs are invalid")
MEMBER_REMOVED = _error(
    Code.FAILED_PRECONDITION, "etcdserver: the member has been permanently removed from the cluster"
)
AUTH_NOT_ENABLED = _error(Code.FAILED_PRECONDITION, "etcdserver: authentication is not enabled")
ROOT_USER_NOT_EXIST = _error(Code.FAILED_PRECONDITION, "etcdserver: root user does not exist")
ROOT_ROLE_NOT_EXIST = _error(Code.FAILED_PRECONDITION, "etcdserver: root user does not have root role")
USER_ALREADY_EXIST = _error(Code.FAILED_PRECONDITION, "etcdserver: user name already exists")
USER_EMPTY = _error(Code.INVALID_ARGUMENT, "etcdserver: user name is empty")
USER_NOT_FOUND = _error(Code.FAILED_PRECONDITION, "etcdserver: user name not found")
ROLE_ALREADY_EXIST = _error(Code.FAILED_PRECONDITION, "etcdserver: role name already exists")
ROLE_NOT_FOUND = _error(Code.FAILED_PRECONDITION, "etcdserver: role name not found")
ROLE_EMPTY = _error(Code.INVALID_ARGUMENT, "etcdserver: role name is empty")
PERMISSION_NOT_GIVEN = _error(Code.INVALID_ARGUMENT, "etcdserver: permission not given")
AUTH_FAILED = _error(Code.INVALID_ARGUMENT, "etcdserver: authentication failed, invalid user ID or password")
PERMISSION_DENIED = _error(Code.PERMISSION_DENIED, "etcdserver: permission denied")
ROLE_NOT_GRANTED = _error(Code.FAILED_PRECONDITION, "etcdserver: role is not granted to the user")
PERMISSION_NOT_GRANTED = _error(Code.FAILED_PRECONDITION, "etcdserver: permission is not granted to the role")
# etcd 3.5 leaves this one unconverted: clients see the auth package's own error, code Unknown.
AUTH_OLD_REVISION = _error(Code.UNKNOWN, "auth: revision in header is old")
INVALID_AUTH_TOKEN = _error(Code.UNAUTHENTICATED, "etcdserver: invalid auth token")
INVALID_AUTH_MGMT = _error(Code.INVALID_ARGUMENT, "etcdserver: invalid auth management")

# Watch-create failures are not gRPC errors: they come back in the stream as a
# canceled WatchResponse with one of these reasons.
WATCH_RANGE_EMPTY = "mvcc: watcher range is empty"
WATCH_DUPLICATE_ID = "mvcc: duplicate watch ID provided on the WatchStream"
WATCH_PERMISSION_DENIED = "rpc error: code = PermissionDenied desc = etcdserver: permission denied"


def fail(spec: tuple[grpc.StatusCode, str]) -> EtcdError:
    """A fresh exception for one of the specs above: `raise fail(COMPACTED)`."""
    return EtcdError(*spec)
