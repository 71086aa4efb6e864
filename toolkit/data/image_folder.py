"""Any image-classification dataset in the usual folder layout, read into a ``Listing``.

Either one folder per class (the split is made when packing, stratified by class)::

    root/<class name>/<any sub-folders>/<image>

or fixed splits, each with one folder per class (a missing ``val/`` or ``test/`` is held out
of ``train/``)::

    root/train/<class name>/...   root/val/<class name>/...   root/test/<class name>/...

Classes are the class folders' names, sorted (as torchvision's ``ImageFolder`` does), so the
same folder always gives the same label numbers. Files with an image extension are packed
(odd ones converted, undecodable ones skipped and recorded, as for Oxford); other files are
listed in the manifest as ``unlisted``; hidden files and folders are ignored.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from toolkit.errors import UsageError
from toolkit.data.sources import Item, Listing

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")
SPLIT_FOLDERS = ("train", "val", "test")
LAYOUT_HINT = ("lay it out as DIR/<class name>/<images>, or DIR/train/<class name>/<images> with optional "
               "val/ and test/ beside train/")


def read_listing(source: Path) -> Listing:
    root = Path(source).expanduser().resolve()
    if not root.is_dir():
        raise UsageError(f"--source {source} is not a folder; {LAYOUT_HINT}")
    folders = _visible_folders(root)
    unlisted = [p.name for p in sorted(root.iterdir()) if p.is_file() and not p.name.startswith(".")]
    fixed = [name for name in SPLIT_FOLDERS if name in folders]
    if fixed:
        if "train" not in fixed:
            raise UsageError(f"{root} has {'/'.join(fixed)}/ but no train/ folder; {LAYOUT_HINT}")
        others = sorted(set(folders) - set(SPLIT_FOLDERS))
        if others:
            raise UsageError(f"{root} mixes split folders ({', '.join(fixed)}) with other folders (e.g. {others[0]}/); "
                             f"{LAYOUT_HINT}")
        trees = {split: root / split for split in fixed}
        unlisted += [f"{split}/{p.name}" for split in fixed for p in sorted(trees[split].iterdir())
                     if p.is_file() and not p.name.startswith(".")]
    else:
        trees = {"train": root}

    found = {split: _class_files(tree, root) for split, tree in trees.items()}
    classes = sorted(found["train"])
    if not classes:
        raise UsageError(f"no class folders in {trees['train']}; {LAYOUT_HINT}")
    if len(classes) < 2:
        raise UsageError(f"{trees['train']} has one class folder ({classes[0]}); a classifier needs at least two "
                         f"classes: add a folder per class")
    for split, per_class in found.items():
        strays = sorted(set(per_class) - set(classes))
        if strays:
            raise UsageError(f"{trees[split]} has class folder {strays[0]}/ that train/ lacks; every class needs "
                             f"training images: add {trees['train'] / strays[0]}/ or remove it from {split}/")

    index = {name: i for i, name in enumerate(classes)}
    keys = KeyMaker()
    pools: dict[str, list[Item]] = {}
    for split, per_class in found.items():
        pools[split] = []
        for name, (images, others) in sorted(per_class.items()):
            if not images:
                where = trees[split] / name
                raise UsageError(f"class folder {where} holds no images ({', '.join(IMAGE_EXTENSIONS)}); add images "
                                 f"or remove the folder")
            unlisted += others
            for path in images:
                relative = path.relative_to(root).as_posix()
                pools[split].append(Item(key=keys.make(relative), path=path, label=index[name],
                                         fields=(("class", name),), source=relative))
    return Listing(root=root, dataset=root.name or "image-folder", synthetic=False, classes=classes,
                   label_field="class", pools=pools, unlisted=sorted(unlisted), forbidden_outputs=(root,))


def _visible_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _class_files(tree: Path, root: Path) -> dict[str, tuple[list[Path], list[str]]]:
    """{class name: (image files, other files relative to root)} under each class folder of ``tree``, sorted."""
    out = {}
    for name in _visible_folders(tree):
        images, others = [], []
        for folder, subfolders, files in os.walk(tree / name):
            subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
            for file in sorted(files):
                if file.startswith("."):
                    continue
                path = Path(folder) / file
                if path.suffix.lower() in IMAGE_EXTENSIONS:
                    images.append(path)
                else:
                    others.append(path.relative_to(root).as_posix())
        out[name] = (images, others)
    return out


class KeyMaker:
    """Sample keys from relative paths: letters, digits, '_' and '-' only (webdataset splits names at
    the first '.'), unique (a clash gets '-2', '-3', ...), and the same for the same folder."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def make(self, relative: str) -> str:
        stem = relative.rsplit(".", 1)[0]
        base = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_") or "image"
        key, n = base, 1
        while key in self.used:
            n += 1
            key = f"{base}-{n}"
        self.used.add(key)
        return key
