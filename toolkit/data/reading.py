"""Reading tars into raw samples (bytes), counting every sample that cannot be used.

Local files open with ``open``, ``pipe:`` commands with webdataset's ``gopen``, and http(s) and
object stores (s3, gs, hf) with ``stores.RetryingReader``, which retries transient faults and resumes
at the byte offset, so a network fault costs time, never samples (the retries are counted in ``Skips``). Members are grouped into
samples with webdataset's key convention (``base_plus_ext``) by our own loop, because it must
count a shard that ends early as lost samples for the rank that owned them, which
``tar_file_expander``'s exception handler cannot tell.
"""

from __future__ import annotations

import contextlib
import logging
import tarfile
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

from PIL import Image
from webdataset.gopen import gopen
from webdataset.tariterators import base_plus_ext

from toolkit.data.locations import Shard, is_local, is_remote
from toolkit.data.stores import CredentialError, RetryingReader, StoreError
from toolkit.data.transforms import decode_jpeg, open_image
from toolkit.errors import DataError
from toolkit.redaction import redact_text

log = logging.getLogger(__name__)

MAX_WARNINGS = 20  # per process; further bad samples are still counted
MAX_MEMBER_BYTES = 64 << 20  # a stored image is ~50 KB; a bigger member is a damaged or hostile shard, never read
MAX_SAMPLE_BYTES = 64 << 20  # all members read for one key together (many members of one key: the same)
# pax and GNU long-name headers: a path of 4,096 bytes plus a few records; larger ones are refused unread
MAX_HEADER_BYTES = 8 << 10
_EXTENDED_HEADER_TYPES = {
    tarfile.XHDTYPE: "pax",
    tarfile.XGLTYPE: "pax global",
    tarfile.SOLARIS_XHDTYPE: "pax",
    tarfile.GNUTYPE_LONGNAME: "GNU long-name",
    tarfile.GNUTYPE_LONGLINK: "GNU long-link",
}
READ_EXTENSIONS = frozenset({"jpg", "cls", "json"})  # what a sample is made of; other members are skipped unread
# A compressed tar (which mode "r|*" would open) can expand a small download into gigabytes per worker:
# shards are plain tar, as make_shards writes them, and a compressed one is refused unread.
COMPRESSION_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}

_warnings_given = 0


class Skips:
    """Counts bad samples (or, in strict mode, stops at the first one).

    ``quiet`` while reading past samples another loader worker or rank owns: their owner counts them.
    """

    def __init__(self, strict: bool):
        self.strict = strict
        self.quiet = False
        self.count = 0
        self.retries = 0  # remote reads retried (transient faults): they cost time, not samples

    def retried(self) -> None:
        self.retries += 1

    def take_retries(self) -> int:
        retries, self.retries = self.retries, 0
        return retries

    def report(self, url: str, key: str, reason: str, n: int = 1) -> None:
        global _warnings_given
        message = redact_text(f"{url}: sample {key}: {reason}")  # a signed URL's token stays out of logs
        if self.strict:
            raise DataError(f"{message} (data.strict=true; set it to false to skip and count bad samples)")
        if self.quiet:
            return
        self.count += n
        _warnings_given += 1
        if _warnings_given <= MAX_WARNINGS:
            log.warning("skipping %d bad sample(s): %s", n, message)
        elif _warnings_given == MAX_WARNINGS + 1:
            log.warning("more bad samples: counted in the skipped totals, no longer warned about one by one")

    def take(self) -> int:
        count, self.count = self.count, 0
        return count


def open_shard(url: str, on_retry: Optional[Callable[[], None]] = None):
    if is_local(url):
        return open(url, "rb")
    if is_remote(url):
        return RetryingReader(url, on_retry)
    return gopen(url, "rb")


@dataclass(frozen=True)
class Limits:
    """What one tar member, and one sample (all members of a key), may put in memory; beyond it the sample
    is skipped and counted, its members unread."""

    member_bytes: int
    sample_bytes: int


def default_limits() -> Limits:
    return Limits(member_bytes=MAX_MEMBER_BYTES, sample_bytes=MAX_SAMPLE_BYTES)


class CompressedShard(tarfile.ReadError):
    """A gzip/bzip2/xz/zstd tar: refused before a byte is decompressed."""


class OversizedHeader(tarfile.ReadError):
    """A pax or GNU long-name header larger than any real one: refused before tarfile reads it."""


class CappedTarInfo(tarfile.TarInfo):
    """tarfile's member header, with pax and GNU long-name/long-link headers capped at ``MAX_HEADER_BYTES``.

    tarfile reads such a header whole into memory and parses it (a 150 MB pax comment took 430 MiB;
    a digit-only pax value takes quadratic time on Pythons before 3.11.10 / 3.12.6, CVE-2024-6232):
    the size in its 512-byte block is checked first.
    """

    def _proc_member(self, tarfile_):
        if self.type in _EXTENDED_HEADER_TYPES and self.size > MAX_HEADER_BYTES:
            raise OversizedHeader(
                f"a {_EXTENDED_HEADER_TYPES[self.type]} header of {self.size:,} bytes, over the "
                f"{MAX_HEADER_BYTES:,}-byte cap for one header"
            )
        return super()._proc_member(tarfile_)


class _Prefixed:
    """``stream`` with the bytes already read from it put back in front (tarfile's stream mode only reads)."""

    def __init__(self, head: bytes, stream) -> None:
        self.head, self.stream = head, stream

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            data, self.head = self.head + self.stream.read(), b""
            return data
        data, self.head = self.head[:size], self.head[size:]
        return data + self.stream.read(size - len(data)) if len(data) < size else data


def plain_tar(stream):
    """``stream`` if it is not compressed (by its first bytes), else CompressedShard."""
    head = stream.read(6)
    kind = next((name for magic, name in COMPRESSION_MAGIC.items() if head.startswith(magic)), None)
    if kind is not None:
        raise CompressedShard(
            f"a {kind}-compressed tar, refused unread (it could expand to any size); shards are "
            "plain tar as make_shards writes them: decompress it"
        )
    return _Prefixed(head, stream)


def tar_samples(stream, limits: Optional[Limits] = None) -> Iterator[dict]:
    """Group consecutive tar members sharing a key into ``{"__key__": key, ext: bytes}``.

    Only jpg, cls and json members are read, each at most ``limits.member_bytes`` and together at most
    ``limits.sample_bytes`` per key; a sample over a cap gets ``__error__`` and its bytes are dropped.
    Member names are only ever used as strings, never as paths on disk.
    """
    limits = limits or default_limits()
    current: Optional[dict] = None
    size = 0
    with tarfile.open(fileobj=plain_tar(stream), mode="r|", tarinfo=CappedTarInfo) as tar:
        for member in tar:
            tar.members = []  # the stream mode still lists every member: a tar of millions must not grow memory
            key, ext = base_plus_ext(member.name) if member.isfile() else (None, None)
            if key is None:
                continue
            problem = member_problem(member, limits)
            if problem:  # left unread (the stream skips it); the sample is counted as bad
                key = key.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            if current is not None and current["__key__"] != key:
                yield current
                current = None
            if current is None:
                current, size = {"__key__": key}, 0
            if "__error__" in current or (ext not in READ_EXTENSIONS and not problem):
                continue
            size += member.size
            if not problem and size > limits.sample_bytes:
                problem = f"its members total over {limits.sample_bytes:,} bytes, the cap per sample"
            if problem:
                current = {"__key__": key, "__error__": problem}  # what was read of it is let go
            else:
                current[ext] = tar.extractfile(member).read()
    if current is not None:
        yield current


def member_problem(member: tarfile.TarInfo, limits: Optional[Limits] = None) -> Optional[str]:
    """Why a member must not be read: too large to be an image, or a name that is not UTF-8 (it could not be reported)."""
    cap = (limits or default_limits()).member_bytes
    if member.size > cap:
        return f"member {ascii(member.name)} is {member.size:,} bytes, over the {cap:,}-byte cap"
    try:
        member.name.encode("utf-8")
    except UnicodeEncodeError:
        return f"member name {ascii(member.name)} is not UTF-8"
    return None


def read_shards(
    shards: Sequence[Shard],
    skips: Skips,
    owner: Optional[Callable[[int], bool]] = None,
    limits: Optional[Limits] = None,
) -> Iterator[dict]:
    """Raw samples of ``shards`` in order, tagged with ``__url__``; with ``owner``, only indices it accepts.

    A shard that cannot be opened, is compressed or ends early loses the samples info.json says it
    still had; they count as skipped (for their owner), so sample indices stay the same in every slot.
    A remote read's transient faults are retried at the byte offset (counted in ``skips.retries``); when
    its retries are spent, ``StoreError`` stops the run instead.
    """
    index = 0
    for url, expected in shards:
        read, last_key, error = 0, None, None
        stream = None
        try:
            stream = open_shard(url, skips.retried)
            for sample in tar_samples(stream, limits):
                read, last_key = read + 1, sample["__key__"]
                index += 1
                if owner is None or owner(index - 1):
                    sample["__url__"] = url
                    yield sample
        except CredentialError as err:  # in a loader worker: travels as a DataError, one line
            raise StoreError(str(err)) from None
        except (OSError, tarfile.TarError, EOFError, MemoryError) as err:
            error = f"shard unreadable ({type(err).__name__}: {err})"
        finally:
            if stream is not None:
                with contextlib.suppress(Exception):  # a pipe closed early reports SIGPIPE
                    stream.close()
        if error is None and expected is not None and read < expected:
            error = f"shard ends early (a tar cut inside a header reads as a clean end), {read} of {expected} read"
        if error is None:
            continue
        lost = max(expected - read, 0) if expected is not None else 1
        mine = sum(1 for i in range(index, index + lost) if owner is None or owner(i))
        index += lost
        if mine or skips.strict:
            where = f"after {last_key}" if last_key is not None else "(whole shard)"
            skips.report(url, where, f"{error}; {lost} of its samples lost", n=mine)


def bad_reason(sample: dict, num_classes: int) -> Optional[str]:
    """Why a raw sample cannot be used (checks that need no decoding), or None; sets ``__label__``."""
    if "__error__" in sample:
        return sample["__error__"]
    if "jpg" not in sample:
        return "no jpg"
    if "cls" not in sample:
        return "no cls"
    try:
        label = int(sample["cls"].decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        return f"cls {sample['cls'][:16]!r} is not an integer"
    if not 0 <= label < num_classes:
        return f"label {label} outside 0..{num_classes - 1}"
    sample["__label__"] = label
    return None


def usable(samples: Iterator[dict], skips: Skips, num_classes: int) -> Iterator[dict]:
    for sample in samples:
        reason = bad_reason(sample, num_classes)
        if reason is None:
            yield sample
        else:
            skips.report(sample["__url__"], sample["__key__"], reason)


def decode_sample(sample: dict, hint: int, skips: Skips) -> Optional[Image.Image]:
    try:
        return decode_jpeg(sample["jpg"], hint)
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError... on broken files
        skips.report(sample["__url__"], sample["__key__"], f"cannot decode jpg ({type(err).__name__}: {err})")
        return None


def header_ok(sample: dict, skips: Skips) -> bool:
    """What a skipped (not decoded) batch can check cheaply: that the bytes open as an image."""
    try:
        open_image(sample["jpg"])
        return True
    except Exception as err:
        skips.report(sample["__url__"], sample["__key__"], f"cannot decode jpg ({type(err).__name__}: {err})")
        return False
