"""Fetch Oxford-IIIT Pet with torchvision (``make_shards --download``, ``quickstart --download``).

The network is probed first with a hard deadline, so an offline machine gets one line that says how
to use a local copy instead of a hang in name resolution.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from toolkit.errors import UsageError

DOWNLOAD_PROBE = ("www.robots.ox.ac.uk", 443)  # where torchvision's OxfordIIITPet downloads from
DOWNLOAD_PROBE_TIMEOUT_S = 5.0


def reachable(host: str, port: int, timeout: float) -> bool:
    """A TCP connect with a hard deadline (name resolution itself can hang without a network)."""
    outcome: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(True)
        except OSError:
            outcome.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 1)
    return bool(outcome and outcome[0])


def download_dataset(root: Path) -> Path:
    """Fetch the dataset with torchvision into ``root/oxford-iiit-pet`` (skipped when already there)."""
    root = Path(root).expanduser().resolve()
    layout = root / "oxford-iiit-pet"
    if (layout / "images").is_dir() and (layout / "annotations" / "trainval.txt").is_file():
        return layout
    host, port = DOWNLOAD_PROBE
    if not reachable(host, port, DOWNLOAD_PROBE_TIMEOUT_S):
        raise UsageError(
            f"cannot reach {host} to download Oxford-IIIT Pet; fetch images.tar.gz and "
            f"annotations.tar.gz from https://www.robots.ox.ac.uk/~vgg/data/pets/ elsewhere, "
            f"unpack both into {layout} and run with --source {layout}"
        )
    from torchvision.datasets import OxfordIIITPet

    try:
        OxfordIIITPet(root=str(root), download=True)
    except Exception as err:  # network drops, checksum mismatch, full disk
        raise UsageError(
            f"downloading Oxford-IIIT Pet into {root} failed ({type(err).__name__}: {err}); "
            f"retry, or unpack a local copy into {layout} and use --source {layout}"
        ) from None
    return layout
