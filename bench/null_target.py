"""A null DynamoDB endpoint for benchmarks: answers every request at once with HTTP 200 and ``{}``.

It stores nothing and checks nothing: a TransactWriteItems "succeeds", a DescribeTable returns an
empty document. It exists to measure the record processor's own capacity (decode, plan, request
building, signing, HTTP) without an emulator's cost per request. In-process benchmarks add their
simulated round trip on the client side; a benchmark that drives a separate process (bench/catchup)
asks the server to wait ``--delay-ms`` before each answer instead (a sleeping thread per request:
concurrent requests overlap, as on a network). Never a substitute for a real table.

Run: ``python -m bench.null_target --port N [--delay-ms 30]`` (127.0.0.1 only; prints ``ready`` on stdout
when listening).
"""

from __future__ import annotations

import argparse
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BODY = b"{}"


class NullHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as botocore's connection pool expects
    # the answer is written in two sends (headers, body): without TCP_NODELAY the body waits for the
    # client's delayed ACK of the headers (~40 ms on Linux), a stall no DynamoDB endpoint has
    disable_nagle_algorithm = True
    delay_s = 0.0  # the simulated round trip, set by serve()

    def do_POST(self) -> None:  # noqa: N802 - the http.server naming convention
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        if self.delay_s:
            time.sleep(self.delay_s)  # the simulated network: this request's thread waits, no CPU
        self.send_response(200)
        self.send_header("Content-Type", "application/x-amz-json-1.0")
        self.send_header("Content-Length", str(len(BODY)))
        self.send_header("x-amzn-RequestId", "null-target")
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - signature of the base class
        return  # one line per request would cost more than the answer


def serve(port: int, delay_ms: float = 0.0) -> None:
    NullHandler.delay_s = max(0.0, delay_ms) / 1000.0
    server = ThreadingHTTPServer(("127.0.0.1", port), NullHandler)
    server.daemon_threads = True
    print("ready", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="wait this long before each answer")
    args = parser.parse_args(argv)
    serve(args.port, args.delay_ms)
    return 0


if __name__ == "__main__":
    sys.exit(main())
