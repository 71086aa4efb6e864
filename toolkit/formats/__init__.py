"""The on-disk formats that connect the stages, each defined once and used by every reader and writer.

* ``manifest``: the shard manifest (``info.json``), between packing and training.
* ``run_dir``: the run folder (``RunDir``, ``Predictions``), between training and everything after it.
* ``model_file``: the model file (``model.safetensors`` with its metadata), between training and
  evaluation, prediction, reports and export. Import it as ``toolkit.formats.model_file``: it needs
  torch, the other two do not.
* ``sample_order``: the training sample order a checkpoint records (``SampleOrder``), defined without
  the process count.
"""

from toolkit.formats.manifest import (
    MANIFEST_KEYS,
    MANIFEST_NAME,
    MANIFEST_VERSION,
    PACK_HINT,
    SHARD_NAME,
    SPLITS,
    class_names,
    dataset_summary,
    is_plain_file_name,
    label_field,
    manifest_problem,
    parse_manifest,
    read_manifest,
    selection_problem,
    shard_name,
    split_info,
    split_size,
    write_manifest,
)
from toolkit.formats.run_dir import HISTORY_FIELDS, MONITORS, EpochRow, Predictions, RunDir, version_of, versioned_name

__all__ = [
    "MANIFEST_KEYS",
    "MANIFEST_NAME",
    "MANIFEST_VERSION",
    "PACK_HINT",
    "SHARD_NAME",
    "SPLITS",
    "EpochRow",
    "HISTORY_FIELDS",
    "MONITORS",
    "Predictions",
    "RunDir",
    "class_names",
    "dataset_summary",
    "is_plain_file_name",
    "label_field",
    "manifest_problem",
    "parse_manifest",
    "read_manifest",
    "selection_problem",
    "shard_name",
    "split_info",
    "split_size",
    "version_of",
    "versioned_name",
    "write_manifest",
]
