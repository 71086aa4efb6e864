"""docs/config.md lists every config key, and is what the config dataclasses say today."""

import dataclasses

from toolkit.config import Config
from toolkit.config_reference import DOC, KEYS, config_keys, main, render


def test_every_key_is_described_and_the_doc_is_current(capsys):
    assert main(["--check"]) == 0, capsys.readouterr().err  # fix: python -m toolkit.config_reference


def test_the_reference_has_each_key_with_its_default():
    keys = [key for key, *_ in config_keys()]
    expected = [
        f"{section.name}.{field.name}"
        for section in dataclasses.fields(Config)
        for field in dataclasses.fields(section.default_factory())
    ]
    assert keys == expected and set(KEYS) == set(keys)
    text = render()
    assert "| `optimizer.lr` | a number | `0.001` |" in text and "`--lr`" in text
    assert "| `train.mixed_precision` | a string or null | `null` | `no`, `fp16`, `bf16` |" in text
    assert DOC.name == "config.md"


def test_a_new_key_without_a_description_fails(monkeypatch, capsys):
    monkeypatch.delitem(KEYS, "optimizer.lr")
    assert main(["--check"]) == 1
    assert "describe ['optimizer.lr']" in capsys.readouterr().err
