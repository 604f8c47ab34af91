#!/usr/bin/env python3
"""Event-driven app server for the fault and load tests (one process, epoll,
no thread per connection, so it can hold tens of thousands of connections
without spending the pid budget).

    python3 tests/soak/echo_server.py [--mode echo|stall|source] [--port N]

Prints "port=N" once listening, then serves until SIGTERM/SIGINT (exit 0).
On SIGUSR1 it prints "stats open=N accepted=N" (open connections right now).

Modes:
  echo    echo every byte; on end of stream, write what is queued, then close.
  stall   accept and never read nor answer (the peer's data piles up in the
          kernel and, through the tunnel, in front of it).
  source  read one line "N SEED\\n", then send faultlib.source_bytes(N, SEED)
          (a repeated pseudo-random block, cheap for gigabytes), then close
          once the peer has closed its side.
"""
import argparse
import errno
import os
import select
import signal
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import faultlib  # noqa: E402

CHUNK = 256 * 1024
MAX_QUEUE = 4 << 20      # echo: stop reading a peer with this much queued


class Conn:
    __slots__ = ("sock", "out", "eof", "line", "left", "block", "off", "sent_all")

    def __init__(self, sock):
        self.sock = sock
        self.out = bytearray()
        self.eof = False
        self.line = b""
        self.left = -1          # source: bytes still to send (-1: no request yet)
        self.block = None
        self.off = 0
        self.sent_all = False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", default="echo", choices=("echo", "stall", "source"))
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--host", default="127.0.0.1")
    args = ap.parse_args()

    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((args.host, args.port))
    lsock.listen(4096)
    lsock.setblocking(False)
    ep = select.epoll()
    ep.register(lsock.fileno(), select.EPOLLIN)
    conns = {}
    state = {"stop": False, "stats": False, "accepted": 0}

    def on_term(signum, frame):
        state["stop"] = True

    def on_usr1(signum, frame):
        state["stats"] = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGUSR1, on_usr1)
    print("port=%d mode=%s" % (lsock.getsockname()[1], args.mode), flush=True)

    def drop(fd):
        c = conns.pop(fd, None)
        if c is None:
            return
        try:
            ep.unregister(fd)
        except OSError:
            pass
        c.sock.close()

    def want(fd, c):
        ev = 0
        if args.mode == "stall":
            ev = 0
        elif args.mode == "echo":
            if not c.eof and len(c.out) < MAX_QUEUE:
                ev |= select.EPOLLIN
            if c.out:
                ev |= select.EPOLLOUT
        else:
            if c.left < 0 or c.sent_all:
                ev |= select.EPOLLIN
            elif c.left > 0:
                ev |= select.EPOLLOUT
        ep.modify(fd, ev | select.EPOLLRDHUP if args.mode == "stall" else ev)

    while not state["stop"]:
        if state["stats"]:
            state["stats"] = False
            print("stats open=%d accepted=%d" % (len(conns), state["accepted"]), flush=True)
        try:
            events = ep.poll(0.5)
        except InterruptedError:
            continue
        for fd, ev in events:
            if fd == lsock.fileno():
                for _ in range(256):
                    try:
                        s, _ = lsock.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError as e:
                        if e.errno in (errno.EMFILE, errno.ENFILE):
                            print("accept: %s" % e, flush=True)
                            break
                        continue
                    s.setblocking(False)
                    state["accepted"] += 1
                    c = Conn(s)
                    conns[s.fileno()] = c
                    ep.register(s.fileno(), 0)
                    want(s.fileno(), c)
                continue
            c = conns.get(fd)
            if c is None:
                continue
            try:
                if args.mode == "stall":
                    # Only notice that the peer went away; never read.
                    if ev & (select.EPOLLHUP | select.EPOLLERR | select.EPOLLRDHUP):
                        drop(fd)
                    continue
                if args.mode == "echo":
                    if ev & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR) and not c.eof:
                        data = c.sock.recv(CHUNK)
                        if data:
                            c.out += data
                        else:
                            c.eof = True
                    if c.out:
                        try:
                            n = c.sock.send(c.out)
                            del c.out[:n]
                        except BlockingIOError:
                            pass
                    if c.eof and not c.out:
                        drop(fd)
                        continue
                    want(fd, c)
                    continue
                # source
                if c.left < 0:
                    data = c.sock.recv(4096)
                    if not data:
                        drop(fd)
                        continue
                    c.line += data
                    if b"\n" in c.line:
                        n, seed = c.line.split(b"\n", 1)[0].split()
                        c.left = int(n)
                        c.block = faultlib.source_block(int(seed))
                        c.off = 0
                elif c.left > 0:
                    while c.left > 0:
                        k = min(c.left, CHUNK, len(c.block) - c.off)
                        try:
                            n = c.sock.send(memoryview(c.block)[c.off:c.off + k])
                        except BlockingIOError:
                            break
                        c.left -= n
                        c.off = (c.off + n) % len(c.block)
                    if c.left == 0:
                        c.sock.shutdown(socket.SHUT_WR)
                        c.sent_all = True
                else:
                    # Sent everything: wait for the peer to close.
                    if not c.sock.recv(CHUNK):
                        drop(fd)
                        continue
                want(fd, c)
            except OSError:
                drop(fd)
    for fd in list(conns):
        drop(fd)
    lsock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
