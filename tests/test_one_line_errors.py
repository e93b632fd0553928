"""Where a traceback used to come out, one line does: a read-only --out for every recipe, a disk that fills
while a checkpoint is written (nothing saved before is lost), and bad corruption arguments."""
import os

import pytest
import torch

from layeract_patch.corruptions import corrupt
from layeract_patch.training.checkpoint import load_checkpoint
from test_recipes import CNN, RESNET, recipe
from test_study_records import read_only
from test_training import make_imagefolder

RECIPES = RESNET.parent


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_imagefolder(tmp_path_factory.mktemp("data"), classes=3, per_class=(4, 2))


@pytest.mark.parametrize("script, args", [
    ("cifar_resnet.py", ["--depth", "8"]),
    ("cifar_cnn.py", []),
    ("finetune.py", ["--model", "timm/test_efficientnet"]),
    ("scale_correlation.py", []),
    ("eval_corruptions.py", ["--checkpoint", "{data}"]),
    ("reproduce.py", ["--preset", "smoke"]),
])
def test_a_read_only_out_is_one_error_line_for_every_recipe(script, args, data, tmp_path, capsys):
    with read_only(tmp_path / "locked") as locked:
        argv = [a.format(data=data) for a in args] + ["--data-dir", data, "--out", locked / "run"]
        code, stdout, err = recipe(RECIPES / script, *argv, capsys=capsys)
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
        assert f"--out '{locked / 'run'}' cannot be written (its folder '{locked}' is not writable)" in err
        assert list(locked.iterdir()) == []


def test_a_disk_filling_during_a_checkpoint_is_one_line_and_keeps_the_last_checkpoint(data, tmp_path, capsys,
                                                                                       monkeypatch):
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full, a device whose writes fail as on a full disk")
    real_save, calls = torch.save, []

    def save(obj, f, *args, **kwargs):  # the second checkpoint goes to a full disk: torch's own failure
        calls.append(1)
        if len(calls) == 2:
            with open("/dev/full", "wb") as full:
                return real_save(obj, full, *args, **kwargs)
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    out = tmp_path / "run"
    code, _, err = recipe(CNN, "--data-dir", data, "--out", out, "--max-iter", "4", "--eval-every", "2",
                          "--batch-size", "4", "--val-fraction", "0", capsys=capsys)
    checkpoint = out / "seed_0" / "checkpoint.pt"
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 1 and "Traceback" not in err and errors == [err.strip().splitlines()[-1]], err
    assert f"cannot write '{checkpoint}' (No space left on device); the file there before, if any, is unchanged; " \
           f"make room, then continue with the same command plus --resume" in errors[0]
    assert load_checkpoint(checkpoint)["step"] == 2  # the checkpoint of iteration 2 is intact
    assert [p.name for p in checkpoint.parent.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize("kwargs, message", [
    ({"severity": 3.0}, "severity must be one of (1, 2, 3, 4, 5) (an int), got 3.0"),
    ({"severity": 3, "seed": 2 ** 64}, "seed must be an int from 0 to 2**64 - 1, got 18446744073709551616"),
    ({"severity": 3, "seed": 1.5}, "seed must be an int from 0 to 2**64 - 1, got 1.5"),  # was truncated to 1
])
def test_bad_corruption_arguments_are_one_clear_error(kwargs, message):
    images = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    with pytest.raises(ValueError) as err:
        corrupt(images, "fog", **kwargs)
    assert str(err.value) == message
