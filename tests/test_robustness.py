import json

import numpy as np
import pytest
import torch
from torch import nn

from layeract_patch.corruptions import CORRUPTIONS, GROUPS, corrupt
from layeract_patch.training.robustness import CORRUPTION_CHUNK, evaluate_corruptions, format_corruption_table

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


class Brightness(nn.Module):
    """Class 1 when the normalised image is brighter than the mean (raw mean above 127.5), else class 0;
    counts its calls and remembers the mode it ran in."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(()))
        self.calls, self.modes, self.grad = 0, set(), set()

    def forward(self, x):
        self.calls += 1
        self.modes.add(self.training)
        self.grad.add(torch.is_grad_enabled())
        m = x.mean(dim=(1, 2, 3)) + self.bias
        return torch.stack([-m, m], dim=1)


def fake_cifar_c(folder, per=10):
    """Official-layout files where corruption number i at severity s has (i + s) % 11 bright images out of
    `per` = 10, all labelled 1, so the Brightness model's top-1 there is 10 * ((i + s) % 11) percent."""
    labels = np.ones(5 * per, np.int64)
    for i, name in enumerate(CORRUPTIONS):
        images = np.full((5 * per, 32, 32, 3), 40, np.uint8)
        for s in range(1, 6):
            images[(s - 1) * per:(s - 1) * per + (i + s) % 11] = 220
        np.save(folder / f"{name}.npy", images)
    np.save(folder / "labels.npy", labels)


def clean_set(n=12):
    images = torch.full((n, 3, 32, 32), 40, dtype=torch.uint8)
    images[: n // 3] = 220  # a third bright
    return images, torch.ones(n, dtype=torch.long)


def test_group_means_from_official_files(tmp_path):
    fake_cifar_c(tmp_path)
    images, labels = clean_set()
    model = Brightness().train()
    results = evaluate_corruptions(model, images, labels, MEAN, STD, corruptions_dir=tmp_path, batch_size=7)
    assert results["clean"]["top1"] == pytest.approx(100 / 3)
    assert results["corruptions"]["fog"]["2"]["top1"] == pytest.approx(10.0 * ((CORRUPTIONS.index("fog") + 2) % 11))
    # by hand: Noise = gaussian/shot/impulse (i = 0, 1, 2): (i + s) % 11 over s = 1..5 averages 3, 4, 5
    # bright images of 10 -> 30, 40, 50 percent -> 40. Extra (i = 15..18): 70, 80, 68, 56 -> 68.5.
    assert results["groups"]["Noise"] == pytest.approx(40.0)
    assert results["groups"]["Extra"] == pytest.approx(68.5)
    assert results["groups"]["Total"] == pytest.approx(
        sum(10.0 * ((i + s) % 11) for i in range(19) for s in range(1, 6)) / 95)
    assert set(results["groups"]) == set(GROUPS)
    # the model ran in eval mode without gradients, and was handed back in training mode
    assert model.modes == {False} and model.grad == {False} and model.training
    json.dumps(results)  # JSON-ready
    table = format_corruption_table(results)
    assert "| fog |" in table and "Noise" in table and "40.00" in table


def test_generated_corruptions_match_corrupt_and_ignore_batch_size():
    images = torch.randint(0, 256, (CORRUPTION_CHUNK + 5, 3, 16, 16), generator=torch.Generator().manual_seed(0),
                           dtype=torch.uint8)
    labels = (images.float().mean(dim=(1, 2, 3)) > 127.5).long()  # the model is right on every clean image
    names = ["gaussian_noise", "contrast"]
    a = evaluate_corruptions(Brightness(), images, labels, MEAN, STD, corruptions=names, severities=[5, 1],
                             batch_size=64, seed=3)
    lines = []
    b = evaluate_corruptions(Brightness(), images, labels, MEAN, STD, corruptions=names, severities=[1, 5],
                             batch_size=1000, seed=3, progress=lines.append)
    assert len(lines) == 2 and lines[1].startswith("corruption 2/2 contrast: top-1 ")
    assert f"{b['corruptions']['contrast']['5']['top1']:.1f} (severities 1 5; " in lines[1] and "elapsed" in lines[1]
    assert a["clean"]["top1"] == 100.0 and a["severities"] == [1, 5]
    for name in names:
        for s in ("1", "5"):
            assert a["corruptions"][name][s]["top1"] == pytest.approx(b["corruptions"][name][s]["top1"])
    # by hand: corrupt the two chunks with their seeds and count
    bad = torch.cat([corrupt(images[:CORRUPTION_CHUNK], "gaussian_noise", 5, seed=3 * 2 ** 20),
                     corrupt(images[CORRUPTION_CHUNK:], "gaussian_noise", 5, seed=3 * 2 ** 20 + 1)])
    x = (bad.float() / 255 - 0.5) / 0.25
    want = 100.0 * ((x.mean(dim=(1, 2, 3)) > 0).long() == labels).float().mean().item()
    assert a["corruptions"]["gaussian_noise"]["5"]["top1"] == pytest.approx(want)
    assert a["corruption_mean"]["contrast"] == pytest.approx(
        (a["corruptions"]["contrast"]["1"]["top1"] + a["corruptions"]["contrast"]["5"]["top1"]) / 2)
    assert a["groups"] == {}  # no group is complete with two corruptions


def test_mce_against_a_baseline(tmp_path):
    fake_cifar_c(tmp_path)
    images, labels = clean_set()
    names = ["fog", "snow"]
    baseline = {"corruptions": {n: {str(s): {"top1": 50.0, "loss": 1.0} for s in range(1, 6)} for n in names}}
    results = evaluate_corruptions(Brightness(), images, labels, MEAN, STD, corruptions=names,
                                   corruptions_dir=tmp_path, baseline=baseline)
    for n in names:  # CE = 100 * sum of errors / sum of the baseline's errors (50 per severity)
        errors = sum(100.0 - 10.0 * ((CORRUPTIONS.index(n) + s) % 11) for s in range(1, 6))
        assert results["mce"][n] == pytest.approx(100.0 * errors / 250.0)
    assert results["mce"]["mCE"] == pytest.approx((results["mce"]["fog"] + results["mce"]["snow"]) / 2)
    assert "mCE" in format_corruption_table(results)


@pytest.mark.parametrize("change, message", [
    (dict(labels=torch.ones(3, dtype=torch.long)), "one label per image"),
    (dict(corruptions=["fog", "haze"]), "valid names"),
    (dict(corruptions="fog"), "non-empty list"),
    (dict(severities=[0]), "severity must be one of"),
    (dict(mean=(0.5, 0.5)), "3 per-channel values"),
    (dict(std=(0.5, 0.0, 0.5)), "std must be positive"),
    (dict(batch_size=0), "batch_size must be a positive int"),
    (dict(baseline={"corruptions": {}}), "baseline lacks results for fog/1"),
    (dict(images=torch.zeros(12, 3, 32, 32)), "must be uint8"),
])
def test_bad_input_fails_before_any_work(change, message):
    images, labels = clean_set()
    args = dict(images=images, labels=labels, mean=MEAN, std=STD, corruptions=["fog"], severities=[1, 2]) | change
    model = Brightness()
    with pytest.raises(ValueError) as err:
        evaluate_corruptions(model, args.pop("images"), args.pop("labels"), args.pop("mean"), args.pop("std"), **args)
    assert message in str(err.value) and model.calls == 0


def test_missing_official_file_fails_before_any_work(tmp_path):
    images, labels = clean_set()
    model = Brightness()
    with pytest.raises(FileNotFoundError, match="fog.npy"):
        evaluate_corruptions(model, images, labels, MEAN, STD, corruptions=["fog"], corruptions_dir=tmp_path)
    assert model.calls == 0
