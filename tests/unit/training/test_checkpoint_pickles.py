"""Checkpoints are read as tensors only: a planted pickle never runs, even when a library asks torch.load for
more."""

from __future__ import annotations

import pickle

import pytest
import torch

from helpers import plant_pickle


def test_resuming_reads_pickles_as_tensors_only_even_when_a_library_asks_for_more(tmp_path):
    """An Accelerate version that loads with weights_only=False still cannot run a planted pickle."""
    from toolkit.training.state import weights_only_loads

    marker = tmp_path / "pwned"
    plant_pickle(tmp_path / "optimizer.bin", marker)
    with weights_only_loads(), pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "optimizer.bin", weights_only=False)
    assert not marker.exists()
    assert torch.load.__module__.startswith("torch")  # the real one is back afterwards
