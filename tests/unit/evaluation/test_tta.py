"""Test-time augmentation (toolkit.evaluation.tta): the documented views, averaged as probabilities."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms.functional import five_crop, resize

from helpers import error_line, run_in_process
from toolkit.evaluation.tta import CROP_FRACTION, apply_tta, tta_views


def tiny_model(seed: int = 0) -> torch.nn.Module:
    """A small conv net that is not flip-invariant (the flattened map keeps left and right apart)."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 5)
    ).eval()


class FlipInvariant(torch.nn.Module):
    """Invariant to a left-right flip by construction: the logits of x and of its mirror image, summed."""

    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_model(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) + self.net(torch.flip(x, dims=[-1]))


class Recorder(torch.nn.Module):
    """Records every batch it is given; the logits are a fixed function of the pixels."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        return x.flatten(1)[:, :3] * 3.0


def images(seed: int = 2) -> torch.Tensor:
    return torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_hflip_is_the_mean_of_the_softmax_of_the_image_and_its_mirror():
    model, x = tiny_model(), images()
    expected = (torch.softmax(model(x), 1) + torch.softmax(model(torch.flip(x, dims=[3])), 1)) / 2
    got = torch.softmax(apply_tta(model, x, "hflip"), 1)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert not torch.allclose(got, torch.softmax(model(x), 1), atol=1e-3)  # the flip changed something
    # the cross-entropy of the returned logits is that of the averaged distribution
    labels = torch.tensor([0, 1, 2, 3])
    loss = F.cross_entropy(apply_tta(model, x, "hflip"), labels)
    assert float(loss) == pytest.approx(float(-expected[torch.arange(4), labels].log().mean()), abs=1e-6)


@torch.no_grad()
def test_no_tta_is_the_model_output_untouched():
    model, x = tiny_model(), images()
    assert torch.equal(apply_tta(model, x, "none"), model(x))


@torch.no_grad()
def test_a_flip_invariant_model_gives_the_same_probabilities_with_and_without_tta():
    model, x = FlipInvariant(), images(5)
    plain = torch.softmax(apply_tta(model, x, "none"), 1)
    torch.testing.assert_close(torch.softmax(apply_tta(model, x, "hflip"), 1), plain, rtol=0, atol=1e-6)


@torch.no_grad()
def test_hflip_crops_uses_exactly_the_documented_ten_views():
    x = images(7)
    side = round(8 * CROP_FRACTION)
    corners = five_crop(x, [side, side])[:4]  # torchvision's TenCrop corners: tl, tr, bl, br
    bases = [x] + [resize(c, [8, 8], antialias=True) for c in corners]
    expected = [view for base in bases for view in (base, torch.flip(base, dims=[-1]))]
    model = Recorder()
    logits = apply_tta(model, x, "hflip_crops")
    assert len(model.seen) == len(tta_views(x, "hflip_crops")) == 10
    for got, want in zip(model.seen, expected):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    mean = torch.stack([torch.softmax(model(v), 1) for v in expected]).mean(0)
    torch.testing.assert_close(torch.softmax(logits, 1), mean, rtol=0, atol=1e-6)


def test_unknown_tta_mode_is_an_error():
    with pytest.raises(ValueError, match="hflip_crops"):
        tta_views(images(), "vflip")


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_bad_tta_flag_is_one_line_exit_2(command, tmp_path, capsys):
    if command == "evaluate":
        from toolkit.evaluate import main

        argv = ["--model", str(tmp_path / "m.safetensors"), "--shards", str(tmp_path), "--tta", "flip"]
    else:
        from toolkit.predict import main

        argv = ["--model", str(tmp_path / "m.safetensors"), "x.jpg", "--tta", "flip"]
    assert run_in_process(main, argv) == 2
    line = error_line(capsys.readouterr().err)
    assert "--tta" in line and "hflip_crops" in line
