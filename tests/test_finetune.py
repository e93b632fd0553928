"""recipes/finetune.py: a saved timm / torchvision model -> LayerAct -> fine-tuned, on an ImageFolder built here."""
import argparse
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from layeract_patch import LAHardSiLU
from layeract_patch.training import finetune as ft
from layeract_patch.training import pretrained
from layeract_patch.training.progress import Progress

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("finetune_recipe", ROOT / "recipes" / "finetune.py")
recipe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(recipe)

COLORS = [(200, 40, 40), (40, 200, 40), (40, 40, 200)]  # one class per dominant colour: learnable in a few steps


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("val", 4)):
        for index, color in enumerate(COLORS):
            folder = root / split / f"class_{index}"
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(np.array(color) + rng.normal(0, 40, (40, 40, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def timm_weights(tmp_path_factory):
    """A timm training checkpoint: DDP-prefixed state_dict next to the argparse.Namespace timm stores."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", num_classes=len(COLORS))
    path = tmp_path_factory.mktemp("timm") / "checkpoint.pth.tar"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
                "args": argparse.Namespace(model="test_efficientnet")}, path)
    return path, model.state_dict()


@pytest.fixture(scope="module")
def torchvision_weights(tmp_path_factory):
    """A torchvision references checkpoint {'model': ...} with the 1000-class ImageNet head."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small()
    path = tmp_path_factory.mktemp("tv") / "mobilenet_v3_small.pth"
    torch.save({"model": model.state_dict(), "epoch": 0}, path)
    return path, model.state_dict()


def cli(*args, out=None):
    argv = [str(a) for a in args] + (["--out", str(out)] if out is not None else [])
    return recipe.run(argv + ["--workers", "0", "--img-size", "32", "--batch-size", "8"])


def timm_args(image_root, timm_weights, *extra):
    return ("--model", "timm/test_efficientnet", "--weights", timm_weights[0], "--data-dir", image_root,
            "--lr", "3e-3", "--min-scale", "0.5") + extra


def test_timm_checkpoint_is_converted_finetuned_and_reported(image_root, timm_weights, tmp_path, capsys):
    import timm
    from timm.data import create_transform, resolve_data_config
    from torchvision.datasets import ImageFolder

    out = tmp_path / "run"
    assert cli(*timm_args(image_root, timm_weights, "--max-iter", "8"), out=out) == 0
    results = json.loads((out / "results.json").read_text())
    for key in ("original", "converted", "finetuned"):
        assert set(results[key]) >= {"top1", "loss", "loss_std"} and "top5" not in results[key]  # 3 classes
        assert 0 <= results[key]["top1"] <= 100 and results[key]["count"] == 12
    assert results["classes"] == 3 and results["new_head"] is False and results["iterations"] == 8
    assert results["eval_split"] == "val"  # the held-out split the scores are of, by its folder
    assert results["conversion"]["swapped"] > 0 and "baseline" not in results

    # "original" is the saved model, unconverted, on timm's own preprocessing for it.
    model = timm.create_model("test_efficientnet", num_classes=3)
    model.load_state_dict(timm_weights[1])
    model.eval()
    config = resolve_data_config({"input_size": (3, 32, 32)}, model=model)
    data = ImageFolder(str(image_root / "val"), transform=create_transform(**config))
    images = torch.stack([image for image, _ in data])
    with torch.no_grad():
        loss = nn.functional.cross_entropy(model(images), torch.tensor(data.targets)).item()
    assert results["original"]["loss"] == pytest.approx(loss, rel=1e-5)
    assert results["converted"]["loss"] != pytest.approx(loss, rel=1e-5)  # the swap changes the function
    assert results["finetuned"]["loss"] < results["converted"]["loss"]  # and fine-tuning learns

    saved = torch.load(out / "checkpoint_finetuned.pt", weights_only=False)
    assert saved["step"] == 8 and saved["finished"]
    assert "optimizer" not in saved  # a finished run keeps its weights, not AdamW's two copies of them
    assert saved["model"].keys() == timm_weights[1].keys()  # affine=False adds nothing: weights stay portable
    assert not torch.equal(saved["model"]["conv_stem.weight"], timm_weights[1]["conv_stem.weight"])
    printed = capsys.readouterr()
    assert all(row in printed.out for row in ("original", "converted", "finetuned"))
    # it says what it evaluates while a person waits, and where everything went
    assert "original: evaluating on the 12 images of val/" in printed.err
    assert printed.out.strip().splitlines()[-1] == (f"results in {out / 'results.json'}, weights in "
                                                    f"{out / 'checkpoint_finetuned.pt'}")
    # stopped after training, before its evaluation was recorded: --resume evaluates the kept weights, as they were
    before = json.loads((out / "results.json").read_text())
    (out / "results.json").write_text(json.dumps({k: v for k, v in before.items() if k != "finetuned"}))
    assert cli(*timm_args(image_root, timm_weights, "--max-iter", "8"), "--resume", out=out) == 0
    after = json.loads((out / "results.json").read_text())
    assert after["finetuned"] == before["finetuned"] and after["history"] == before["history"]


def test_torchvision_new_head_affine_conversion_and_baseline(image_root, torchvision_weights, tmp_path):
    out = tmp_path / "run"
    assert cli("--model", "torchvision/mobilenet_v3_small", "--weights", torchvision_weights[0],
               "--data-dir", image_root, "--act", "la_hardsilu_affine", "--max-iter", "2", "--baseline", out=out) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["classes"] == 3 and results["new_head"] is True
    assert {"original", "converted", "finetuned", "baseline"} <= set(results)

    converted = torch.load(out / "checkpoint_finetuned.pt", weights_only=False)["model"]
    baseline = torch.load(out / "checkpoint_baseline.pt", weights_only=False)["model"]
    assert converted["classifier.3.weight"].shape == baseline["classifier.3.weight"].shape == (3, 1024)
    original_keys = set(torchvision_weights[1])
    assert set(baseline) == original_keys  # the baseline keeps its activations
    affine = set(converted) - original_keys  # every converted site got its own LayerAct weight and bias
    assert affine and all(key.endswith((".weight", ".bias")) for key in affine)


def test_ctrl_c_saves_and_resume_matches_the_uninterrupted_run(image_root, timm_weights, tmp_path, monkeypatch,
                                                               capsys):
    args = timm_args(image_root, timm_weights, "--max-iter", "6", "--save-every", "100")
    assert cli(*args, out=tmp_path / "whole") == 0

    update = Progress.update

    def press_ctrl_c_after_step_3(self, step, **metrics):
        update(self, step, **metrics)
        if step == 3 and self.desc == "finetuned":  # the training's display, not the image check's
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(Progress, "update", press_ctrl_c_after_step_3)
    assert cli(*args, out=tmp_path / "split") == 130
    monkeypatch.undo()
    assert torch.load(tmp_path / "split" / "checkpoint_finetuned.pt", weights_only=False)["step"] == 3
    assert "--resume" in capsys.readouterr().err
    assert cli(*args, "--resume", out=tmp_path / "split") == 0

    whole = json.loads((tmp_path / "whole" / "results.json").read_text())
    split = json.loads((tmp_path / "split" / "results.json").read_text())
    assert split["finetuned"] == whole["finetuned"]
    assert split["history"] == whole["history"]

    capsys.readouterr()
    assert cli(*timm_args(image_root, timm_weights, "--max-iter", "6", "--lr", "1e-3"), "--resume",
               out=tmp_path / "split") == 2
    assert "other settings" in capsys.readouterr().err
    assert cli(*args, out=tmp_path / "split") == 2
    assert "--resume" in capsys.readouterr().err


@pytest.mark.parametrize("case, message", [
    ("no library", "must name its library"),
    ("unknown model", "unknown timm model"),
    ("no data", "does not exist"),
    ("no weights file", "does not exist"),
    ("other architecture", "do not fit"),
    ("nothing to resume", "no run to resume"),
    ("batch too large", "fewer than --batch-size"),
])
def test_bad_input_is_one_error_line_and_exit_2(case, message, image_root, timm_weights, tmp_path, capsys):
    flags = {"--model": "timm/test_efficientnet", "--weights": timm_weights[0], "--data-dir": image_root,
             "--max-iter": 1, "--batch-size": 8, "--workers": 0, "--out": tmp_path / "out"}
    flags.update({
        "no library": {"--model": "test_efficientnet"},
        "unknown model": {"--model": "timm/not_a_model_at_all"},
        "no data": {"--data-dir": tmp_path / "missing"},
        "no weights file": {"--weights": tmp_path / "missing.pth"},
        "other architecture": {"--model": "torchvision/mobilenet_v3_small"},
        "nothing to resume": {"--resume": None},
        "batch too large": {"--batch-size": 32},  # 24 training images cannot fill one batch
    }[case])
    argv = [str(part) for flag, value in flags.items() for part in ((flag,) if value is None else (flag, value))]
    assert recipe.run(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error:" in err and message in err, err


def test_flags_outside_the_choices_are_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_info:
        recipe.get_args_parser().parse_args(["--model", "timm/x", "--data-dir", "d", "--out", "o", "--act", "relu"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        recipe.get_args_parser().parse_args(["--model", "timm/x", "--data-dir", "d", "--out", "o", "--epochs", "1",
                                             "--max-iter", "5"])
    assert "not allowed with" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        recipe.get_args_parser().parse_args(["--model", "timm/x", "--data-dir", "d", "--out", "o", "--model-kwargs",
                                             "act"])
    assert "KEY=VALUE" in capsys.readouterr().err


def test_model_kwargs_reach_the_model_factory(timm_weights):
    args = recipe.get_args_parser().parse_args(["--model", "timm/x", "--data-dir", "d", "--out", "o",
                                                "--model-kwargs", "drop_rate=0.25", "act_layer=relu"])
    assert args.model_kwargs == {"drop_rate": 0.25, "act_layer": "relu"}
    model = ft.create_model("timm/test_efficientnet", timm_weights[0], **args.model_kwargs)
    assert model.drop_rate == 0.25 and isinstance(model.bn1.act, nn.ReLU)
    with pytest.raises(ValueError, match="does not take these options"):
        ft.create_model("timm/test_efficientnet", timm_weights[0], no_such_option=1)


def test_the_command_line_exits_2_with_one_line(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "recipes" / "finetune.py"), "--model", "resnet18",
                             "--data-dir", str(tmp_path), "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))  # this checkout's package, not an installed one
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "error:" in result.stderr and "timm/<name>" in result.stderr


def test_missing_pretrained_weights_offline_say_to_pass_a_file(monkeypatch):
    import timm
    import torchvision.models._api as tv_api

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(pretrained, "_reachable", lambda host: True)  # the server answers; the download fails
    monkeypatch.setattr(tv_api, "load_state_dict_from_url", offline)
    with pytest.raises(ValueError, match="--weights PATH"):
        ft.create_model("torchvision/mobilenet_v3_small")
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: offline())
    with pytest.raises(ValueError, match="--weights PATH"):
        ft.create_model("timm/test_efficientnet")
    monkeypatch.undo()
    assert not timm.is_model_pretrained("lcnet_035")
    with pytest.raises(ValueError, match="no pretrained weights"):
        ft.create_model("timm/lcnet_035")


def test_an_unreachable_hub_fails_at_once_naming_hf_hub_offline_and_weights(monkeypatch, tmp_path):
    import timm

    def never(*args, **kwargs):
        raise AssertionError("no download may start when the server cannot be reached")

    monkeypatch.setattr(timm, "create_model", never)
    monkeypatch.setattr(torchvision.models, "get_model", never)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # an empty cache
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    asked = []
    monkeypatch.setattr(pretrained, "_reachable", lambda host: asked.append(host) and False)
    for spec, host in (("timm/resnet18", "huggingface.co"), ("torchvision/mobilenet_v3_small", "download.pytorch.org")):
        with pytest.raises(ValueError) as err:
            ft.create_model(spec)
        assert f"cannot reach {host}" in str(err.value) and "--weights PATH" in str(err.value)
        assert "HF_HUB_OFFLINE=1" in str(err.value) and asked[-1] == host

    # HF_HUB_OFFLINE=1: no server is asked at all; weights missing from the cache are one error naming --weights
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    asked.clear()
    for spec in ("timm/resnet18", "torchvision/mobilenet_v3_small"):
        with pytest.raises(ValueError, match="HF_HUB_OFFLINE is set .* not in the local cache; pass a local state_dict "
                                             "or checkpoint with --weights PATH"):
            ft.create_model(spec)
    assert asked == []
    # torchvision's weights already in torch.hub's cache are read without asking any server
    (tmp_path / "checkpoints").mkdir()
    url = torchvision.models.get_model_weights("mobilenet_v3_small").DEFAULT.url
    (tmp_path / "checkpoints" / url.rsplit("/", 1)[1]).write_bytes(b"")
    monkeypatch.setattr(torchvision.models, "get_model", lambda *a, **k: "built")
    assert ft.create_model("torchvision/mobilenet_v3_small") == "built" and asked == []


def test_load_weights_reads_the_usual_checkpoint_layouts(tmp_path):
    plain = nn.Linear(2, 3).state_dict()
    ema = {k: v + 1 for k, v in plain.items()}
    layouts = {"plain": plain, "timm": {"state_dict": plain, "epoch": 1}, "torchvision": {"model": plain},
               "ddp": {"state_dict": {f"module._orig_mod.{k}": v for k, v in plain.items()}},
               "ema": {"state_dict": plain, "state_dict_ema": ema}}
    for name, content in layouts.items():
        torch.save(content, tmp_path / f"{name}.pth")
        loaded = ft.load_weights(tmp_path / f"{name}.pth")
        expected = ema if name == "ema" else plain  # timm's convention: the EMA weights when there are some
        assert loaded.keys() == expected.keys() and all(torch.equal(loaded[k], expected[k]) for k in expected), name
    from safetensors.torch import save_file

    save_file(plain, tmp_path / "w.safetensors")
    assert torch.equal(ft.load_weights(tmp_path / "w.safetensors")["weight"], plain["weight"])

    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read weights file"):
        ft.load_weights(tmp_path / "garbage.pth")
    torch.save({"epoch": 3}, tmp_path / "empty.pth")
    with pytest.raises(ValueError, match="holds no state_dict"):
        ft.load_weights(tmp_path / "empty.pth")


def test_new_heads_for_timm_and_torchvision_models():
    import timm
    import torchvision

    model = timm.create_model("test_efficientnet")
    ft.set_num_classes(model, 5)
    assert model.num_classes == 5 and model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 5)

    model = torchvision.models.mobilenet_v3_small()
    assert ft.classifier_name(model) == "classifier.3" and ft.num_classes(model) == 1000
    ft.set_num_classes(model, 7)
    assert isinstance(model.classifier[3], nn.Linear) and model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 7)

    with pytest.raises(ValueError, match="no nn.Linear classifier"):
        ft.set_num_classes(torchvision.models.squeezenet1_1(), 7)


def test_held_out_labels_follow_the_train_class_folders(tmp_path):
    for split, classes in (("train", "abc"), ("test", "bc")):
        for name in classes:
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(tmp_path / split / name / "0.png")
    train, held_out = ft.image_folders(tmp_path)
    assert held_out.targets == [1, 2] and held_out.classes == train.classes == ["a", "b", "c"]
    (tmp_path / "test" / "z").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "test" / "z" / "0.png")
    with pytest.raises(ValueError, match="missing from"):
        ft.image_folders(tmp_path)


def warmup_cosine_factor(step, warmup, total):
    """The schedule as it was written by hand before torch's schedulers ran it (checkpoint format 1)."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@pytest.mark.parametrize("warmup,total", [(0, 20), (1, 20), (4, 20), (20, 20), (30, 10), (0, 1), (50, 1000)])
def test_schedule_warms_up_then_decays_to_zero_step_by_step(warmup, total):
    model = nn.Linear(2, 2)
    optimizer = ft.build_optimizer(model, "sgd", 0.1, 0.0, 0.9)
    scheduler = ft.warmup_cosine(optimizer, warmup, total)
    for step in range(total + 1):  # the factor of every step the run takes, and the one after its last
        assert optimizer.param_groups[0]["lr"] / 0.1 == pytest.approx(warmup_cosine_factor(step, warmup, total),
                                                                       abs=1e-12), step
        optimizer.step()
        scheduler.step()


def test_weight_decay_spares_the_1d_parameters():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), LAHardSiLU(affine=True, num_channels=4))
    groups = ft.build_optimizer(model, "adamw", 1e-3, 0.05, 0.9).param_groups
    decay = {id(p) for g in groups if g["weight_decay"] == 0.05 for p in g["params"]}
    assert decay == {id(model[0].weight)}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_a_checkpoint_of_the_old_format_is_refused_with_one_clear_message(tmp_path):
    from layeract_patch.training.checkpoint import save_checkpoint

    save_checkpoint({"format": 1, "step": 1, "settings": {}}, tmp_path / "checkpoint.pt")  # a LambdaLR's state
    with pytest.raises(ValueError, match="written by another version of this package"):
        ft.finetune(nn.Linear(2, 2), [], iterations=2, batch_size=1, opt="sgd", lr=0.1, weight_decay=0.0,
                    checkpoint=tmp_path / "checkpoint.pt", resume=True)


def test_act_choices_are_the_catalogue_layer_acts_each_also_affine():
    from layeract_patch import catalogue

    assert ft.ACT_CHOICES == catalogue.layer_act_spellings() + ("auto",)
    assert {"la_gelu", "la_gelu_tanh", "la_gelu_affine", "la_gelu_tanh_affine"} <= set(ft.ACT_CHOICES)
    assert ft.conversion_target("la_gelu_tanh_affine") == ("la_gelu_tanh", True)
    assert ft.conversion_target("LA_GELU") == ("la_gelu", False)


def test_auto_maps_hard_swish_to_la_hardsilu():
    to, affine = ft.conversion_target("auto")
    assert to[nn.Hardswish] == "la_hardsilu" and to[nn.ReLU] == to[nn.SiLU] == "la_silu" and affine is False
    assert ft.conversion_target("la_hardsilu_affine") == ("la_hardsilu", True)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Hardswish())
    from layeract_patch.convert import convert_activations

    assert isinstance(convert_activations(model, to=to)[1], LAHardSiLU)


def test_resume_refuses_a_changed_data_set(image_root, timm_weights, tmp_path, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(image_root, data)
    args = ("--model", "timm/test_efficientnet", "--weights", timm_weights[0], "--data-dir", data, "--lr", "3e-3",
            "--max-iter", "2")
    assert cli(*args, out=tmp_path / "run") == 0
    shutil.copy(data / "train" / "class_0" / "0.png", data / "train" / "class_0" / "extra.png")
    capsys.readouterr()
    assert cli(*args, "--resume", out=tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert "the data set" in err and "'train_images': 24" in err and "'train_images': 25" in err


@pytest.fixture(scope="module")
def cifar_relu_weights(tmp_path_factory):
    """A model.pt as recipes/cifar_resnet.py writes it: a ReLU CIFAR ResNet-20 with trained batch-norm statistics."""
    import timm

    import layeract_patch.models  # noqa: F401  (registers cifar_resnet20 with timm)

    torch.manual_seed(0)
    model = timm.create_model("cifar_resnet20", act="relu", num_classes=len(COLORS))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(4):
        images = torch.randn(16, 3, 32, 32) + torch.rand(16, 3, 1, 1)
        loss = nn.functional.cross_entropy(model(images), (images[:, 0].mean((1, 2)) > 0.5).long())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    path = tmp_path_factory.mktemp("cifar") / "model.pt"
    torch.save(model.state_dict(), path)
    return path


def test_calibrate_measures_plain_and_calibrated_swaps_then_finetunes(image_root, cifar_relu_weights, tmp_path,
                                                                       capsys):
    out = tmp_path / "run"
    assert cli("--model", "timm/cifar_resnet20", "--model-kwargs", "act=relu", "--weights", cifar_relu_weights,
               "--data-dir", image_root, "--act", "la_silu_affine", "--calibrate", "12", "--max-iter", "2",
               "--baseline", "--smoothing", "0", out=out) == 0
    results = json.loads((out / "results.json").read_text())
    assert {"original", "plain_swap", "converted", "finetuned", "baseline"} <= set(results)
    assert results["settings"]["calibrate"] == 12 and results["seconds"]["calibrate"] > 0
    sites = results["conversion"]["calibration"]
    assert len(sites) == results["conversion"]["swapped"] == 19  # ResNet-20: stem + 2 per block
    assert all(s["samples"] == 12 and s["source"] == "ReLU" for s in sites)
    assert all(s["calibrated_error"] < s["plain_error"] for s in sites)
    # the calibrated swap keeps the ReLU model's function far better than the plain swap (its loss, on val/)
    original, plain, calibrated = (results[k]["loss"] for k in ("original", "plain_swap", "converted"))
    assert abs(calibrated - original) < 0.25 * abs(plain - original)
    table = capsys.readouterr().out
    assert "plain swap" in table and "calibrated (12 images)" in table

    # --max-iter 0: the swap measured, nothing trained, no checkpoint written; --calibrate-max-error between the
    # sites' errors keeps the worst ones as they were
    bound = sorted(s["calibrated_error"] for s in sites)[len(sites) // 2]
    out = tmp_path / "swap_only"
    assert cli("--model", "timm/cifar_resnet20", "--model-kwargs", "act=relu", "--weights", cifar_relu_weights,
               "--data-dir", image_root, "--act", "la_silu_affine", "--calibrate", "12", "--max-iter", "0",
               "--calibrate-max-error", str(bound), out=out) == 0
    results = json.loads((out / "results.json").read_text())
    assert {"original", "plain_swap", "converted"} <= set(results) and "finetuned" not in results
    assert not list(out.glob("checkpoint_*.pt"))
    assert results["settings"]["calibrate_max_error"] == bound
    sites = results["conversion"]["calibration"]
    kept = [s for s in sites if s["kept"]]
    assert kept and all(s["calibrated_error"] > bound for s in kept)
    assert all(s["calibrated_error"] <= bound for s in sites if not s["kept"])
    assert results["conversion"]["swapped"] == 19 - len(kept)


@pytest.mark.parametrize("extra, message", [
    (("--act", "la_silu", "--calibrate", "8"), "use --act la_silu_affine"),
    (("--act", "la_silu_affine", "--calibrate", "0"), "number of training images"),
    (("--act", "la_silu_affine", "--calibrate", "500"), "more images than the training split"),
    (("--act", "la_silu_affine", "--calibrate-max-error", "0.1"), "give --calibrate N with it"),
    (("--act", "la_silu_affine", "--calibrate", "8", "--calibrate-max-error", "0"), "relative error > 0"),
    (("--act", "la_silu_affine", "--calibrate", "8", "--calibrate-max-error", "inf"), "relative error > 0"),
])
def test_bad_calibrate_flags_are_one_error_line(extra, message, image_root, cifar_relu_weights, tmp_path, capsys):
    argv = ["--model", "timm/cifar_resnet20", "--model-kwargs", "act=relu", "--weights", str(cifar_relu_weights),
            "--data-dir", str(image_root), "--max-iter", "1", "--workers", "0", "--img-size", "32", "--batch-size", "8",
            "--out", str(tmp_path / "out"), *extra]
    assert recipe.run(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "out" / "results.json").exists()


def test_cifar_augmentation_pads_crops_and_flips_like_the_cifar_recipes(image_root):
    """--augment cifar: the eval image, zero-padded by 4 and cropped back (black borders), flipped; same size and
    normalization as the eval transform, and no colour change."""
    import timm
    from PIL import Image as PILImage

    import layeract_patch.models  # noqa: F401

    model = timm.create_model("cifar_resnet20", num_classes=3)
    train_tf, eval_tf = ft.data_transforms(model, "timm/cifar_resnet20", 32, 1.0, augment="cifar")
    image = PILImage.open(next((image_root / "train" / "class_0").iterdir())).convert("RGB").resize((32, 32))
    reference = eval_tf(image)
    mean = torch.tensor(model.pretrained_cfg["mean"]).view(3, 1, 1)
    std = torch.tensor(model.pretrained_cfg["std"]).view(3, 1, 1)
    black = ((0 - mean) / std)
    torch.manual_seed(0)
    found_shift = False
    for _ in range(20):
        out = train_tf(image)
        assert out.shape == reference.shape
        # every output pixel is a pixel of the (possibly flipped) reference or a black border pixel
        for candidate in (reference, reference.flip(-1)):
            padded = torch.nn.functional.pad(candidate - black, (4, 4, 4, 4)) + black
            if any(torch.allclose(out, padded[:, r:r + 32, c:c + 32], atol=1e-5)
                   for r in range(9) for c in range(9)):
                break
        else:
            raise AssertionError("not a padded crop of the eval image")
        found_shift |= not torch.allclose(out, reference, atol=1e-5)
    assert found_shift
    with pytest.raises(ValueError, match="unknown augmentation"):
        ft.data_transforms(model, "timm/cifar_resnet20", 32, 1.0, augment="autoaugment")
