#!/usr/bin/env python3
"""compose/kafka/latency-proxy.py: a TCP proxy that can delay what it forwards.

    latency-proxy.py --listen HOST:PORT --upstream HOST:PORT --control FILE

compose/kafka/cluster runs one in front of each broker's client listener, inside the broker's
network namespace, so that latency between the services and the brokers can be switched on
and off (`compose/kafka/cluster delay`) without touching the traffic between the brokers. The
kernel of the machines this project runs on has no `netem` queueing discipline, which would
be the usual way (docs/local-stack.md).

While FILE holds "DELAY_MS JITTER_MS", every chunk read from either side of a connection is
written to the other side DELAY +- JITTER milliseconds later (uniformly drawn), and never
before the chunk ahead of it: the byte order of the stream is kept, as netem with a FIFO child
queue keeps it. One direction's delay; a round trip pays it twice. FILE missing or empty: no
delay. FILE is looked at again at most once a second.

A connection whose other side cannot be reached, resets or closes is closed on both sides, so
that a client sees a dead broker as dead. Standard library only (Python 3.8 or newer).
"""

import argparse
import asyncio
import os
import random
import signal
import sys
import time

CHUNK = 64 * 1024
# Chunks held per direction before the reader waits: the TCP window pushes back beyond it.
QUEUED = 256


class Control:
    """The delay FILE says, as (delay, jitter) in seconds, re-read at most once a second."""

    def __init__(self, path):
        self.path = path
        self.checked = float("-inf")
        self.stamp = None
        self.value = (0.0, 0.0)

    def current(self):
        now = time.monotonic()
        if now - self.checked < 1.0:
            return self.value
        self.checked = now
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            self.stamp, self.value = None, (0.0, 0.0)
            return self.value
        except OSError:
            return self.value
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self.stamp:
            self.stamp = stamp
            try:
                with open(self.path, encoding="ascii") as file:
                    words = file.read().split()
                delay = float(words[0]) / 1000 if words else 0.0
                jitter = float(words[1]) / 1000 if len(words) > 1 else 0.0
                self.value = (max(delay, 0.0), max(min(jitter, delay), 0.0))
            except (OSError, ValueError):
                print(f"latency-proxy: cannot read {self.path}; keeping {self.value}",
                      file=sys.stderr, flush=True)
        return self.value


async def pump(reader, writer, control):
    """Copies reader to writer, each chunk delayed as the control says; returns at EOF."""
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue(QUEUED)

    async def send():
        while True:
            item = await queue.get()
            if item is None:
                return
            due, data = item
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()

    sender = asyncio.ensure_future(send())
    last_due = 0.0
    try:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                break
            delay, jitter = control.current()
            due = 0.0
            if delay > 0 or last_due > loop.time():
                due = max(loop.time() + delay + random.uniform(-jitter, jitter), last_due)
            last_due = due
            await queue.put((due, data))
            if sender.done():
                break
    finally:
        if not sender.done():
            try:
                queue.put_nowait(None)
            except asyncio.QueueFull:
                sender.cancel()
    await sender


def close(writer):
    transport = writer.transport
    if not transport.is_closing():
        transport.abort()


async def handle(client_reader, client_writer, upstream, control):
    host, port = upstream
    try:
        upstream_reader, upstream_writer = await asyncio.open_connection(host, port)
    except OSError:
        close(client_writer)
        return
    tasks = [
        asyncio.ensure_future(pump(client_reader, upstream_writer, control)),
        asyncio.ensure_future(pump(upstream_reader, client_writer, control)),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        close(client_writer)
        close(upstream_writer)


def address(text):
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host, int(port)


async def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", type=address, required=True)
    parser.add_argument("--upstream", type=address, required=True)
    parser.add_argument("--control", required=True)
    args = parser.parse_args()
    control = Control(args.control)
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, args.upstream, control),
        args.listen[0], args.listen[1], reuse_address=True)
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.cancel)
    print(f"latency-proxy: {args.listen[0]}:{args.listen[1]} -> "
          f"{args.upstream[0]}:{args.upstream[1]} (control {args.control})", flush=True)
    async with server:
        try:
            await stop
        except asyncio.CancelledError:
            pass


if __name__ == "__main__":
    asyncio.run(main())
