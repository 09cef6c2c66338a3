#!/usr/bin/env python3
"""compose/smtp-sink.py: the local SMTP sink. Every message it accepts becomes one file in a
Maildir (DIR/new/), with aiosmtpd's X-Peer, X-MailFrom and X-RcptTo headers added.

    smtp-sink.py --maildir DIR [--host 127.0.0.1] [--port 2525] [--exit-with-parent]

It prints one line, "smtp-sink listening on HOST:PORT", once the socket is bound; with --port 0
the system picks a free port, and that line says which (the test harness reads it, so parallel
tests never race for a port). --exit-with-parent makes it exit when the process that started
it dies, so a test killed with SIGKILL leaves no sink behind.

Like the payment gateway simulator, it can be told to misbehave, per recipient address:
    reject-...@any   RCPT answered 550 5.1.1 (a permanent refusal)
    defer-...@any    RCPT answered 451 4.3.0 (try again later)
Everything else is accepted.

Needs aiosmtpd (Debian: python3-aiosmtpd, which installs for /usr/bin/python3; compose/lib.sh
install_smtp_sink). SIGTERM and SIGINT stop it cleanly; Maildir writes are atomic (tmp/, then
a rename into new/), so a reader never sees half a message.
"""

import argparse
import asyncio
import os
import signal
import sys

from aiosmtpd.handlers import Mailbox
from aiosmtpd.smtp import SMTP


class Sink(Mailbox):
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@", 1)[0].lower()
        if local.startswith("reject-"):
            return "550 5.1.1 Mailbox unavailable (smtp-sink: reject-* address)"
        if local.startswith("defer-"):
            return "451 4.3.0 Try again later (smtp-sink: defer-* address)"
        envelope.rcpt_tos.append(address)
        return "250 OK"


async def watch_parent(parent: int, stop: asyncio.Event) -> None:
    while os.getppid() == parent:
        await asyncio.sleep(0.5)
    stop.set()


async def main() -> None:
    parser = argparse.ArgumentParser(description="Local SMTP sink writing a Maildir.")
    parser.add_argument("--maildir", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2525)
    parser.add_argument("--exit-with-parent", action="store_true")
    args = parser.parse_args()

    handler = Sink(args.maildir)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="smtp-sink", enable_SMTPUTF8=True),
        host=args.host,
        port=args.port,
    )
    host, port = server.sockets[0].getsockname()[:2]
    print(f"smtp-sink listening on {host}:{port}, maildir {args.maildir}", flush=True)

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.exit_with_parent:
        asyncio.ensure_future(watch_parent(os.getppid(), stop))
    await stop.wait()
    server.close()
    await server.wait_closed()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except OSError as error:  # the port is taken, the directory is not writable, ...
        print(f"smtp-sink: {error}", file=sys.stderr, flush=True)
        sys.exit(1)
