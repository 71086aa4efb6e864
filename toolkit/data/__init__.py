"""The data stage: dataset folder -> shards -> batches.

``sources`` turns a dataset folder into one labelled listing, read by ``oxford`` (the official
layout by species or breed, or a synthetic stand-in) or ``image_folder`` (``root/<class>/*.jpg``);
``shards`` packs and ``verify`` re-checks the tar shards, ``locations`` finds them, ``reading``
turns tars into raw samples, ``transforms`` decodes and crops, ``loader`` plans equal work for every rank and worker,
``device_augment`` finishes each batch on the training device, ``samples`` serves the plots.
The names below are the stage's public API.
"""

from toolkit.data.eval_loader import EvalLoader, make_eval_loader
from toolkit.data.loader import TrainLoader, make_train_loader
from toolkit.data.locations import (
    check_shards_exist,
    check_split_has_samples,
    load_info,
    split_urls,
)
from toolkit.data.samples import raw_samples, read_samples, synthetic_batches
from toolkit.data.transforms import build_eval_transform, build_train_transform, decode_jpeg
from toolkit.formats import split_size

__all__ = [
    "TrainLoader",
    "EvalLoader",
    "make_eval_loader",
    "make_train_loader",
    "check_shards_exist",
    "check_split_has_samples",
    "load_info",
    "split_urls",
    "raw_samples",
    "read_samples",
    "synthetic_batches",
    "build_eval_transform",
    "build_train_transform",
    "decode_jpeg",
    "split_size",
]
