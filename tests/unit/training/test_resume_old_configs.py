"""resume=auto adopts a run saved by an older toolkit: every config key added since is either filled in
as the older run behaved (BEFORE_KEYS) or not compared (NOT_COMPARED)."""

from __future__ import annotations

from pathlib import Path

import yaml

from toolkit.config import Config, OutputConfig, TrainConfig, to_dict
from toolkit.training.run_folder import BEFORE_KEYS, NOT_COMPARED, newest_matching_run

OLD_CONFIG = Path(__file__).parents[2] / "fixtures" / "run_format_v1" / "config.yaml"


def keys_added_since(old: dict, new: dict) -> list[tuple[str, str]]:
    return [(section, key) for section, values in new.items() for key in values if key not in old.get(section, {})]


def test_every_key_added_since_the_v1_run_format_says_how_an_older_run_behaved():
    added = keys_added_since(yaml.safe_load(OLD_CONFIG.read_text()), to_dict(Config()))
    assert added  # the fixture predates keys that exist today, so this checks something
    unexplained = [k for k in added if k not in BEFORE_KEYS and k not in NOT_COMPARED]
    assert not unexplained, f"add these to run_folder.BEFORE_KEYS (or NOT_COMPARED): {unexplained}"


def test_resume_auto_adopts_a_run_whose_config_lacks_every_key_added_since(tmp_path):
    two_classes = TrainConfig(monitor="val_auc", monitor_mode="max")  # as resolve_config decides for 2 classes
    cfg = Config(train=two_classes, output=OutputConfig(dir=str(tmp_path), run_name=None))
    saved = to_dict(cfg)
    for section, key in keys_added_since(yaml.safe_load(OLD_CONFIG.read_text()), saved):
        del saved[section][key]
    (tmp_path / "old" / "checkpoints" / "step-00000008").mkdir(parents=True)
    (tmp_path / "old" / "config.yaml").write_text(yaml.safe_dump(saved))
    assert newest_matching_run(tmp_path, cfg) == ("old", None)
