"""Fixtures shared by the whole suite: the real mini dataset, and tiny synthetic data packed into shards;
and the rule that makes every test under tests/e2e/ ``slow``.

The session-scoped fixtures are built once per test run and shared: treat them as read-only
(copy them with ``shutil.copytree`` before changing anything).
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from helpers import pack_tiny, train_args, train_cli
from toolkit.data.oxford import make_synthetic_dataset
from toolkit.data.shards import pack_dataset

# tests/unit/<package>/: fast, in-process tests; tests/e2e/: anything that trains, starts processes, installs,
# runs the notebook or the documented commands, or starts a cluster. The folder decides `slow`, not a hand-placed mark.
E2E = Path(__file__).resolve().parent / "e2e"

# ../shared/data/oxford-pets-mini beside the repository: 942 real images in the official layout.
SHARED_MINI = Path(__file__).resolve().parents[2] / "shared/data/oxford-pets-mini"

# The synthetic fixture: 64 listed images of 48 px (11 of them odd files, 3 of which are skipped),
# packed without resizing into shards of at most SYNTHETIC_SHARD_SIZE samples.
SYNTHETIC_IMAGES = 64
SYNTHETIC_IMAGE_SIZE = 48
SYNTHETIC_SHARD_SIZE = 4


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under tests/e2e/ ``slow`` (so ``-m "not slow"`` equals ``tests/unit``)."""
    for item in items:
        if E2E in item.path.resolve().parents:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def mini_pets() -> Path:
    """The real mini dataset, or a skip that says where it was looked for."""
    if not (SHARED_MINI / "annotations" / "trainval.txt").is_file():
        pytest.skip(
            f"real sample data not found at {SHARED_MINI} (expected ../shared/data/oxford-pets-mini "
            f"beside the repository root)"
        )
    return SHARED_MINI


@pytest.fixture(scope="session")
def synthetic_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic Oxford-layout folder (images/, annotations/, SYNTHETIC.json)."""
    root = tmp_path_factory.mktemp("synthetic-source") / "pets"
    return make_synthetic_dataset(root, SYNTHETIC_IMAGES, seed=0, image_size=SYNTHETIC_IMAGE_SIZE)


@pytest.fixture(scope="session")
def synthetic_shards(synthetic_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``synthetic_source`` packed into a shard folder with info.json; several (uneven) shards per split."""
    out = tmp_path_factory.mktemp("synthetic-shards")
    pack_dataset(
        synthetic_source, out, resize_shorter=64, shard_size=SYNTHETIC_SHARD_SIZE, workers=1, show_progress=False
    )
    return out


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any connection attempt fails at once, as on a machine without network."""

    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture(scope="session")
def mini_breed_shards(mini_pets: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real mini dataset packed for the 37-breed task, shrunk to 64 px (the tests train at 32 px)."""
    out = tmp_path_factory.mktemp("mini-breed-shards")
    pack_dataset(mini_pets, out, labels="breed", resize_shorter=64, workers=2, show_progress=False)
    return out


@pytest.fixture(scope="session")
def three_breed_folder(mini_pets: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three breeds of the real mini dataset as an image folder (``<breed>/<file>`` symlinks), odd files included."""
    root = tmp_path_factory.mktemp("three-breeds") / "pets3"
    for breed in ("Abyssinian", "Bengal", "beagle"):
        (root / breed).mkdir(parents=True)
        for image in sorted((mini_pets / "images").glob(f"{breed}_*.jpg")):
            (root / breed / image.name).symlink_to(image)
    return root


@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``helpers.pack_tiny``'s 120 synthetic 32 px images in shards of 16, packed once per test module."""
    return pack_tiny(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def one_epoch_run(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 1-epoch run (checkpoint step-00000008, model and last.safetensors); copy before changing."""
    out = tmp_path_factory.mktemp("one-epoch")
    assert train_cli(train_args(tiny_shards, out, "run", "train.epochs=1", "eval.test_split=null")) == 0
    return out / "run"
