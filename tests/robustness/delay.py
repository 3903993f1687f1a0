"""A userspace delay line for the packets of one network namespace (netem's delay and loss, without sch_netem).

    ip netns exec NS python -m tests.robustness.delay --queue 7 --delay-ms 100 [--loss-pct 10]

Kernels built without ``sch_netem`` (this project's machine: ``tc qdisc add
... netem`` answers "Specified qdisc kind is unknown") cannot add latency with
tc, and none of their other qdiscs delays (tbf and htb shape rate). Netfilter's
NFQUEUE can: the cluster's iptables rules in the AZ's namespace send every
packet leaving or entering its ``eth0`` to a queue, and this program gives each
one its verdict (accept) ``--delay-ms`` after it arrived, in arrival order. With
the rules on both directions a round trip to or from the AZ takes twice that
much longer, whatever the protocol (SYNs, ACKs, keepalives alike), as with netem
on both ends of the link. ``--loss-pct`` drops that share of the packets instead
(at random, seeded), like netem's ``loss``. The rules use ``--queue-bypass``: with this program
gone, packets pass undelayed instead of being dropped.

It prints "ready" once bound, and runs until SIGTERM; then it writes to stderr
how many packets it delayed and dropped and how late it released them (past
their due time: the precision of the injected delay). The cluster runs it with
real-time priority (``chrt``) where it can: netem works in the kernel, which the
machine's load does not starve, and neither should this.
"""

from __future__ import annotations

import argparse
import collections
import random
import select
import signal
import sys
import time
from typing import Any

QUEUE_PACKETS_MAX = 65536  # packets the kernel holds for us (2 x 100 ms at 300K packets/s)


def main(argv: list[str] | None = None) -> int:
    from netfilterqueue import COPY_META, NetfilterQueue  # test-only dependency (.ci/run installs it)

    ap = argparse.ArgumentParser(prog="python -m tests.robustness.delay", description=__doc__)
    ap.add_argument("--queue", type=int, required=True, help="the NFQUEUE number the iptables rules use")
    ap.add_argument("--delay-ms", type=float, default=0.0, help="added to every queued packet")
    ap.add_argument("--loss-pct", type=float, default=0.0, help="share of the queued packets dropped")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    delay_s = args.delay_ms / 1000
    loss = args.loss_pct / 100
    rng = random.Random(args.seed)
    held: collections.deque[tuple[float, Any]] = collections.deque()  # (release time, packet), in arrival order
    stopping = False
    dropped = 0
    late_ms: list[float] = []  # per released packet: how long after its due time

    def hold(pkt: Any) -> None:
        nonlocal dropped
        if loss and rng.random() < loss:
            dropped += 1
            pkt.drop()
        elif delay_s:
            held.append((time.monotonic() + delay_s, pkt))
        else:
            pkt.accept()

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    nfq = NetfilterQueue()
    nfq.bind(args.queue, hold, max_len=QUEUE_PACKETS_MAX, mode=COPY_META)
    fd = nfq.get_fd()
    print("ready", flush=True)
    try:
        while not stopping:
            now = time.monotonic()
            while held and held[0][0] <= now:
                due, pkt = held.popleft()
                pkt.accept()
                late_ms.append((now - due) * 1000)
            timeout_s = max(0.0, held[0][0] - now) if held else 0.5
            try:
                readable, _, _ = select.select([fd], [], [], timeout_s)
            except InterruptedError:
                continue
            if readable:
                nfq.run(block=False)  # every pending packet goes to hold()
    finally:
        for _, pkt in held:  # let what is held go rather than drop it
            pkt.accept()
        nfq.unbind()
    late_ms.sort()
    if late_ms:
        p50, p99 = late_ms[len(late_ms) // 2], late_ms[int(len(late_ms) * 0.99)]
        print(
            f"delayed {len(late_ms)} packets by {args.delay_ms:g} ms, released late by p50 {p50:.1f} ms, "
            f"p99 {p99:.1f} ms, max {late_ms[-1]:.1f} ms; dropped {dropped}",
            file=sys.stderr,
        )
    else:
        print(f"delayed 0 packets; dropped {dropped}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
