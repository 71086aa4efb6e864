"""Shards in object storage (``s3://``, ``gs://``, ``hf://``) and over http(s): one opener that survives faults.

Object stores are read through fsspec (s3fs, gcsfs, huggingface_hub's ``HfFileSystem``): one interface for
every store, the one Hugging Face ``datasets`` and Lightning use, with each store's own credential chain.
http(s) keeps the standard library (no extra dependency for a plain URL). Both go through ``RetryingReader``:

* a read that fails transiently (connection reset or refused, timeout, 5xx, throttling, a body cut short)
  is retried after an exponential backoff with full jitter, and resumes with a ranged request at the byte
  offset already consumed, so the tar stream above it sees every byte exactly once, in order;
* the retries of one stall stop after ``retry_deadline_s`` seconds without progress: the run stops with one
  line naming the shard and the last error (``StoreError``), never by counting its samples as lost;
* a refused credential is one line naming the store (``CredentialError``, exit 2); the secret is never
  printed, because it is never in our hands: credentials come only from the store's standard chain
  (environment, profile, instance role) and, for S3-compatible stores, ``AWS_ENDPOINT_URL`` or
  ``data.endpoint_url`` (path-style addressing).

The clients are cached per process id: each loader worker opens its own after the fork.
"""

from __future__ import annotations

import errno
import http.client
import os
import random
import re
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from typing import Callable, Optional

from toolkit.errors import DataError, UsageError
from toolkit.redaction import check_no_credentials, redact_text

OBJECT_STORES = {"s3": ("s3fs", "s3"), "gs": ("gcsfs", "gcs"), "hf": ("huggingface_hub", None)}  # module, extra
HTTP_SCHEMES = ("http", "https")
URL_TIMEOUT_S = 60
BLOCK_BYTES = 8 << 20  # one ranged GET of an object store: memory per open shard, requests per shard
THROTTLED = (
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestLimitExceeded",
    "TooManyRequests",
)
TRANSIENT_ERRNOS = {errno.EBUSY, errno.ECONNRESET, errno.ECONNREFUSED, errno.ETIMEDOUT, errno.EPIPE, errno.ECONNABORTED}
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


@dataclass(frozen=True)
class StoreOptions:
    """How remote shards are reached: picklable, so loader workers started by spawn get it too."""

    endpoint_url: Optional[str] = None  # S3-compatible store (MinIO, SeaweedFS, R2...); else AWS_ENDPOINT_URL
    retry_deadline_s: float = 120.0  # give up after this long without a byte of progress
    backoff_s: float = 0.2  # first backoff; doubles per retry, capped at backoff_cap_s, full jitter
    backoff_cap_s: float = 10.0
    block_bytes: int = BLOCK_BYTES  # an object store's ranged GET (data.read_block_kib)


_options = StoreOptions()
_clients: dict = {}
_jitter = random.Random()  # its own generator: the backoff must not move the seeded training RNGs


def configure(options: StoreOptions) -> None:
    """Set this process's options. Clients stay cached (keyed by pid and endpoint): a forked worker must keep
    its parent's client referenced, since collecting it would run its close on the parent's event loop."""
    global _options
    _options = options


def current() -> StoreOptions:
    return _options


def options_from(data_cfg) -> StoreOptions:
    """The store options a ``data`` config section asks for (checked: no credentials in the endpoint)."""
    endpoint = getattr(data_cfg, "endpoint_url", None)
    if endpoint:
        check_no_credentials(endpoint, "data.endpoint_url")
        if not endpoint.startswith(("http://", "https://")):
            raise UsageError(f"data.endpoint_url={endpoint!r} must be an http(s) URL, e.g. http://127.0.0.1:8333")
    deadline = float(getattr(data_cfg, "retry_deadline_s", StoreOptions.retry_deadline_s))
    block = int(getattr(data_cfg, "read_block_kib", BLOCK_BYTES >> 10)) << 10
    return replace(StoreOptions(), endpoint_url=endpoint or None, retry_deadline_s=deadline, block_bytes=block)


# ---------------------------------------------------------------------------------------------
# Which store a location names


def scheme_of(url: str) -> str:
    """``local``, ``pipe``, ``http``, ``https``, ``s3``, ``gs`` or ``hf``; any other ``scheme://`` is refused."""
    if url.startswith("pipe:"):
        return "pipe"
    match = _SCHEME.match(url)
    if match is None:
        return "local"
    scheme = match.group(1).lower()
    if scheme in HTTP_SCHEMES or scheme in OBJECT_STORES:
        return scheme
    raise UsageError(
        f"{redact_text(url)}: {scheme}:// is not a shard location this toolkit reads; use a local folder, "
        "s3://BUCKET/PREFIX, gs://BUCKET/PREFIX, hf://datasets/ORG/NAME/PATH, http(s)://... or pipe:COMMAND"
    )


def is_store(url: str) -> bool:
    """An object store read through fsspec (s3, gs, hf)."""
    return scheme_of(url) in OBJECT_STORES


def store_name(url: str) -> str:
    """``s3://bucket`` of ``s3://bucket/prefix/x.tar``: what a message names (never a credential)."""
    scheme = scheme_of(url)
    rest = url.split("://", 1)[1] if "://" in url else url
    return f"{scheme}://{rest.split('/', 1)[0].rpartition('@')[2]}"


# ---------------------------------------------------------------------------------------------
# Clients (one per process and store)


def filesystem(url: str):
    """The fsspec filesystem of ``url``'s store, opened by this process (a forked worker opens its own)."""
    scheme = scheme_of(url)
    endpoint = _endpoint() if scheme == "s3" else None
    key = (os.getpid(), scheme, endpoint)
    if key not in _clients:
        _clients[key] = _open_filesystem(scheme, endpoint)
    return _clients[key]


def _endpoint() -> Optional[str]:
    return _options.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _open_filesystem(scheme: str, endpoint: Optional[str]):
    module, extra = OBJECT_STORES[scheme]
    try:
        import fsspec

        __import__(module)
    except ImportError:
        hint = f'pip install -e ".[{extra}]"' if extra else "pip install huggingface_hub"
        raise UsageError(f"{scheme}:// shards need {module}, which is not installed: {hint}") from None
    if scheme == "s3":  # retries are ours (counted, resumed at the offset): botocore's and s3fs's are off
        config = {"retries": {"total_max_attempts": 1, "mode": "standard"}, "connect_timeout": 10, "read_timeout": 60}
        if endpoint:
            config["s3"] = {"addressing_style": "path"}
        fs = fsspec.filesystem("s3", endpoint_url=endpoint, config_kwargs=config, skip_instance_cache=True)
        fs.retries = 1
        return fs
    return fsspec.filesystem(scheme, skip_instance_cache=True)


def fs_path(url: str) -> str:
    """The path fsspec's filesystem takes: the URL without its scheme."""
    return url.split("://", 1)[1]


# ---------------------------------------------------------------------------------------------
# Errors


class StoreError(DataError):
    """The retries of a remote read are spent: the run stops, naming the shard and the last error."""


class CredentialError(UsageError):
    """The store refused the credentials from its chain (exit 2; the message never holds the secret)."""


class BodyCut(ConnectionError):
    """The store ended a body before the length it announced."""


def _chain(err: BaseException):
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def is_transient(err: BaseException) -> bool:
    """A fault a retry can cure: reset, refused, timeout, 5xx, throttling, a body cut midway."""
    for e in _chain(err):
        if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
            return False
        if isinstance(e, urllib.error.HTTPError):
            return e.code >= 500 or e.code in (408, 429)
        if isinstance(e, (ConnectionError, TimeoutError, socket.timeout, http.client.HTTPException)):
            return True
        if isinstance(e, OSError) and e.errno in TRANSIENT_ERRNOS:
            return True
        response = getattr(e, "response", None)  # botocore ClientError
        if isinstance(response, dict):
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            code = response.get("Error", {}).get("Code", "")
            return status >= 500 or status == 429 or code in THROTTLED
        status = _status_of(e)  # huggingface_hub's HfHubHTTPError (.response.status_code), gcsfs's HttpError (.code)
        if status is not None:
            return status >= 500 or status in (408, 429)
        name = type(e).__name__  # aiohttp/botocore transport errors, without importing either
        if name in ("ClientPayloadError", "ServerDisconnectedError", "ClientConnectorError", "ClientOSError"):
            return True
        if name.endswith(("ConnectionError", "ConnectionClosedError", "TimeoutError", "ReadTimeoutError")):
            return True
    return False


def _status_of(err: BaseException) -> Optional[int]:
    """The HTTP status an error of another store's library carries, if any."""
    status = getattr(getattr(err, "response", None), "status_code", None)
    if status is None and not isinstance(err, OSError):
        status = getattr(err, "code", None)
    return status if isinstance(status, int) and 100 <= status < 600 else None


def is_denied(err: BaseException) -> bool:
    for e in _chain(err):
        if isinstance(e, PermissionError) or (isinstance(e, urllib.error.HTTPError) and e.code in (401, 403)):
            return True
        if not isinstance(e, urllib.error.HTTPError) and _status_of(e) in (401, 403):
            return True
    return False


def describe(err: BaseException) -> str:
    return redact_text(f"{type(err).__name__}: {err}".splitlines()[0][:300])


def credential_error(url: str, err: BaseException) -> CredentialError:
    return CredentialError(
        f"{store_name(url)} refused the credentials ({describe(err)}); they come from the store's standard chain: "
        "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or the instance role for s3:// (plus AWS_ENDPOINT_URL "
        "or data.endpoint_url for an S3-compatible store), GOOGLE_APPLICATION_CREDENTIALS for gs://, HF_TOKEN for hf://"
    )


# ---------------------------------------------------------------------------------------------
# Reading with retries


class _Blocks:
    """An object read as ranged GETs of ``block_bytes`` from ``offset``: streamed, never downloaded whole."""

    def __init__(self, fs, path: str, offset: int, size: int) -> None:
        self.fs, self.path, self.offset, self.size = fs, path, offset, size
        self.buffer, self.block = b"", _options.block_bytes

    def read(self, n: int) -> bytes:
        if not self.buffer and self.offset < self.size:
            end = min(self.offset + self.block, self.size)
            self.buffer = self.fs.cat_file(self.path, start=self.offset, end=end)
            self.offset += len(self.buffer)
            if not self.buffer:
                raise BodyCut(f"empty range at byte {self.offset} of {self.size}")
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def close(self) -> None:
        self.buffer = b""


def _open_store(url: str, offset: int, size: Optional[int]) -> tuple[object, int]:
    fs = filesystem(url)
    path = fs_path(url)
    size = int(fs.size(path)) if size is None else size
    return _Blocks(fs, path, offset, size), size


def _open_http(url: str, offset: int, size: Optional[int]) -> tuple[object, Optional[int]]:
    """A GET from ``offset`` (``Range``); a server that ignores the range has the skipped bytes read and dropped."""
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    response = urllib.request.urlopen(request, timeout=URL_TIMEOUT_S)
    if offset and response.status != 206:
        left = offset
        while left:
            chunk = response.read(min(left, 1 << 20))
            if not chunk:
                raise BodyCut(f"the body ended before byte {offset}")
            left -= len(chunk)
    if size is None:
        size = _http_size(response, offset)
    return response, size


def _http_size(response, offset: int) -> Optional[int]:
    """The whole object's length: Content-Range's total, else Content-Length (plus the offset of a 206)."""
    total = (response.headers.get("Content-Range") or "").rpartition("/")[2]
    if total.isdigit():
        return int(total)
    length = response.headers.get("Content-Length")
    if length is None or not length.isdigit():
        return None  # chunked: the end is wherever the body ends
    return int(length) + (offset if response.status == 206 else 0)


def backoff(url: str, err: Exception, retries: int, since: float, options: StoreOptions, where: str = "") -> None:
    """Sleep before the next try, or raise: at once for a lasting error, after the deadline for a transient one.

    Exponential backoff with full jitter (a random wait up to the doubled cap), so many workers that failed
    together do not come back together."""
    if is_denied(err):
        raise credential_error(url, err) from None
    if not is_transient(err):
        raise err
    stalled = time.monotonic() - since
    if stalled >= options.retry_deadline_s:
        raise StoreError(
            f"{redact_text(url)}: gave up {where}after {retries} retries over {stalled:.0f} s without progress "
            f"(data.retry_deadline_s={options.retry_deadline_s:g}); last error {describe(err)}"
        ) from None
    cap = min(options.backoff_cap_s, options.backoff_s * 2 ** min(retries, 30))
    time.sleep(min(_jitter.uniform(0, cap), options.retry_deadline_s - stalled))


def with_retries(url: str, call: Callable[[], object]) -> object:
    """``call()`` (one request to the store about ``url``), retried like a read."""
    since, retries = time.monotonic(), 0
    while True:
        try:
            return call()
        except Exception as err:
            backoff(url, err, retries, since, _options)
            retries += 1


class RetryingReader:
    """A read-only stream over a remote object that retries transient faults and resumes at the byte offset.

    ``on_retry`` is called once per retry (the loaders count them into the epoch line and the metrics).
    """

    def __init__(self, url: str, on_retry: Optional[Callable[[], None]] = None) -> None:
        self.url, self.on_retry = url, on_retry
        self.opener = _open_http if scheme_of(url) in HTTP_SCHEMES else _open_store
        self.offset, self.size, self.stream = 0, None, None
        self.retries, self.stalled_since = 0, None
        self.options = _options

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (all that is left when ``n`` < 0); fewer only at the end of the object."""
        parts, want = [], n if n is not None and n >= 0 else None
        while want is None or want > 0:
            chunk = self._read_some(1 << 20 if want is None else want)
            if not chunk:
                break
            parts.append(chunk)
            want = None if want is None else want - len(chunk)
        return b"".join(parts)

    def _read_some(self, n: int) -> bytes:
        while True:
            try:
                if self.stream is None:
                    self.stream, self.size = self.opener(self.url, self.offset, self.size)
                data = self.stream.read(n)
                if not data and self.size is not None and self.offset < self.size:
                    raise BodyCut(f"the body ended at byte {self.offset} of {self.size}")
                self.offset += len(data)
                self.stalled_since = None
                return data
            except Exception as err:
                self._drop_stream()
                self._after_failure(err)

    def _after_failure(self, err: Exception) -> None:
        self.stalled_since = self.stalled_since or time.monotonic()
        backoff(self.url, err, self.retries, self.stalled_since, self.options, f"at byte {self.offset} ")
        self.retries += 1
        if self.on_retry is not None:
            self.on_retry()

    def _drop_stream(self) -> None:
        if self.stream is not None:
            try:
                self.stream.close()
            except Exception:  # a reset connection may fail to close; it is dropped either way
                pass
            self.stream = None

    def close(self) -> None:
        self._drop_stream()

    def __enter__(self) -> "RetryingReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_bytes(url: str) -> bytes:
    """A whole small object (``info.json``) with the same retries; a refused credential is one line, exit 2."""
    with RetryingReader(url) as reader:
        return reader.read()


# ---------------------------------------------------------------------------------------------
# Writing (make_shards --out s3://...)


def list_names(url: str) -> list[str]:
    """File names directly under the prefix ``url`` (none when it does not exist yet)."""
    fs, prefix = filesystem(url), fs_path(url).rstrip("/")
    try:
        entries = with_retries(url, lambda: fs.ls(prefix, detail=True, refresh=True))
    except FileNotFoundError:
        return []
    return sorted(e["name"].rstrip("/").rpartition("/")[2] for e in entries if e.get("type") != "directory")


def upload(local_path: str, url: str) -> None:
    fs = filesystem(url)
    try:
        with_retries(url, lambda: fs.put_file(local_path, fs_path(url)))
    except FileNotFoundError:
        raise UsageError(f"{store_name(url)} does not exist: create the bucket first, then pack into it") from None


def remove(url: str) -> None:
    fs = filesystem(url)
    try:
        with_retries(url, lambda: fs.rm_file(fs_path(url)))
    except FileNotFoundError:
        pass
