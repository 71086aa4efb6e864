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

Links are followed, files and folders alike (datasets are often assembled from links), with three
guards: a folder link back to a folder above it is not followed (a warning says so), a file reached
twice (two links, or a link from test/ into train/) is packed once and its other paths skipped with
the reason, and a class folder whose name is not valid UTF-8 is a one-line error (the name is
written into info.json, the model file and predictions.csv). A FIFO, a device or a file over the size
cap named like an image is skipped with the reason by the packer, which never opens it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterator, Optional

from toolkit.data.listing import Item, Listing
from toolkit.errors import UsageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")
SPLIT_FOLDERS = ("train", "val", "test")
LAYOUT_HINT = (
    "lay it out as DIR/<class name>/<images>, or DIR/train/<class name>/<images> with optional "
    "val/ and test/ beside train/"
)


def read_folder_listing(source: Path) -> Listing:
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
            raise UsageError(
                f"{root} mixes split folders ({', '.join(fixed)}) with other folders (e.g. {others[0]}/); {LAYOUT_HINT}"
            )
        trees = {split: root / split for split in fixed}
        unlisted += [
            f"{split}/{p.name}"
            for split in fixed
            for p in sorted(trees[split].iterdir())
            if p.is_file() and not p.name.startswith(".")
        ]
    else:
        trees = {"train": root}

    scan = Scan(root)
    found = {split: scan.class_files(tree) for split, tree in trees.items()}
    for split in fixed[1:]:  # an empty val/ or test/ would pack a split of 0 images that fails after training
        if not found[split]:
            raise UsageError(
                f"{trees[split]} holds no class folders, so the {split} split would be empty; add "
                f"{split}/<class name>/<images>, or remove {split}/ to hold out --{split}-fraction of "
                "train/ instead"
            )
    classes = sorted(found["train"])
    if not classes:
        raise UsageError(f"no class folders in {trees['train']}; {LAYOUT_HINT}")
    if len(classes) < 2:
        raise UsageError(
            f"{trees['train']} has one class folder ({classes[0]}); a classifier needs at least two "
            f"classes: add a folder per class"
        )
    for split, per_class in found.items():
        strays = sorted(set(per_class) - set(classes))
        if strays:
            raise UsageError(
                f"{trees[split]} has class folder {strays[0]}/ that train/ lacks; every class needs "
                f"training images: add {trees['train'] / strays[0]}/ or remove it from {split}/"
            )

    index = {name: i for i, name in enumerate(classes)}
    keys = KeyMaker()
    pools: dict[str, list[Item]] = {}
    for split, per_class in found.items():
        pools[split] = []
        for name, (images, others) in sorted(per_class.items()):
            if not images:
                where = trees[split] / name
                raise UsageError(
                    f"class folder {where} holds no images ({', '.join(IMAGE_EXTENSIONS)}); add images "
                    f"or remove the folder"
                )
            unlisted += [printable(other) for other in others]
            for path in images:
                relative = path.relative_to(root).as_posix()
                pools[split].append(
                    Item(
                        key=keys.make(printable(relative)),
                        path=path,
                        label=index[name],
                        fields=(("class", name),),
                        source=printable(relative),
                        problem=scan.problem(path, relative),
                    )
                )
    return Listing(
        root=root,
        dataset=root.name or "image-folder",
        synthetic=False,
        classes=classes,
        label_field="class",
        pools=pools,
        unlisted=sorted(unlisted),
        warnings=scan.warnings,
        forbidden_outputs=(root,),
    )


def printable(name: str) -> str:
    """A file name as UTF-8 text (bytes that are not UTF-8 shown as U+FFFD), safe to print and to store."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _visible_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


class Scan:
    """Walks class folders in a fixed order, following links, and remembers each real file it lists."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.first_path: dict[str, str] = {}  # real path -> the relative path it was first listed under
        self.warnings: list[str] = []
        self.visited: dict[str, str] = {}  # real folder -> the relative path it was first listed under

    def class_files(self, tree: Path) -> dict[str, tuple[list[Path], list[str]]]:
        """{class name: (image files, other files relative to root)} under each class folder of ``tree``, sorted."""
        out = {}
        for name in _visible_folders(tree):
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:
                raise UsageError(
                    f"class folder {ascii(name)} in {printable(str(tree))} has a name that is not valid "
                    "UTF-8; rename it (class names are written into info.json, the model file and "
                    "predictions.csv)"
                ) from None
            images, others = [], []
            for path in self.walk(tree / name, frozenset()):
                if path.suffix.lower() in IMAGE_EXTENSIONS:
                    images.append(path)
                else:
                    others.append(path.relative_to(self.root).as_posix())
            out[name] = (images, others)
        return out

    def walk(self, folder: Path, above: frozenset[str]) -> Iterator[Path]:
        """Visible files under ``folder`` as ``os.walk`` orders them (a folder's files sorted, then its
        sub-folders sorted), following folder links except one back to a folder above it (a loop).

        Each real folder is listed once, under the first path that reaches it: links that fan out
        (a chain of folders each linking twice to the next) would otherwise list 2^depth paths.
        """
        real, relative = os.path.realpath(folder), printable(folder.relative_to(self.root).as_posix())
        if real in above:
            self.warnings.append(f"{relative} links back to a folder above it: not followed")
            return
        if real in self.visited:
            self.warnings.append(
                f"{relative} is the same folder as {self.visited[real]} (reached twice through links): listed once"
            )
            return
        self.visited[real] = relative
        entries = sorted((e for e in os.scandir(folder) if not e.name.startswith(".")), key=lambda e: e.name)
        folders = [e for e in entries if e.is_dir()]  # follows links, as os.walk sorts them
        yield from (Path(e.path) for e in entries if not e.is_dir())
        for entry in folders:
            yield from self.walk(Path(entry.path), above | {real})

    def problem(self, path: Path, relative: str) -> Optional[str]:
        """Why an image path is skipped before it is opened: a name that is not UTF-8, or a file listed already."""
        try:
            relative.encode("utf-8")
        except UnicodeEncodeError:
            return f"file name {ascii(relative)} is not valid UTF-8: rename it"
        real = os.path.realpath(path)
        if real in self.first_path:
            return f"the same file as {self.first_path[real]} (reached twice through links): packed once"
        self.first_path[real] = relative
        return None


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
