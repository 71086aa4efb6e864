"""What ``make_shards`` packs: a labelled image listing, read from either supported layout.

Two layouts are read, each by its own module, into the same ``Listing``:

* ``oxford`` - Oxford-IIIT Pet's official ``images/`` + ``annotations/`` layout, labelled by
  species (cat/dog, the default) or by breed (37 classes);
* ``image_folder`` - the usual ``root/<class name>/*.jpg`` (optionally under fixed ``train/``,
  ``val/``, ``test/`` folders), for any image-classification dataset a team brings.

The label is chosen here, when packing, not when training: a shard folder then describes one task
completely (``classes`` and ``label_field`` in its manifest), ``--verify`` can check every
sample's label against its metadata, and training, evaluation and reports need no option that
could disagree with the data. Switching task costs one re-pack (about a minute for the full
dataset), which is cheap next to any training run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from toolkit.data import image_folder, oxford
from toolkit.data.listing import Item, Listing
from toolkit.errors import UsageError

LAYOUTS = ("auto", "oxford", "folder")
OXFORD_LABELS = ("species", "breed")


def read_listing(source: Path, *, layout: str = "auto", labels: Optional[str] = None) -> Listing:
    """Read ``source`` in the given (or detected) layout; ``labels`` picks species or breed for Oxford."""
    if layout not in LAYOUTS:
        raise UsageError(f"--layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if layout == "auto":
        layout = "oxford" if oxford.is_oxford_layout(source) else "folder"
    if layout == "oxford":
        if labels is not None and labels not in OXFORD_LABELS:
            raise UsageError(f"--labels must be one of {', '.join(OXFORD_LABELS)} for Oxford-IIIT Pet, got {labels!r}")
        return oxford.read_oxford_listing(source, labels or "species")
    if labels is not None:
        raise UsageError(
            f"--labels {labels} applies to the Oxford-IIIT Pet layout only; {source} is read as an "
            "image folder, whose class is the name of each image's class folder"
        )
    return image_folder.read_folder_listing(source)


def stratified_split(
    items: Sequence[Item], fraction: float, seed: int, strata: Optional[Sequence[str]], what: str
) -> tuple[list[Item], list[Item]]:
    """``items`` split into (kept, held out), the held-out share ``fraction``, in the order the split returns.

    ``strata`` keeps each class's share in both parts; None is a plain random split. The order is
    sklearn's shuffled one, so shards mix classes.
    """
    if fraction == 0:
        return list(items), []
    from sklearn.model_selection import train_test_split

    try:
        kept, held = train_test_split(list(items), test_size=fraction, random_state=seed, stratify=strata)
    except ValueError as err:
        raise UsageError(f"cannot hold out {fraction} of {len(items)} images as {what}: {err}") from None
    return list(kept), list(held)


def assign_splits(
    listing: Listing, *, val_fraction: float, test_fraction: float, seed: int, split_mode: str
) -> dict[str, list[Item]]:
    """train/val/test from the listing's pools: fixed where the layout fixes them, else held out of train.

    Oxford's ``trainval`` gives train and val, its official ``test`` list is test. A folder's
    ``test`` (when it has none: ``test_fraction`` of the rest) and ``val`` (when it has none:
    ``val_fraction`` of what is left) are held out of its images, stratified by class unless
    ``split_mode`` is ``seed``.
    """
    pools = listing.pools

    def held_out(items: list[Item], fraction: float, what: str) -> tuple[list[Item], list[Item]]:
        strata = [listing.classes[i.label] for i in items] if split_mode == "stratified" else None
        return stratified_split(items, fraction, seed, strata, what)

    if "trainval" in pools:
        train, val = held_out(
            pools["trainval"], val_fraction, f"val (--val-fraction {val_fraction}, --split-mode {split_mode})"
        )
        return {"train": train, "val": val, "test": list(pools["test"])}
    train = list(pools.get("train", []))
    test = pools.get("test")
    if test is None:
        train, test = held_out(train, test_fraction, f"test (--test-fraction {test_fraction})")
    val = pools.get("val")
    if val is None:
        train, val = held_out(train, val_fraction, f"val (--val-fraction {val_fraction})")
    return {"train": train, "val": list(val), "test": list(test)}
