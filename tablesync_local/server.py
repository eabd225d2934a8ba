"""The emulator process: moto's WSGI app behind hypercorn, HTTP/1.1 and h2c on one port.

Why hypercorn: the KCL's Kinesis client (Netty) only speaks HTTP/2, which for ``http://``
means h2c with prior knowledge; ``moto_server`` (werkzeug) answers that with 505.
hypercorn recognises the HTTP/2 connection preface on a plain socket and switches the
connection to HTTP/2, so boto3 (HTTP/1.1) and the KCL (h2c) share one port and one
in-memory moto state.

What the WSGI layer (:class:`EmulatorApp`) adds in front of moto, and why:

1. ``Host``: an HTTP/2 request carries ``:authority`` instead of ``Host`` and hypercorn
   drops pseudo-headers before building the WSGI environ, so moto would see no host;
   the socket's own address is filled in (moto then routes on the signed
   ``Authorization`` header / ``X-Amz-Target``, which is what it does for 127.0.0.1
   anyway).
2. ``Content-Length``: HTTP/2 clients may omit it (the DATA frames delimit the body);
   hypercorn has the whole body already, but werkzeug/moto read nothing without a length,
   so moto saw an empty JSON request (checked: "Stream None ... not found"). The length is
   set from the buffered body.
3. One lock around every moto call (:data:`destination.EMULATOR_LOCK`): hypercorn runs
   WSGI calls on a thread pool and moto is not thread-safe (transactions deep-copy
   tables, Kinesis ``put_record`` says so itself). The response body is materialised
   inside the lock and always sent as one chunk, so hypercorn's WSGI adapter always
   sends the response start, even for an empty body.
4. Emulator-only endpoints under ``/_tablesync/`` (JSON in, JSON out)::

     GET  /_tablesync/health                     {"ok": true, "pid": N}
     POST /_tablesync/destination/faults         {"TableName", "Region"?, "Account"?,
                                                  "duplicate_rate"?, "reorder_window"?,
                                                  "reorder_window_ms"?, "scatter_partition_keys"?,
                                                  "drop_oversize"?, "seed"?}  -> the config
     GET  /_tablesync/destination/stats?TableName=T&Region=R  -> counters, incl.
                                                  FailedToReplicateRecordCount
     POST /_tablesync/destination/flush          release records held by reorder windows
     POST /_tablesync/ttl-expire                 {"TableName", "Region"?, "Key"?, "Now"?}
                                                  -> {"Expired": [keys]}: the given key, or
                                                  every item whose TTL attribute is due
     GET  /_tablesync/read-units?TableName=T&Region=R  -> {"ReadUnits": x}: what the table's
                                                  reads were charged (moto_fixes.export)
     POST /_tablesync/reset                      moto reset + destinations forgotten

   ``POST /moto-api/reset`` (moto's own) also forgets the destinations.

Run: ``python -m tablesync_local.server --port 4566`` (logs to stderr).

Profiling: with ``TABLESYNC_SERVER_PROFILE=/some/prefix`` in its environment the server records cProfile
statistics of the moto calls (``/some/prefix.app.prof``, all worker threads, serialised by the lock) and of
the event loop that speaks HTTP (``/some/prefix.loop.prof``), written when it stops, and logs how its CPU
time splits between the two. Read them with ``python -m pstats``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from tablesync_local import destination
from tablesync_local.moto_fixes import export

log = logging.getLogger(__name__)

DEFAULT_REGION = "us-east-1"
PROFILE_ENV = "TABLESYNC_SERVER_PROFILE"
StartResponse = Callable[..., Any]


def install_patches() -> None:
    """Apply the moto fixes (if the module exists), then the destination hooks. Idempotent."""
    try:
        from tablesync_local import moto_fixes
    except ImportError:
        log.warning("tablesync_local.moto_fixes not found: serving unpatched moto")
    else:
        moto_fixes.install()
    destination.install()


class EmulatorApp:
    """WSGI app: moto (all services) plus the ``/_tablesync/`` endpoints (see module doc)."""

    def __init__(self, moto_app: Callable[[dict[str, Any], StartResponse], Iterable[bytes]],
                 profile: cProfile.Profile | None = None) -> None:
        self.moto_app = moto_app
        self.profile = profile
        self.requests = 0
        self.app_cpu_s = 0.0

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith("/_tablesync/"):
            return self._admin(environ, start_response)
        if not environ.get("HTTP_HOST"):
            environ["HTTP_HOST"] = f"{environ.get('SERVER_NAME', '127.0.0.1')}:{environ.get('SERVER_PORT', '')}"
        if not environ.get("CONTENT_LENGTH"):
            raw = environ["wsgi.input"].read()
            environ["wsgi.input"] = io.BytesIO(raw)
            environ["CONTENT_LENGTH"] = str(len(raw))
        captured: list[Any] = []

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            captured[:] = [status, headers]

        with destination.EMULATOR_LOCK:
            cpu0 = time.thread_time()
            if self.profile is not None:
                self.profile.enable()
            try:
                body = self._call_moto(environ, capture)
            finally:
                if self.profile is not None:
                    self.profile.disable()
                self.requests += 1
                self.app_cpu_s += time.thread_time() - cpu0
            if path == "/moto-api/reset" and environ.get("REQUEST_METHOD") == "POST":
                destination.reset()
        start_response(*captured)
        return [body]

    def _call_moto(self, environ: dict[str, Any], capture: StartResponse) -> bytes:
        result = self.moto_app(environ, capture)
        try:
            return b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()

    def _admin(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        route = environ["PATH_INFO"][len("/_tablesync"):]
        try:
            raw = environ["wsgi.input"].read() if method == "POST" else b""
            body: dict[str, Any] = json.loads(raw) if raw.strip() else {}
            query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
            status, payload = self._route(method, route, {**query, **body})
        except (KeyError, TypeError, ValueError) as exc:
            status, payload = "400 Bad Request", {"error": type(exc).__name__, "message": str(exc)}
        except Exception as exc:  # moto errors (table not found...) reported, not crashing
            log.exception("admin %s %s failed", method, route)
            status, payload = "500 Internal Server Error", {"error": type(exc).__name__, "message": str(exc)}
        data = json.dumps(payload).encode()
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
        return [data]

    def _route(self, method: str, route: str, args: dict[str, Any]) -> tuple[str, Any]:
        ok = "200 OK"
        if route == "/health":
            return ok, {"ok": True, "pid": os.getpid()}
        if method == "POST" and route == "/reset":
            from moto.moto_api._internal.models import moto_api_backend

            with destination.EMULATOR_LOCK:

                moto_api_backend.reset()
                destination.reset()
                export.reset_read_units()
            return ok, {"reset": True}
        if method == "POST" and route == "/destination/flush":
            destination.flush()
            return ok, {"flushed": True}
        where = {"region": args.pop("Region", DEFAULT_REGION),
                 "account": args.pop("Account", destination.DEFAULT_ACCOUNT)}
        if method == "POST" and route == "/destination/faults":
            table = args.pop("TableName")
            config = destination.configure_faults(table, **where, **args)
            return ok, {"TableName": table, **config.__dict__}
        if route == "/destination/stats":
            return ok, destination.stats(args["TableName"], **where)
        if route == "/read-units":
            return ok, {"ReadUnits": export.read_units(args["TableName"], where["account"], where["region"])}
        if method == "POST" and route == "/ttl-expire":
            table = args["TableName"]
            if "Key" in args:
                found = destination.expire_item(table, args["Key"], **where)
                return ok, {"Expired": [args["Key"]] if found else []}
            return ok, {"Expired": destination.expire_due(table, now=args.get("Now"), **where)}
        return "404 Not Found", {"error": "NotFound", "message": f"no route {method} {route}"}


def build_app(profile: cProfile.Profile | None = None) -> EmulatorApp:
    """The patched moto app for every service, wrapped (import-time free of side effects)."""
    install_patches()
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    return EmulatorApp(DomainDispatcherApplication(create_backend_app), profile)


def hypercorn_config(host: str, port: int) -> Any:
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.wsgi_max_body_size = 64 * 1024 * 1024
    config.keep_alive_timeout = 75.0
    return config


async def _serve(host: str, port: int, app: EmulatorApp) -> None:
    from hypercorn.asyncio import serve

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("tablesync local stack serving on http://%s:%d (HTTP/1.1 + h2c), pid %d", host, port, os.getpid())
    await serve(app, hypercorn_config(host, port), shutdown_trigger=stop.wait, mode="wsgi")
    log.info("tablesync local stack stopped")


def serve_forever(host: str = "127.0.0.1", port: int = 4566) -> int:
    """Serve until SIGTERM/SIGINT. Returns 0, or 2 when the address cannot be bound."""
    prefix = os.environ.get(PROFILE_ENV)
    app_profile, loop_profile = (cProfile.Profile(), cProfile.Profile()) if prefix else (None, None)
    app = build_app(app_profile)
    cpu0 = time.process_time()
    if loop_profile is not None:
        loop_profile.enable()
    try:
        asyncio.run(_serve(host, port, app))
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", host, port, exc)
        return 2
    finally:
        if loop_profile is not None and app_profile is not None:
            loop_profile.disable()
            app_profile.dump_stats(f"{prefix}.app.prof")
            loop_profile.dump_stats(f"{prefix}.loop.prof")
            log.info("profile statistics in %s.app.prof and %s.loop.prof", prefix, prefix)
        log.info("served %d requests: process CPU %.2f s, of which in moto %.2f s",
                 app.requests, time.process_time() - cpu0, app.app_cpu_s)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tablesync_local.server", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4566)
    parser.add_argument("--log-level", default=os.environ.get("TABLESYNC_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return serve_forever(args.host, args.port)


if __name__ == "__main__":
    sys.exit(main())
