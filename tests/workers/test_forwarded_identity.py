"""A front end vouches for its client's certificate name; nobody else can claim one."""

from __future__ import annotations

from typing import Any

from kvstore.transport.cmux import FORWARDED_CN_METADATA, FORWARDED_SECRET_METADATA, PeerIdentities
from kvstore.workers.forward import certificate_identity, forwarded_metadata


class Call:
    """What the identity checks read of a gRPC call: its peer and its metadata."""

    def __init__(self, peer: str, metadata: list[tuple[str, str]]) -> None:
        self._peer = peer
        self._metadata = metadata

    def peer(self) -> str:
        return self._peer

    def invocation_metadata(self) -> Any:
        return self._metadata


def test_the_member_takes_a_forwarded_name_only_with_the_secret() -> None:
    member = PeerIdentities(forward_secret="s3cret")
    vouched = [(FORWARDED_CN_METADATA, "root"), (FORWARDED_SECRET_METADATA, "s3cret")]
    assert member.common_name_of(Call("unix:", vouched)) == "root"
    assert member.common_name_of(Call("unix:", [(FORWARDED_CN_METADATA, "root")])) == ""
    forged = [(FORWARDED_CN_METADATA, "root"), (FORWARDED_SECRET_METADATA, "guess")]
    assert member.common_name_of(Call("unix:", forged)) == ""
    # Without --workers there is no secret: nothing forwarded is believed.
    assert PeerIdentities().common_name_of(Call("unix:", vouched)) == ""


def test_the_front_end_drops_a_clients_own_claim_and_adds_what_it_verified() -> None:
    front_end = PeerIdentities()
    address = front_end.new_address()
    front_end.add(address, "alice")
    identity = certificate_identity(front_end, "s3cret")
    claims = [("token", "t"), (FORWARDED_CN_METADATA, "root"), (FORWARDED_SECRET_METADATA, "guess")]
    sent = forwarded_metadata(Call(f"unix-abstract:{address}", claims), identity)
    assert sent == (("token", "t"), (FORWARDED_CN_METADATA, "alice"), (FORWARDED_SECRET_METADATA, "s3cret"))
    # A connection without a verified certificate names nobody, whatever it claims.
    assert forwarded_metadata(Call("unix-abstract:other", claims), identity) == (("token", "t"),)
