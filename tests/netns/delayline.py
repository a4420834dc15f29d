#!/usr/bin/env python3
"""A userspace delay line between two TUN devices, for a real round-trip time without netem.

    delayline.py --outer NAME --inner NAME --rtt-ms MS

Creates two TUN devices (IFF_TUN | IFF_NO_PI) and prints {"ready": true} on stdout; the caller
then moves `inner` into the lab namespace and routes a lab prefix through `outer`. Every packet
read from one device is written to the other after RTT/2, so the TCP handshake, TLS flights and
DNS queries all pay the full round trip. SIGUSR1 switches the delay off, SIGUSR2 back on. The
devices vanish when this process exits.
"""
import argparse
import fcntl
import heapq
import itertools
import json
import os
import select
import signal
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


def open_tun(name):
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--outer", required=True)
    p.add_argument("--inner", required=True)
    p.add_argument("--rtt-ms", type=float, required=True)
    a = p.parse_args()
    outer, inner = open_tun(a.outer), open_tun(a.inner)
    other = {outer: inner, inner: outer}
    one_way = {"s": a.rtt_ms / 2000.0}
    signal.signal(signal.SIGUSR1, lambda *_: one_way.update(s=0.0))
    signal.signal(signal.SIGUSR2, lambda *_: one_way.update(s=a.rtt_ms / 2000.0))
    print(json.dumps({"ready": True}), flush=True)
    held = []  # (release time, sequence, destination fd, packet)
    order = itertools.count()
    while True:
        now = time.monotonic()
        while held and held[0][0] <= now:
            _, _, fd, packet = heapq.heappop(held)
            try:
                os.write(fd, packet)
            except OSError:
                pass  # device down for a moment: the packet is lost, as on a wire
        wait = max(0.0, held[0][0] - now) if held else 1.0
        try:
            ready, _, _ = select.select([outer, inner], [], [], wait)
        except InterruptedError:
            continue
        for fd in ready:
            for _ in range(64):
                try:
                    packet = os.read(fd, 65536)
                except BlockingIOError:
                    break
                except OSError:
                    break
                heapq.heappush(held, (time.monotonic() + one_way["s"], next(order), other[fd], packet))


if __name__ == "__main__":
    sys.exit(main())
