"""Every recipe, every bad input a user is likely to give: one `<prog>: error:` line on stderr, exit 2,
no traceback, before any training, and nothing written to --out."""
import hashlib
import importlib.util
import shutil
from pathlib import Path

import pytest
import torch

from test_training import make_imagefolder

ROOT = Path(__file__).resolve().parents[1]


def load_recipe(name):
    spec = importlib.util.spec_from_file_location(f"{name}_recipe", ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """An ImageFolder (3 classes, 16 train / 6 test images each), a copy with a truncated JPEG, one with no
    test/, and timm weights (3 classes) for a small CNN and for a ViT built for 160x160 inputs."""
    import timm

    base = tmp_path_factory.mktemp("bad_inputs")
    folder = make_imagefolder(base / "folder", classes=3, per_class=(16, 6))
    truncated = base / "truncated"
    shutil.copytree(folder, truncated)
    jpeg = truncated / "train" / "class_1" / "000.jpg"
    jpeg.write_bytes(jpeg.read_bytes()[: len(jpeg.read_bytes()) // 2])
    no_test = base / "no_test"
    shutil.copytree(folder / "train", no_test / "train")
    weights = {}
    for name in ("test_efficientnet", "test_vit3"):
        torch.manual_seed(0)
        weights[name] = base / f"{name}.pth"
        torch.save(timm.create_model(name, num_classes=3).state_dict(), weights[name])
    file_out = base / "a_file"
    file_out.write_text("not a folder")
    study_out = base / "study"
    study_out.mkdir()
    (study_out / "correlations.csv").write_text("act,width\n")
    return {"folder": folder, "truncated": truncated, "no_test": no_test, "weights": weights, "file": file_out,
            "study": study_out}


def cifar(d, *flags):
    return ["--depth", "8", "--data-dir", d["folder"], "--max-iter", "2", "--batch-size", "8", "--eval-every", "2",
            "--device", "cpu", *flags]


def finetune(d, *flags, model="test_efficientnet"):
    return ["--model", f"timm/{model}", "--weights", d["weights"][model], "--data-dir", d["folder"],
            "--max-iter", "1", "--batch-size", "8", "--img-size", "32", "--workers", "0", "--device", "cpu", *flags]


def study(d, *flags):
    return ["--data-dir", d["folder"], "--widths", "4", "--acts", "relu", "--seeds", "0", "--max-iter", "2",
            "--batch-size", "8", "--device", "cpu", *flags]


# (recipe, flags (without --out), --out: None for a fresh folder or a key of `data`, words the message must hold)
CASES = {
    "cifar batch larger than the training set": ("cifar_resnet", lambda d: cifar(d, "--batch-size", "64"), None,
                                                 "--batch-size 64 is larger than the training set"),
    "cifar negative momentum": ("cifar_resnet", lambda d: cifar(d, "--momentum", "-0.9"), None,
                                "--momentum must be >= 0"),
    "cifar negative weight decay": ("cifar_resnet", lambda d: cifar(d, "--weight-decay=-1e-4"), None,
                                    "--weight-decay must be >= 0"),
    "cifar --out is a file": ("cifar_resnet", cifar, "file", "is a file, not a folder"),
    "cifar --resume without a checkpoint": ("cifar_resnet", lambda d: cifar(d, "--resume"), None,
                                            "no checkpoint to continue"),
    "cifar imagefolder without test/": ("cifar_cnn", lambda d: cifar(d, "--data-dir", d["no_test"])[2:], None,
                                        "has no test/ with class folders"),
    "finetune batch larger than the training set": ("finetune", lambda d: finetune(d, "--batch-size", "64"), None,
                                                    "fewer than --batch-size 64"),
    "finetune negative momentum": ("finetune", lambda d: finetune(d, "--momentum", "-0.1"), None,
                                   "--momentum must be >= 0"),
    "finetune negative weight decay": ("finetune", lambda d: finetune(d, "--weight-decay", "-0.05"), None,
                                       "--weight-decay must be >= 0"),
    "finetune negative warmup": ("finetune", lambda d: finetune(d, "--warmup-iters", "-5"), None,
                                 "--warmup-iters must be >= 0"),
    "finetune smoothing 1": ("finetune", lambda d: finetune(d, "--smoothing", "1.0"), None,
                             "--smoothing (label smoothing) must be in [0, 1)"),
    "finetune negative smoothing": ("finetune", lambda d: finetune(d, "--smoothing", "-0.1"), None,
                                    "must be in [0, 1)"),
    "finetune --out is a file": ("finetune", finetune, "file", "is a file, not a folder"),
    "finetune truncated image": ("finetune", lambda d: finetune(d, "--data-dir", d["truncated"]), None,
                                 "cannot decode image"),
    "finetune ViT at 32 pixels": ("finetune", lambda d: finetune(d, model="test_vit3"), None,
                                  "timm/test_vit3 does not take 32x32 inputs"),
    "study negative lr": ("scale_correlation", lambda d: study(d, "--lr", "-1"), None, "--lr must be positive"),
    "study over an existing study": ("scale_correlation", study, "study", "pass --overwrite"),
    "study --out is a file": ("scale_correlation", study, "file", "is a file, not a folder"),
}


def snapshot(path: Path):
    """What is at `path`: nothing, a file's bytes, or a folder's files with their hashes."""
    if not path.exists():
        return None
    if path.is_file():
        return path.read_bytes()
    return {str(p.relative_to(path)): hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(path.rglob("*"))}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_error_line_exit_2_and_nothing_written(case, data, tmp_path, capsys):
    name, flags, out_key, message = CASES[case]
    out = tmp_path / "out" if out_key is None else data[out_key]
    before = snapshot(out)
    argv = [str(part) for part in flags(data)] + ["--out", str(out)]
    code = load_recipe(name).run(argv)
    captured = capsys.readouterr()
    err = captured.err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith(f"{name}.py: error: "), err
    assert message in err and "Traceback" not in err, err
    assert snapshot(out) == before


def test_the_vit_message_names_flags_the_cli_has(data, tmp_path, capsys):
    recipe = load_recipe("finetune")
    assert recipe.run([str(p) for p in finetune(data, model="test_vit3")] + ["--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--img-size 160" in err and "--model-kwargs img_size=32" in err
    options = {o for action in recipe.get_args_parser()._actions for o in action.option_strings}
    assert {"--img-size", "--model-kwargs"} <= options


@pytest.mark.parametrize("raised, code, line", [
    (ValueError("--lr must be positive"), 2, "prog: error: --lr must be positive"),
    (FileNotFoundError("no data"), 2, "prog: error: no data"),
    (FloatingPointError("loss nan at iteration 2"), 1, "prog: error: loss nan at iteration 2"),
    (KeyboardInterrupt(), 130, "prog: interrupted; continue with the same command plus --resume"),
])
def test_every_recipe_shares_one_exit_contract(raised, code, line, capsys):
    import argparse

    from layeract_patch.training.command import run_command

    def main(args):
        raise raised

    assert run_command(argparse.ArgumentParser(prog="prog"), main, []) == code
    assert capsys.readouterr().err.splitlines() == [line]
    assert run_command(argparse.ArgumentParser(prog="prog"), lambda args: 7, []) == 7
    assert run_command(argparse.ArgumentParser(prog="prog"), lambda args: {"top1": 1.0}, []) == 0
