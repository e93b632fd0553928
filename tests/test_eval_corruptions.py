"""recipes/eval_corruptions.py and the CIFAR recipes' --eval-corruptions, run as a user runs them on tiny data."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from layeract_patch.studies.trained_models import load_trained
from layeract_patch.training import load_images
from test_finetune import cli as finetune_cli, image_root, timm_weights, torchvision_weights  # noqa: F401 (fixtures)
from test_recipes import CNN, RESNET, read_json, recipe
from test_training import make_cifar_root, make_imagefolder

ROOT = Path(__file__).resolve().parents[1]
EVAL = ROOT / "recipes" / "eval_corruptions.py"
TINY = ["--max-iter", "4", "--eval-every", "2", "--batch-size", "8", "--log-every", "2", "--eval-batch-size", "16"]
SUBSET = ["--corruptions", "gaussian_noise", "contrast"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_imagefolder(tmp_path_factory.mktemp("imagefolder"), classes=3, per_class=(16, 6))


@pytest.fixture(scope="module")
def run_dir(folder, tmp_path_factory):
    """A two-seed ResNet-8 run that evaluated gaussian_noise and contrast at severities 1 and 2 after training."""
    out = tmp_path_factory.mktemp("runs") / "r8"
    code, _, _ = recipe(RESNET, "--depth", "8", "--data-dir", folder, "--out", out, "--seeds", "0", "1", *TINY,
                        "--eval-corruptions", *SUBSET, "--corruption-severities", "2", "1")
    assert code == 0
    return out


def evaluate(*args, capsys=None):
    return recipe(EVAL, *args, capsys=capsys)


def test_eval_corruptions_flag_evaluates_each_seeds_tested_weights(run_dir):
    summary = read_json(run_dir / "results.json")["corruptions"]
    assert summary["corruptions"] == ["gaussian_noise", "contrast"] and summary["severities"] == [1, 2]
    for seed in (0, 1):
        found = read_json(run_dir / f"seed_{seed}" / "corruptions.json")
        assert set(found["corruptions"]) == {"gaussian_noise", "contrast"}
        assert set(found["corruptions"]["contrast"]) == {"1", "2"}
        # the clean images scored with the best-validation weights: exactly the seed's test accuracy
        tested = read_json(run_dir / f"seed_{seed}" / "results.json")["test"]
        assert found["clean"]["top1"] == pytest.approx(tested["top1"])
        assert summary["seeds"][str(seed)]["corruption_mean"] == found["corruption_mean"]
    for name in ("gaussian_noise", "contrast"):
        per_seed = [read_json(run_dir / f"seed_{s}" / "corruptions.json")["corruption_mean"][name] for s in (0, 1)]
        assert summary["corruption_mean"][name] == pytest.approx(sum(per_seed) / 2)
    assert summary["groups"] == {}  # no group is complete with two corruptions
    assert summary["mean"] == pytest.approx(sum(summary["corruption_mean"].values()) / 2)


def test_recipe_evaluates_a_seed_as_the_training_run_did(run_dir, folder, tmp_path):
    # as a user runs it: a subprocess that imports this checkout
    out = tmp_path / "eval"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(EVAL), "--checkpoint", str(run_dir / "seed_0"), "--data-dir",
                           str(folder), *SUBSET, "--severities", "1", "2", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    # a person waiting is told what runs, and after each corruption how long the rest will take
    count = len(load_images(folder, train=False)[0])
    assert f"evaluating on {count} test images: clean, then 2 corruptions x 2 severities" in done.stderr
    assert re.search(r"corruption 1/2 gaussian_noise: .*; 0:\d\d elapsed, ETA 0:\d\d\)", done.stderr)
    assert re.search(r"corruption 2/2 contrast: .*; 0:\d\d elapsed\)", done.stderr)
    results = read_json(out / "results.json")
    trained = read_json(run_dir / "seed_0" / "corruptions.json")
    assert results["model"]["kind"] == "cifar" and results["model"]["seed"] == 0
    assert results["model"]["checkpoint"] == str(run_dir / "seed_0" / "model.pt")
    assert results["clean"]["top1"] == pytest.approx(trained["clean"]["top1"])
    for name in ("gaussian_noise", "contrast"):  # same weights, same corruption seed: the same images and scores
        for s in ("1", "2"):
            assert results["corruptions"][name][s]["top1"] == pytest.approx(trained["corruptions"][name][s]["top1"])
            assert results["corruptions"][name][s]["loss"] == pytest.approx(trained["corruptions"][name][s]["loss"],
                                                                            rel=1e-5)
    assert "| gaussian_noise |" in done.stdout and "mean of 2" in done.stdout


def test_a_bf16_run_is_scored_under_corruptions_as_its_test_set_was(folder, tmp_path, capsys):
    # --amp and --channels-last: the corruptions are scored as the run's test set was (bf16 autocast), so the
    # clean score is exactly the test score, and the recipe with the same flags reproduces every cell
    run = tmp_path / "bf16"
    assert recipe(RESNET, "--depth", "8", "--data-dir", folder, "--out", run, *TINY, "--amp", "--channels-last",
                  "--eval-corruptions", *SUBSET, "--corruption-severities", "3", capsys=capsys)[0] == 0
    trained = read_json(run / "seed_0" / "corruptions.json")
    assert trained["amp"] is True
    assert trained["clean"]["top1"] == pytest.approx(read_json(run / "seed_0" / "results.json")["test"]["top1"])
    again, fp32 = tmp_path / "again", tmp_path / "fp32"
    code, _, stderr = evaluate("--checkpoint", run, "--data-dir", folder, *SUBSET, "--severities", "3", "--amp",
                               "--channels-last", "--out", again, capsys=capsys)
    assert code == 0 and "corruption 2/2 contrast: top-1 " in stderr  # a line per corruption as it goes
    assert evaluate("--checkpoint", run, "--data-dir", folder, *SUBSET, "--severities", "3", "--out", fp32,
                    capsys=capsys)[0] == 0
    again, fp32 = read_json(again / "results.json"), read_json(fp32 / "results.json")
    assert again["amp"] is True and fp32["amp"] is False
    for name in ("gaussian_noise", "contrast"):
        assert again["corruptions"][name]["3"] == pytest.approx(trained["corruptions"][name]["3"], rel=1e-5)
        # float32 scores the same weights on the same images: the losses differ only by bf16 rounding
        assert fp32["corruptions"][name]["3"]["loss"] == pytest.approx(trained["corruptions"][name]["3"]["loss"],
                                                                       rel=0.05)


def test_baseline_adds_ce_and_mce(run_dir, folder, tmp_path, capsys):
    base, other = tmp_path / "seed0", tmp_path / "seed1"
    assert evaluate("--checkpoint", run_dir / "seed_0" / "model.pt", "--data-dir", folder, *SUBSET,
                    "--severities", "1", "2", "--out", base, capsys=capsys)[0] == 0
    code, stdout, _ = evaluate("--checkpoint", run_dir / "seed_1", "--data-dir", folder, *SUBSET, "--severities", "1",
                               "2", "--baseline", base / "results.json", "--out", other, capsys=capsys)
    assert code == 0
    a, b = read_json(other / "results.json"), read_json(base / "results.json")
    for name in ("gaussian_noise", "contrast"):
        errors = [sum(100 - r["corruptions"][name][s]["top1"] for s in ("1", "2")) for r in (a, b)]
        assert a["mce"][name] == pytest.approx(100 * errors[0] / errors[1])
    assert a["mce"]["mCE"] == pytest.approx((a["mce"]["gaussian_noise"] + a["mce"]["contrast"]) / 2)
    assert a["baseline"] == str(base / "results.json") and "mCE" in stdout
    # the training run's own corruptions.json is a baseline too; against itself every CE is 100
    same = tmp_path / "same"
    assert evaluate("--checkpoint", run_dir / "seed_0", "--data-dir", folder, *SUBSET, "--severities", "1", "2",
                    "--baseline", run_dir / "seed_0" / "corruptions.json", "--out", same, capsys=capsys)[0] == 0
    assert read_json(same / "results.json")["mce"] == pytest.approx({"gaussian_noise": 100.0, "contrast": 100.0,
                                                                    "mCE": 100.0})


def test_a_run_written_before_the_architecture_was_recorded_still_loads(run_dir, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(run_dir, old)
    for path in (old / "seed_0" / "results.json", old / "results.json"):
        results = read_json(path)
        for key in ("architecture", "classes") + (("normalization",) if path.parent.name == "seed_0" else ()):
            results.pop(key)
        path.write_text(json.dumps(results))
    before, after = load_trained(run_dir / "seed_0"), load_trained(old / "seed_0")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(before.model(x), after.model(x))
    assert (after.mean, after.std, after.classes) == (before.mean, before.std, before.classes)


def test_cnn_recipe_on_a_cifar_root_evaluates_and_the_recipe_reads_the_root(tmp_path, capsys, monkeypatch):
    root = make_cifar_root(tmp_path / "cifar", monkeypatch=monkeypatch)
    out = tmp_path / "cnn"
    assert recipe(CNN, "--data-dir", root, "--no-download", "--out", out, *TINY, "--eval-corruptions",
                  "--corruptions", "brightness", "--corruption-severities", "5", capsys=capsys)[0] == 0
    assert evaluate("--checkpoint", out, "--data-dir", root, "--corruptions", "brightness", "--severities", "5",
                    "--out", tmp_path / "eval", capsys=capsys)[0] == 0
    results, trained = read_json(tmp_path / "eval" / "results.json"), read_json(out / "seed_0" / "corruptions.json")
    assert results["model"]["model"] == "layeract_cnn"
    assert results["corruptions"]["brightness"]["5"]["top1"] == pytest.approx(
        trained["corruptions"]["brightness"]["5"]["top1"])


def test_official_files_replace_the_generated_corruptions(run_dir, folder, tmp_path, capsys):
    import numpy as np

    official = tmp_path / "CIFAR-10-C"
    official.mkdir()
    images = np.random.default_rng(0).integers(0, 256, (5 * 4, 32, 32, 3), dtype=np.uint8)
    np.save(official / "fog.npy", images)
    np.save(official / "labels.npy", np.arange(20) % 3)
    assert evaluate("--checkpoint", run_dir / "seed_0", "--data-dir", folder, "--corruptions-dir", official,
                    "--corruptions", "fog", "--severities", "3", "--out", tmp_path / "eval", capsys=capsys)[0] == 0
    results = read_json(tmp_path / "eval" / "results.json")
    trained = load_trained(run_dir / "seed_0")
    x = torch.from_numpy(images[8:12]).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(trained.mean).view(1, 3, 1, 1)) / torch.tensor(trained.std).view(1, 3, 1, 1)
    with torch.no_grad():
        want = (trained.model(x).argmax(1) == torch.arange(8, 12) % 3).float().mean().item() * 100
    assert results["source"] == str(official) and results["corruptions"]["fog"]["3"]["top1"] == pytest.approx(want)


def bad_cases(run_dir, folder, tmp_path):
    import numpy as np

    big = make_imagefolder(tmp_path / "big", classes=3, per_class=(1, 2), size=48)
    other = make_imagefolder(tmp_path / "four", classes=4, per_class=(1, 1))
    (tmp_path / "a_file").write_text("")
    small = tmp_path / "small_c"
    small.mkdir()
    np.save(small / "fog.npy", np.zeros((5, 16, 16, 3), np.uint8))
    np.save(small / "labels.npy", np.zeros(5, np.int64))
    done = tmp_path / "done"
    done.mkdir()
    (done / "results.json").write_text("{}")
    base = ["--checkpoint", run_dir / "seed_0", "--data-dir", folder]
    return {
        "missing checkpoint": (["--checkpoint", tmp_path / "nope", "--data-dir", folder], "does not exist"),
        "training checkpoint": (["--checkpoint", run_dir / "seed_0" / "checkpoint.pt", "--data-dir", folder],
                                "is a training checkpoint"),
        "several seeds": (["--checkpoint", run_dir, "--data-dir", folder], "holds 2 seeds"),
        "unknown corruption": (base + ["--corruptions", "haze"], "unknown corruption 'haze'"),
        "severity 6": (base + ["--severities", "1", "6"], "--severities must be among 1 2 3 4 5"),
        "out is a file": (base + ["--out-file"], "is a file, not a folder"),
        "wrong image size": (["--checkpoint", run_dir / "seed_0", "--data-dir", big], "holds 48x48 images"),
        "other classes": (["--checkpoint", run_dir / "seed_0", "--data-dir", other], "has 4 classes"),
        "existing results": (base + ["--out-done"], "pass --overwrite"),
        "baseline lacks a corruption": (base + ["--corruptions", "fog", "--baseline", run_dir / "seed_0" /
                                                "corruptions.json"], "baseline lacks results for fog/1"),
        "missing official file": (base + ["--corruptions-dir", tmp_path], "gaussian_noise.npy"),
        "official files of another size": (base + ["--corruptions-dir", small, "--corruptions", "fog"],
                                           "holds 16x16 images"),
        "negative seed": (base + ["--seed", "-1"], "--seed must be >= 0"),
    }


def test_bad_input_is_one_error_line_exit_2_and_nothing_written(run_dir, folder, tmp_path, capsys):
    for case, (args, message) in bad_cases(run_dir, folder, tmp_path).items():
        out = tmp_path / "out"
        if "--out-file" in args:
            args, out = [a for a in args if a != "--out-file"], tmp_path / "a_file"
        if "--out-done" in args:
            args, out = [a for a in args if a != "--out-done"], tmp_path / "done"
        before = sorted(p.name for p in out.iterdir()) if out.is_dir() else None
        code, stdout, stderr = evaluate(*args, "--out", out, capsys=capsys)
        lines = stderr.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("eval_corruptions.py: error: "), (case, stderr)
        assert message in lines[0], (case, lines[0])
        assert stdout == ""
        assert (sorted(p.name for p in out.iterdir()) if out.is_dir() else None) == before, case
    assert read_json(tmp_path / "done" / "results.json") == {}


@pytest.mark.parametrize("flags, message", [
    (["--eval-corruptions", "--corruptions", "haze"], "unknown corruption haze"),
    (["--eval-corruptions", "--corruption-severities", "0"], "--corruption-severities must be among 1 2 3 4 5"),
    (["--corruptions", "fog"], "add --eval-corruptions"),
])
def test_bad_corruption_flags_refuse_before_training(folder, tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    code, _, stderr = recipe(RESNET, "--depth", "8", "--data-dir", folder, "--out", out, *TINY, *flags, capsys=capsys)
    assert code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_eval_corruptions_refuses_grayscale_data_before_training(tmp_path, capsys):
    gray = make_imagefolder(tmp_path / "gray", classes=2, per_class=(8, 2), gray=True)
    out = tmp_path / "run"
    code, _, stderr = recipe(RESNET, "--depth", "8", "--data-dir", gray, "--out", out, *TINY, "--eval-corruptions",
                             capsys=capsys)
    assert code == 2 and "needs RGB images" in stderr and not out.exists()


@pytest.mark.parametrize("library", ["timm", "torchvision"])
def test_fine_tuning_runs_are_rebuilt_offline_and_score_as_they_did(library, image_root, timm_weights,
                                                                    torchvision_weights, tmp_path, capsys):
    # timm: unconverted head, plain LA-SiLU; torchvision: a new 3-class head and affine LA-HardSiLU
    run = tmp_path / "ft"
    if library == "timm":
        args = ("--model", "timm/test_efficientnet", "--weights", timm_weights[0])
    else:
        args = ("--model", "torchvision/mobilenet_v3_small", "--weights", torchvision_weights[0], "--act",
                "la_hardsilu_affine")
    assert finetune_cli(*args, "--data-dir", image_root, "--max-iter", "2", "--baseline", out=run) == 0
    trained = read_json(run / "results.json")
    for checkpoint, key in ((run, "finetuned"), (run / "checkpoint_baseline.pt", "baseline")):
        out = tmp_path / f"eval_{key}"
        assert evaluate("--checkpoint", checkpoint, "--data-dir", image_root, "--corruptions", "pixelate",
                        "--severities", "3", "--out", out, capsys=capsys)[0] == 0
        results = read_json(out / "results.json")
        # the clean images went through the model's own eval resize and crop: the run's own figures
        assert results["clean"]["top1"] == pytest.approx(trained[key]["top1"])
        assert results["clean"]["loss"] == pytest.approx(trained[key]["loss"], rel=1e-4)
        assert results["model"]["kind"] == "finetune" and results["model"]["checkpoint"].endswith(f"_{key}.pt")
        assert 0 <= results["corruptions"]["pixelate"]["3"]["top1"] <= 100


def test_a_finished_run_resumed_with_eval_corruptions_only_evaluates(folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert recipe(RESNET, "--depth", "8", "--data-dir", folder, "--out", out, *TINY, capsys=capsys)[0] == 0
    weights = (out / "seed_0" / "model.pt").read_bytes()
    trained = read_json(out / "seed_0" / "results.json")
    assert "corruptions" not in read_json(out / "results.json")
    code, stdout, _ = recipe(RESNET, "--depth", "8", "--data-dir", folder, "--out", out, *TINY, "--resume",
                             "--eval-corruptions", "--corruptions", "fog", "--corruption-severities", "1",
                             capsys=capsys)
    assert code == 0 and "corrupted test top1" in stdout
    assert (out / "seed_0" / "model.pt").read_bytes() == weights  # not trained again
    assert read_json(out / "seed_0" / "corruptions.json")["clean"]["top1"] == pytest.approx(trained["test"]["top1"])
    assert read_json(out / "results.json")["corruptions"]["corruptions"] == ["fog"]
