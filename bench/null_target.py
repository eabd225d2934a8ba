"""A null DynamoDB endpoint for benchmarks: answers every request at once with HTTP 200 and ``{}``.

It stores nothing and checks nothing: a TransactWriteItems "succeeds", a DescribeTable returns an
empty document. It exists to measure the record processor's own capacity (decode, plan, request
building, signing, HTTP) without an emulator's cost per request. The benchmark adds its simulated
round trip on the client side, as for every other target. Never a substitute for a real table.

Run: ``python -m bench.null_target --port N`` (127.0.0.1 only; prints ``ready`` on stdout when listening).
"""

from __future__ import annotations

import argparse
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BODY = b"{}"


class NullHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as botocore's connection pool expects

    def do_POST(self) -> None:  # noqa: N802 - the http.server naming convention
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-amz-json-1.0")
        self.send_header("Content-Length", str(len(BODY)))
        self.send_header("x-amzn-RequestId", "null-target")
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - signature of the base class
        return  # one line per request would cost more than the answer


def serve(port: int) -> None:
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
    serve(parser.parse_args(argv).port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
