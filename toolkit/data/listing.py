"""The listing every dataset layout is read into: the images to pack, their labels, what was left out.

Its own module so the layouts (``oxford``, ``image_folder``) and the code that picks one
(``sources``) share the types without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional


@dataclass(frozen=True)
class Item:
    """One image to pack: where it is, its label, and the metadata stored beside it."""

    key: str  # the sample's key in the shards: unique, no '.', '/' or '\\'
    path: Path
    label: int  # index into Listing.classes
    fields: tuple[tuple[str, object], ...]  # the sample json's leading fields, in order (e.g. breed, species)
    source: str  # the file name recorded in the sample json (relative to the layout's image folder)
    problem: Optional[str] = None  # why it is skipped before decoding (e.g. a label conflict)


@dataclass
class Listing:
    """A dataset read from disk: its classes, its images per pool, and what it left out.

    ``pools`` holds the images as the layout groups them: ``trainval``/``test`` for Oxford,
    ``train``/``val``/``test`` (any of them) for a folder. ``assign_splits`` turns them into the
    three splits every shard folder has.
    """

    root: Path
    dataset: str  # recorded in the manifest: oxford-iiit-pet, synthetic-pets, image-folder
    synthetic: bool
    classes: list[str]
    label_field: str  # the sample json field that names the class: species, breed or class
    pools: dict[str, list[Item]]
    unlisted: list[str]  # files on disk the listing does not pack (not in any split list; not an image)
    warnings: list[str] = field(default_factory=list)
    forbidden_outputs: tuple[Path, ...] = ()  # folders --out must not be or be inside (the source's own)
