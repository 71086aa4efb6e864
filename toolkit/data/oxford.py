"""Oxford-IIIT Pet in its official folder layout: read it, or generate a small synthetic stand-in.

The official layout (also what torchvision's ``OxfordIIITPet(download=True)`` unpacks)::

    images/<name>.jpg
    annotations/list.txt  trainval.txt  test.txt

Annotation lines are ``<name> <class id 1-37> <species 1=cat 2=dog> <breed id>``; lines starting
with ``#`` are comments. The breed is the name without its trailing ``_<n>``, and cat breeds are
the ones whose name starts with an uppercase letter - the dataset's own README says so, which
gives a second, independent source for every label that we cross-check.

The synthetic stand-in has the same layout, a cat/dog signal a tiny CNN learns in a few epochs,
and the same kinds of odd files the real dataset has, so every code path runs without the
800 MB download.
"""

from __future__ import annotations

import io
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw

from toolkit.data.listing import Item, Listing
from toolkit.errors import UsageError
from toolkit.fileio import atomic_write_json, atomic_write_text

SPECIES = ("cat", "dog")  # index = training label; annotation species ids are 1 and 2
SPLIT_FILES = {"trainval": "trainval.txt", "test": "test.txt"}
LIST_FILE = "list.txt"
SYNTHETIC_MARKER = "SYNTHETIC.json"  # written by make_synthetic_dataset; marks everything made from it
TORCHVISION_SUBDIR = "oxford-iiit-pet"  # where torchvision's download puts the layout under its root


@dataclass(frozen=True)
class Entry:
    """One annotation line."""

    name: str
    class_id: int
    species_id: int
    breed_id: int

    @property
    def breed(self) -> str:
        return breed_of(self.name)

    @property
    def species(self) -> str:
        return SPECIES[self.species_id - 1]

    @property
    def label(self) -> int:
        return self.species_id - 1

    @property
    def filename(self) -> str:
        return f"{self.name}.jpg"

    def species_conflict(self) -> Optional[str]:
        """Why the annotation's species disagrees with the breed name's capitalisation, if it does."""
        by_name = species_from_name(self.name)
        if by_name == self.species:
            return None
        case = "uppercase" if by_name == "cat" else "lowercase"
        return (
            f"label conflict: annotation says species {self.species_id} ({self.species}) but breed "
            f"'{self.breed}' starts with an {case} letter ({by_name})"
        )


def breed_of(name: str) -> str:
    """``Egyptian_Mau_138`` -> ``Egyptian_Mau``."""
    head, _, tail = name.rpartition("_")
    return head if head and tail.isdigit() else name


def species_from_name(name: str) -> str:
    return "cat" if name[:1].isupper() else "dog"


def read_annotation_file(path: Path) -> list[Entry]:
    """Parse one official annotation file, failing with the file and line of the first bad line."""
    entries: list[Entry] = []
    seen: set[str] = set()
    for lineno, raw in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{lineno}"
        fields = line.split()
        try:
            name, class_id, species_id, breed_id = fields[0], *map(int, fields[1:4])
        except (ValueError, IndexError):
            raise UsageError(f"{where}: expected '<name> <class id> <species 1|2> <breed id>', got {line!r}") from None
        if len(fields) != 4 or not 1 <= class_id <= 37 or species_id not in (1, 2) or breed_id < 1:
            raise UsageError(f"{where}: expected '<name> <class id 1-37> <species 1|2> <breed id>', got {line!r}")
        if "." in name or "/" in name or "\\" in name:
            # webdataset takes everything after the first dot of a member name as the extension
            raise UsageError(f"{where}: image name {name!r} must not contain '.', '/' or '\\'")
        if name in seen:
            raise UsageError(f"{where}: {name} is listed twice")
        seen.add(name)
        entries.append(Entry(name, class_id, species_id, breed_id))
    return entries


@dataclass
class PetsSource:
    """What an Oxford-layout folder holds, checked for consistency."""

    root: Path
    images: Path
    trainval: list[Entry]
    test: list[Entry]
    unlisted: list[str]  # file names in images/ that no split lists
    synthetic: bool
    warnings: list[str] = field(default_factory=list)


def is_oxford_layout(source: Path) -> bool:
    """Whether ``source`` (or torchvision's root above it) has the official annotations/ folder."""
    return (resolve_root(source) / "annotations").is_dir()


def resolve_root(source: Path) -> Path:
    """Accept the layout folder itself or torchvision's download root that contains it."""
    source = Path(source).expanduser().resolve()
    if not (source / "annotations").is_dir() and (source / TORCHVISION_SUBDIR / "annotations").is_dir():
        return source / TORCHVISION_SUBDIR
    return source


def read_source(source: Path) -> PetsSource:
    """Read and cross-check the annotation lists of an Oxford-layout folder."""
    root = resolve_root(source)
    hint = "point --source at a folder with images/ and annotations/ (the official Oxford-IIIT Pet layout)"
    if not root.is_dir():
        raise UsageError(f"--source {source} is not a folder; {hint}, or use --download DIR / --synthetic N")
    images = root / "images"
    if not images.is_dir():
        raise UsageError(f"no images/ folder in {root}; {hint}")
    lists = {}
    for split, filename in SPLIT_FILES.items():
        path = root / "annotations" / filename
        if not path.is_file():
            raise UsageError(f"missing {path}; {hint}")
        lists[split] = read_annotation_file(path)
        if not lists[split]:
            raise UsageError(f"{path} lists no images; check that it is the official annotation file")
    both = {e.name for e in lists["trainval"]} & {e.name for e in lists["test"]}
    if both:
        raise UsageError(f"{len(both)} image(s) are in both trainval.txt and test.txt, e.g. {sorted(both)[0]}")

    listed = {e.name: e for e in lists["trainval"] + lists["test"]}
    warnings = _check_list_file(root / "annotations" / LIST_FILE, listed)
    listed_files = {e.filename for e in listed.values()}
    unlisted = sorted(
        p.name for p in images.iterdir() if p.is_file() and not p.name.startswith(".") and p.name not in listed_files
    )
    return PetsSource(
        root=root,
        images=images,
        trainval=lists["trainval"],
        test=lists["test"],
        unlisted=unlisted,
        synthetic=(root / SYNTHETIC_MARKER).is_file(),
        warnings=warnings,
    )


def _check_list_file(path: Path, listed: dict[str, Entry]) -> list[str]:
    """list.txt should be exactly trainval + test with the same labels; labels that differ are fatal."""
    if not path.is_file():
        return [f"no {path}: labels come from trainval.txt and test.txt alone"]
    full = read_annotation_file(path)
    for entry in full:
        other = listed.get(entry.name)
        if other is not None and other != entry:
            raise UsageError(
                f"{entry.name} has different labels in {path.name} and the split files; fix the annotation files"
            )
    names = {e.name for e in full}
    warnings = []
    only_list = names - listed.keys()
    if only_list:
        warnings.append(
            f"{len(only_list)} image(s) in {path.name} are in neither trainval.txt nor test.txt "
            f"and are not packed, e.g. {sorted(only_list)[0]}"
        )
    only_splits = listed.keys() - names
    if only_splits:
        warnings.append(
            f"{len(only_splits)} image(s) in the split files are missing from {path.name}, "
            f"e.g. {sorted(only_splits)[0]}"
        )
    return warnings


def breed_classes(entries: list[Entry]) -> list[str]:
    """The breed names in class-id order, checked: one name per id and one id per name."""
    by_id: dict[int, str] = {}
    for entry in entries:
        known = by_id.setdefault(entry.class_id, entry.breed)
        if known != entry.breed:
            raise UsageError(
                f"class id {entry.class_id} is used for both {known} and {entry.breed} "
                f"(e.g. {entry.name}); fix the annotation files"
            )
    names = [by_id[class_id] for class_id in sorted(by_id)]
    if len(set(names)) != len(names):
        twice = next(name for name in names if names.count(name) > 1)
        raise UsageError(f"breed {twice} has more than one class id; fix the annotation files")
    return names


def read_oxford_listing(source: Path, labels: str = "species") -> Listing:
    """The folder as a ``Listing`` labelled by ``species`` (cat 0, dog 1) or ``breed`` (class-id order)."""
    pets = read_source(source)
    everything = pets.trainval + pets.test
    classes = list(SPECIES) if labels == "species" else breed_classes(everything)
    index = {name: i for i, name in enumerate(classes)}

    def item(entry: Entry) -> Item:
        fields = (
            ("breed", entry.breed),
            ("class_id", entry.class_id),
            ("species", entry.species),
            ("breed_id", entry.breed_id),
        )
        label = index[entry.species if labels == "species" else entry.breed]
        return Item(
            key=entry.name,
            path=pets.images / entry.filename,
            label=label,
            fields=fields,
            source=entry.filename,
            problem=entry.species_conflict(),
        )

    return Listing(
        root=pets.root,
        dataset="synthetic-pets" if pets.synthetic else "oxford-iiit-pet",
        synthetic=pets.synthetic,
        classes=classes,
        label_field=labels,
        pools={"trainval": [item(e) for e in pets.trainval], "test": [item(e) for e in pets.test]},
        unlisted=pets.unlisted,
        warnings=pets.warnings,
        forbidden_outputs=(pets.root / "images", pets.root / "annotations"),
    )


# --------------------------------------------------------------------------------------------
# Synthetic stand-in
# --------------------------------------------------------------------------------------------

# (name, base colour). Colours overlap between species on purpose: colour alone is a weak cue.
CAT_BREEDS = (("Amber", (200, 140, 70)), ("Blue_Point", (150, 160, 185)), ("Cinder", (95, 85, 85)))
DOG_BREEDS = (
    ("alpine_hound", (215, 205, 185)),
    ("brook_terrier", (125, 95, 65)),
    ("copper_spaniel", (185, 105, 55)),
    ("dune_collie", (205, 175, 120)),
)

# Odd files, each replacing one listed image (the real dataset has each kind, docs/sources.md).
# The first eight must be kept by a packer, the last three skipped.
KEPT_ODD_KINDS = ("png", "gif", "grayscale", "cmyk", "rgba", "palette", "progressive", "trailing_byte")
SKIPPED_ODD_KINDS = ("truncated", "corrupt", "missing")
MIN_SYNTHETIC_IMAGES = 16


def make_synthetic_dataset(
    root: Path, num_images: int, seed: int = 0, image_size: int = 96, odd_files: bool = True
) -> Path:
    """Write a synthetic Oxford-layout dataset of ``num_images`` listed images into ``root``.

    Cats carry stripes and pointed ears, dogs spots and floppy ears; breed colours overlap and
    pixel noise, distractor shapes and faint textures keep it from being trivial. Every third
    image of a breed goes to test.txt. With ``odd_files`` eleven listed images are replaced by
    odd files and one unlisted image is added; ``SYNTHETIC.json`` records which, so tests can
    check a packer against it. Same arguments, same bytes.
    """
    root = Path(root).expanduser().resolve()
    if num_images < MIN_SYNTHETIC_IMAGES:
        raise UsageError(f"--synthetic needs at least {MIN_SYNTHETIC_IMAGES} images, got {num_images}")
    if image_size < 16:
        raise UsageError(f"synthetic image size must be at least 16 px, got {image_size}")
    _prepare_synthetic_root(root)
    rng = np.random.default_rng(seed)

    breeds = [(name, colour, "cat") for name, colour in CAT_BREEDS] + [(n, c, "dog") for n, c in DOG_BREEDS]
    entries, counts = [], [0] * len(breeds)
    for i in range(num_images):
        b = i % len(breeds)
        counts[b] += 1
        species_id = 1 if breeds[b][2] == "cat" else 2
        breed_id = b + 1 if species_id == 1 else b + 1 - len(CAT_BREEDS)
        entries.append(Entry(f"{breeds[b][0]}_{counts[b]}", b + 1, species_id, breed_id))

    kinds = KEPT_ODD_KINDS + SKIPPED_ODD_KINDS if odd_files else ()
    picks = rng.permutation(num_images)[: len(kinds)]
    odd = {int(index): kind for index, kind in zip(picks, kinds)}

    images = root / "images"
    images.mkdir(parents=True)
    for index, entry in enumerate(entries):
        b = entry.class_id - 1
        picture = _draw_pet(rng, breeds[b][2], breeds[b][1], image_size)
        data = _encode(picture, odd.get(index, "jpeg"))
        if data is not None:
            (images / entry.filename).write_bytes(data)

    odd_names = {kind: entries[index].name for index, kind in sorted(odd.items(), key=lambda item: item[1])}
    unlisted = []
    if odd_files:
        extra = Entry(f"{CAT_BREEDS[0][0]}_{counts[0] + 1}", 1, 1, 1)
        (images / extra.filename).write_bytes(_encode(_draw_pet(rng, "cat", CAT_BREEDS[0][1], image_size), "jpeg"))
        unlisted.append(extra.filename)

    entries.sort(key=lambda e: (e.class_id, int(e.name.rpartition("_")[2])))
    test_names = {e.name for e in entries if int(e.name.rpartition("_")[2]) % 3 == 0}
    header = (
        "#Image CLASS-ID SPECIES BREED ID\n#ID: 1:7 Class ids (synthetic)\n#SPECIES: 1:Cat 2:Dog\n"
        "#All images with 1st letter as captial are cat images\n"
        "#images with small first letter are dog images\n"
    )
    lines = {e.name: f"{e.name} {e.class_id} {e.species_id} {e.breed_id}\n" for e in entries}
    annotations = root / "annotations"
    annotations.mkdir()
    atomic_write_text(annotations / "trainval.txt", "".join(lines[e.name] for e in entries if e.name not in test_names))
    atomic_write_text(annotations / "test.txt", "".join(lines[e.name] for e in entries if e.name in test_names))
    atomic_write_text(annotations / LIST_FILE, header + "".join(lines.values()))
    atomic_write_json(
        root / SYNTHETIC_MARKER,
        {
            "generator": "toolkit.oxford.make_synthetic_dataset",
            "synthetic": True,
            "num_images": num_images,
            "seed": seed,
            "image_size": image_size,
            "complete": True,
            "odd_files": odd_names,
            "unlisted": unlisted,
        },
    )
    return root


def _prepare_synthetic_root(root: Path) -> None:
    """Regenerate a folder this function made before; refuse to write into anything else."""
    if root.exists() and not root.is_dir():
        raise UsageError(f"{root} is a file; give --source a folder for the synthetic dataset")
    if root.is_dir() and any(root.iterdir()):
        if not (root / SYNTHETIC_MARKER).is_file():
            raise UsageError(f"{root} is not empty and was not made by --synthetic; choose an empty or new folder")
        for child in ("images", "annotations"):
            shutil.rmtree(root / child, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    # Mark the folder first, so an interrupted generation can still be regenerated in place.
    atomic_write_json(
        root / SYNTHETIC_MARKER,
        {"generator": "toolkit.oxford.make_synthetic_dataset", "synthetic": True, "complete": False},
    )


def _draw_pet(rng: np.random.Generator, species: str, colour: tuple, size: int) -> Image.Image:
    """A textured silhouette on a noisy background: stripes + pointed ears for cats, spots + floppy ears for dogs."""
    longer = int(round(size * rng.uniform(1.0, 1.4)))
    width, height = (longer, size) if rng.random() < 0.7 else (size, longer)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)

    # Background: a random gradient between two colours plus a few distractor rectangles.
    c0, c1 = rng.uniform(30, 225, 3), rng.uniform(30, 225, 3)
    t = (xx / width)[..., None] if rng.random() < 0.5 else (yy / height)[..., None]
    canvas = Image.fromarray(np.uint8(c0 * (1 - t) + c1 * t))
    draw = ImageDraw.Draw(canvas)
    for _ in range(rng.integers(0, 4)):
        x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
        w, h = rng.uniform(0.05, 0.25) * size, rng.uniform(0.05, 0.25) * size
        draw.rectangle((x0, y0, x0 + w, y0 + h), fill=tuple(int(v) for v in rng.uniform(0, 255, 3)))

    # Silhouette: a body ellipse with ears on top.
    cx, cy = rng.uniform(0.4, 0.6) * width, rng.uniform(0.45, 0.65) * height
    rx, ry = rng.uniform(0.28, 0.38) * size, rng.uniform(0.25, 0.32) * size
    mask = Image.new("L", (width, height), 0)
    shape = ImageDraw.Draw(mask)
    shape.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=255)
    ear = rng.uniform(0.35, 0.5) * ry
    for side in (-1, 1):
        if species == "cat":
            ex = cx + side * rx * 0.55
            shape.polygon(
                [
                    (ex - ear * 0.6, cy - ry * 0.7),
                    (ex + ear * 0.6, cy - ry * 0.7),
                    (ex + side * ear * 0.3, cy - ry - ear * 1.2),
                ],
                fill=255,
            )
        else:  # hanging outside the body's sides
            hx = cx + side * rx * 0.95
            shape.ellipse((hx - ear * 0.45, cy - ry * 0.75, hx + ear * 0.45, cy - ry * 0.1 + ear), fill=255)

    # Coat texture: stripes at a random angle for cats, round spots for dogs; sometimes faint.
    strength = rng.uniform(35, 70) if rng.random() < 0.85 else rng.uniform(8, 20)
    if species == "cat":
        angle, period = rng.uniform(0, np.pi), rng.uniform(0.15, 0.24) * size
        wave = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period + rng.uniform(0, 2 * np.pi))
        pattern = np.where(wave > 0, -strength, strength * 0.3)
    else:
        spots = Image.new("L", (width, height), 0)
        spot_draw = ImageDraw.Draw(spots)
        radius = rng.uniform(0.055, 0.08) * size
        for _ in range(rng.integers(5, 10)):
            sx, sy = cx + rng.uniform(-rx, rx), cy + rng.uniform(-ry, ry)
            spot_draw.ellipse((sx - radius, sy - radius, sx + radius, sy + radius), fill=255)
        pattern = np.where(np.asarray(spots) > 0, -strength, strength * 0.3)
    coat = np.clip(np.asarray(colour, np.float64) + rng.normal(0, 18, 3) + pattern[..., None], 0, 255)
    canvas.paste(Image.fromarray(np.uint8(coat)), (0, 0), mask)

    noisy = np.asarray(canvas, np.float64) + rng.normal(0, rng.uniform(6, 16), (height, width, 3))
    return Image.fromarray(np.uint8(np.clip(noisy, 0, 255)))


def _encode(picture: Image.Image, kind: str) -> Optional[bytes]:
    """File bytes for one image: a plain JPEG, or one of the odd kinds; None for a missing file."""
    buffer = io.BytesIO()
    if kind in ("jpeg", "trailing_byte", "truncated"):
        picture.save(buffer, "JPEG", quality=90)
    elif kind == "progressive":
        picture.save(buffer, "JPEG", quality=90, progressive=True)
    elif kind == "grayscale":
        picture.convert("L").save(buffer, "JPEG", quality=90)
    elif kind == "cmyk":
        picture.convert("CMYK").save(buffer, "JPEG", quality=90)
    elif kind == "png":
        picture.save(buffer, "PNG")
    elif kind == "gif":
        picture.convert("P", palette=Image.Palette.ADAPTIVE).save(buffer, "GIF")
    elif kind == "palette":
        picture.convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(buffer, "PNG")
    elif kind == "rgba":
        alpha = Image.new("L", picture.size, 255)
        ImageDraw.Draw(alpha).rectangle((0, 0, picture.width - 1, picture.height // 8), fill=0)
        rgba = picture.copy()
        rgba.putalpha(alpha)
        rgba.save(buffer, "PNG")
    elif kind == "corrupt":
        return b"<html><body><h1>404 Not Found</h1></body></html>\n"  # a failed download saved as .jpg
    elif kind == "missing":
        return None
    else:
        raise ValueError(f"unknown odd file kind {kind!r}")
    data = buffer.getvalue()
    if kind == "trailing_byte":
        return data + b"\n"  # like Egyptian_Mau_138.jpg: a stray byte after the end marker
    if kind == "truncated":
        return data[: len(data) * 3 // 5]
    return data
