"""The packer judges the file it reads, not a path it looked at earlier (issue 33, item 13).

A listed image is a link that is swapped to a FIFO, or a file that grows, right after the packer
looks at it: the packer must neither hang on the FIFO nor read past the size cap.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from PIL import Image

from toolkit.data.listing import Item
from toolkit.data.shards import Job, Packed, process_image


def write_jpeg(path: Path) -> None:
    Image.new("RGB", (48, 40), (120, 30, 200)).save(path, "JPEG")


def after_first_look(monkeypatch: pytest.MonkeyPatch, path: Path, change) -> None:
    """Run ``change`` right after the first stat of ``path`` (by path, or by the open file's descriptor)."""
    done = []
    real_stat, real_fstat = os.stat, os.fstat

    def stat(target, *args, **kwargs):
        result = real_stat(target, *args, **kwargs)
        if not done and os.fspath(target) == os.fspath(path):
            done.append(change())
        return result

    def fstat(fd):
        result = real_fstat(fd)
        if not done:
            done.append(change())
        return result

    monkeypatch.setattr(os, "stat", stat)
    monkeypatch.setattr(os, "fstat", fstat)


def pack_in_thread(job: Job, timeout: float = 20.0):
    result = []
    worker = threading.Thread(target=lambda: result.append(process_image(job)), daemon=True)
    worker.start()
    worker.join(timeout)
    return worker, result


def test_a_link_swapped_to_a_fifo_after_the_look_does_not_hang_the_packer(tmp_path, monkeypatch):
    write_jpeg(tmp_path / "real.jpg")
    os.mkfifo(tmp_path / "pipe")
    link = tmp_path / "img.jpg"
    link.symlink_to(tmp_path / "real.jpg")

    def swap() -> None:
        (tmp_path / "swapped").symlink_to(tmp_path / "pipe")
        os.replace(tmp_path / "swapped", link)

    after_first_look(monkeypatch, link, swap)
    job = Job("train", Item(key="img", path=link, label=0, fields=(), source="img.jpg"), 32, 90, False)
    worker, result = pack_in_thread(job)
    if worker.is_alive():  # let the blocked reader go, then fail
        os.close(os.open(tmp_path / "pipe", os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("the packer blocked on a FIFO swapped in after its check")
    assert isinstance(result[0], Packed), result  # the file it opened: the real image
    assert os.readlink(link) == str(tmp_path / "pipe")


def test_a_file_that_grows_after_the_look_is_read_no_further_than_the_cap(tmp_path, monkeypatch):
    path = tmp_path / "img.jpg"
    write_jpeg(path)
    cap = path.stat().st_size + 100

    def grow() -> None:
        with open(path, "ab") as handle:
            handle.write(b"\0" * 10_000)

    after_first_look(monkeypatch, path, grow)
    job = Job("train", Item(key="img", path=path, label=0, fields=(), source="img.jpg"), 32, 90, False, cap)
    reason = process_image(job)
    assert isinstance(reason, str) and reason.startswith("too large:") and "grew while being read" in reason, reason
