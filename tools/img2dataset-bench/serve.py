#!/usr/bin/env python3
"""Loopback-only static file server for the benchmark: `python -m http.server` with a
deep listen backlog.

Usage: serve.py --dir DIR [--port 0] [--max-seconds 900]
Binds 127.0.0.1 only. Prints "PORT <n>" on stdout once listening; exits by itself after
--max-seconds. Same handler as `python3 -m http.server` (SimpleHTTPRequestHandler on a
ThreadingHTTPServer, HTTP/1.0, one connection per request); the only change is
request_queue_size: the stock server listens with a backlog of 5, so 64 concurrent
connects on a busy 2-core box overflow it, the kernel drops SYNs, and clients see
1 s / 3 s / 7 s SYN-retransmit stalls and 10 s "timed out" failures that measure the
server, not the client.
"""
import argparse
import functools
import http.server
import sys
import threading


class Server(http.server.ThreadingHTTPServer):
    request_queue_size = 1024
    daemon_threads = True


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # per-request logging costs server CPU
        pass


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--max-seconds", type=float, default=900)
    a = p.parse_args()
    handler = functools.partial(QuietHandler, directory=a.dir)
    with Server(("127.0.0.1", a.port), handler) as srv:
        print(f"PORT {srv.server_address[1]}", flush=True)
        threading.Timer(a.max_seconds, srv.shutdown).start()
        srv.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
