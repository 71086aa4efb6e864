"""The dataset card beside the shards: README.md in the format of a Hugging Face dataset repository.

Its YAML header tells Hugging Face ``datasets`` how to read the folder (``configs``: which tar files
make which split) and what the columns are (``dataset_info.features``), with the label as a
``ClassLabel`` that carries the class names from ``info.json``. So both

    datasets.load_dataset("shards/pets")                                   # the folder (or its Hub repo)
    datasets.load_dataset("webdataset", data_files={"train": "shards/pets/train-*.tar"}, features=...)

give ``cls`` as a named label (``features["cls"].int2str``), ``jpg`` as a PIL image and ``__key__``
as the image name. The ``.json`` member (fields that depend on the source) is not declared, so
``datasets`` leaves it out; ``toolkit.data`` reads it. Format of the header:
https://huggingface.co/docs/hub/datasets-cards and https://huggingface.co/docs/datasets/repository_structure
"""

from __future__ import annotations

from pathlib import Path

import yaml

from toolkit.fileio import atomic_write_text

CARD_NAME = "README.md"
HF_SPLITS = ("train", "val", "test")


def card_header(info: dict) -> dict:
    """The YAML metadata of the card, from the manifest."""
    classes = [str(name) for name in info["classes"]]
    splits = [split for split in HF_SPLITS if info["splits"].get(split, {}).get("shards")]
    return {
        "pretty_name": f"{info['dataset']} ({info.get('label_field', 'label')})",
        "task_categories": ["image-classification"],
        "tags": ["webdataset", "pets-toolkit"] + (["synthetic"] if info.get("synthetic") else []),
        "configs": [
            {"config_name": "default", "data_files": [{"split": split, "path": f"{split}-*.tar"} for split in splits]}
        ],
        "dataset_info": {
            "features": [
                {"name": "__key__", "dtype": "string"},
                {"name": "__url__", "dtype": "string"},
                {"name": "jpg", "dtype": "image"},
                {"name": "cls", "dtype": {"class_label": {"names": {str(i): name for i, name in enumerate(classes)}}}},
            ],
        },
    }


def card_text(info: dict) -> str:
    header = yaml.safe_dump(card_header(info), sort_keys=False, allow_unicode=True)
    classes = info["classes"]
    counts = ", ".join(
        f"{split} {info['splits'][split]['num_samples']}" for split in HF_SPLITS if split in info["splits"]
    )
    shown = ", ".join(map(str, classes[:10])) + (f", ... ({len(classes)} in all)" if len(classes) > 10 else "")
    synthetic = (
        "\n**Synthetic data**: generated stand-in images, not photographs; for tests and demos only.\n"
        if info.get("synthetic")
        else ""
    )
    return f"""---
{header}---

# {info["dataset"]}: {len(classes)} classes by {info.get("label_field", "label")}

Webdataset shards written by `python -m toolkit.make_shards` (pets-toolkit). Images per split: {counts}.
Classes, in label order: {shown}.
{synthetic}
Each sample is `KEY.jpg` (RGB JPEG), `KEY.cls` (the label index) and `KEY.json` (source metadata).
`info.json` beside this card is the manifest: per-shard sha256, counts, skipped files and the train
split's normalization.

```python
import datasets
pets = datasets.load_dataset("path/to/this/folder")   # or the Hub repo it was pushed to
label = pets["train"].features["cls"].int2str(pets["train"][0]["cls"])
```
"""


MARKER = "- pets-toolkit"  # in the card's tags: a README.md without it is someone else's and is kept


def write_dataset_card(folder: Path, info: dict) -> bool:
    """Write (or refresh) the card; False when the folder holds a README.md that is not a card of ours."""
    path = Path(folder) / CARD_NAME
    if path.is_file() and MARKER not in path.read_text(encoding="utf-8", errors="replace"):
        return False
    atomic_write_text(path, card_text(info))
    return True
