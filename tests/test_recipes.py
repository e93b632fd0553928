"""The CIFAR recipes end to end, run as a user runs them, on tiny data sets the tests build."""
import csv
import json
import math
import os
import runpy
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from layeract_patch.models import cifar_resnet
from layeract_patch.training import Progress
from layeract_patch.training import load_images
from layeract_patch.training.command import python_command
from test_training import make_cifar_root, make_imagefolder

ROOT = Path(__file__).resolve().parents[1]
RESNET, CNN = ROOT / "recipes" / "cifar_resnet.py", ROOT / "recipes" / "cifar_cnn.py"
SHORT = ["--max-iter", "8", "--batch-size", "8", "--eval-every", "4", "--log-every", "2", "--eval-batch-size", "16"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_imagefolder(tmp_path_factory.mktemp("imagefolder"), classes=3, per_class=(16, 6))


def recipe(script, *args, capsys=None):
    """Run a recipe file as `python script args...` would, in this process; returns (exit code, stdout, stderr)."""
    argv = sys.argv
    sys.argv = [script.name, *map(str, args)]
    try:
        runpy.run_path(str(script), run_name="__main__")
        code = 0
    except SystemExit as done:
        code = done.code
    finally:
        sys.argv = argv
    out, err = capsys.readouterr() if capsys else ("", "")
    return code, out, err


def has_matplotlib():
    try:
        import matplotlib  # noqa: F401  (optional: the suite passes with and without it)
    except ImportError:
        return False
    return True


def read_json(path):
    return json.loads(Path(path).read_text())


def load_weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_resnet_recipe_on_imagefolder_with_two_seeds(folder, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, _ = recipe(RESNET, "--depth", "8", "--data-dir", folder, "--out", out, "--seeds", "0", "1",
                             *SHORT, capsys=capsys)
    assert code == 0
    results = read_json(out / "results.json")
    assert results["model"] == "cifar_resnet8" and results["iterations"] == 8 and results["seeds"] == [0, 1]
    assert set(results["test"]) == {"top1", "loss", "loss_std"}  # 3 classes: every label is in the top 5
    per_seed = [read_json(out / f"seed_{s}" / "results.json") for s in (0, 1)]
    for metric in ("top1", "loss", "loss_std"):
        values = [run["test"][metric] for run in per_seed]
        stats = results["summary"]["test"][metric]
        assert stats["mean"] == pytest.approx(sum(values) / 2) == pytest.approx(results["test"][metric])
        assert stats["best"] == (max(values) if metric == "top1" else min(values)) and stats["n"] == 2
    assert 0 <= results["test"]["top1"] <= 100 and results["test"]["loss_std"] > 0
    first = per_seed[0]
    assert [row["iteration"] for row in first["history"]] == [4, 8]
    assert [row["iteration"] for row in first["train_log"]] == [2, 4, 6, 8]
    assert first["val"]["top1"] == max(row["val_top1"] for row in first["history"])
    assert first["params"] == sum(p.numel() for p in cifar_resnet(8, num_classes=3).parameters())
    with open(out / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["seed"], r["iteration"]) for r in rows] == [("0", "4"), ("0", "8"), ("1", "4"), ("1", "8")]
    assert {"train_loss", "val_top1", "val_loss", "lr"} <= set(rows[0])
    assert (out / "seed_1" / "train_log.csv").read_text().startswith("iteration,train_loss,lr")
    assert "best / mean (std) over 2 seeds" in stdout


def test_cnn_recipe_on_cifar_pickle_root_without_norm(tmp_path, capsys, monkeypatch):
    root = make_cifar_root(tmp_path / "cifar", monkeypatch=monkeypatch)
    code, _, _ = recipe(CNN, "--data-dir", root, "--dataset", "cifar10", "--norm", "none", "--act",
                        "la_hardsilu_affine", "--amp", "--channels-last", "--no-download", "--out", tmp_path / "run",
                        "--max-iter", "3", "--batch-size", "8", "--eval-every", "3", "--val-fraction", "0",
                        capsys=capsys)
    assert code == 0
    results = read_json(tmp_path / "run" / "results.json")
    assert results["model"] == "layeract_cnn" and results["args"]["lr"] == 0.01  # the paper's rate without norm
    run = read_json(tmp_path / "run" / "seed_0" / "results.json")
    assert run["val"] is None and run["best_iteration"] == 3  # no validation split: the last weights are tested
    assert all(math.isfinite(value) for value in run["test"].values())


def test_a_short_run_logs_enough_to_plot_and_says_what_it_does(folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as where it is not installed
    out = tmp_path / "run"
    code, stdout, err = recipe(RESNET, "--depth", "8", "--data-dir", folder, "--out", out, "--max-iter", "50",
                               "--batch-size", "8", "--eval-every", "25", "--eval-batch-size", "16", capsys=capsys)
    assert code == 0, err
    run = read_json(out / "seed_0" / "results.json")
    # no --log-every: a 50-iteration run logs every 2 iterations (and at each evaluation), so its loss curve has
    # 26 points, where the old default of 100 gave one
    assert [row["iteration"] for row in run["train_log"]] == sorted([*range(2, 51, 2), 25])
    assert stdout.strip().splitlines()[-1] == (f"results in {out / 'results.json'} (no loss-curve plot: "
                                               f"{python_command()} -m pip install matplotlib)")
    # while a person waits: what is validated and tested, on how many images
    assert "seed 0: validating every 25 iterations on 6 held-out training images" in err
    assert "seed 0: testing the best-validation weights (iteration " in err and " on 18 test images" in err
    # --resume with a larger --max-iter keeps the log interval the run started with (the rule would now give 4)
    code, _, err = recipe(RESNET, "--depth", "8", "--data-dir", folder, "--out", out, "--max-iter", "100",
                          "--batch-size", "8", "--eval-every", "25", "--eval-batch-size", "16", "--resume",
                          capsys=capsys)
    assert code == 0, err
    assert [row["iteration"] for row in read_json(out / "seed_0" / "results.json")["train_log"]][-3:] == [96, 98, 100]


@pytest.mark.matplotlib
def test_the_loss_curves_are_drawn_where_matplotlib_is_installed(folder, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, _ = recipe(RESNET, "--depth", "8", "--data-dir", folder, "--out", out, *SHORT, capsys=capsys)
    assert code == 0
    if has_matplotlib():
        assert (out / "loss_curves.png").stat().st_size > 1000 and f"loss curves in {out / 'loss_curves.png'}" in stdout
    else:
        assert not (out / "loss_curves.png").exists() and "-m pip install matplotlib" in stdout


def test_ctrl_c_saves_and_resume_matches_uninterrupted_run(folder, tmp_path, capsys, monkeypatch):
    args = ["--depth", "8", "--data-dir", folder, *SHORT]
    assert recipe(RESNET, *args, "--out", tmp_path / "straight", capsys=capsys)[0] == 0

    update = Progress.update

    def ctrl_c_at_step_5(self, step, **kw):
        update(self, step, **kw)
        if step == 5 and self.desc.startswith("seed"):  # the training's display, not the image loader's
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(Progress, "update", ctrl_c_at_step_5)
    code, _, err = recipe(RESNET, *args, "--out", tmp_path / "resumed", capsys=capsys)
    assert code == 130 and "--resume" in err.splitlines()[-1]
    checkpoint = torch.load(tmp_path / "resumed" / "seed_0" / "checkpoint.pt", weights_only=False)
    assert checkpoint["step"] == 5 and not (tmp_path / "resumed" / "results.json").exists()
    monkeypatch.undo()

    code, _, err = recipe(RESNET, *args, "--out", tmp_path / "resumed", "--resume", capsys=capsys)
    assert code == 0 and "resumed from" in err
    straight, resumed = (load_weights(tmp_path / d / "seed_0" / "model.pt") for d in ("straight", "resumed"))
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight)
    a, b = (read_json(tmp_path / d / "seed_0" / "results.json") for d in ("straight", "resumed"))
    assert a["test"] == b["test"] and a["val"] == b["val"] and a["train_log"] == b["train_log"]
    drop_time = [{k: v for k, v in row.items() if k != "train_seconds"} for row in a["history"]]
    assert drop_time == [{k: v for k, v in row.items() if k != "train_seconds"} for row in b["history"]]


def test_resume_of_a_finished_run_and_its_guards(folder, tmp_path, capsys, monkeypatch):
    args = ["--depth", "8", "--data-dir", folder, "--out", tmp_path / "run", *SHORT]
    assert recipe(RESNET, *args, capsys=capsys)[0] == 0
    before = read_json(tmp_path / "run" / "results.json")

    def no_training(*a, **k):
        raise AssertionError("a finished seed must not train again")

    monkeypatch.setattr("layeract_patch.training.cifar.TrainBatches", no_training)
    assert recipe(RESNET, *args, "--resume", capsys=capsys)[0] == 0
    assert read_json(tmp_path / "run" / "results.json")["test"] == before["test"]

    code, _, err = recipe(RESNET, *args, capsys=capsys)
    assert code == 2 and "pass --resume" in err
    code, _, err = recipe(RESNET, *args, "--resume", "--act", "silu", capsys=capsys)
    assert code == 2 and "--act la_silu, not silu" in err


@pytest.mark.parametrize("flags, message", [
    (["--data-dir", "{tmp}/missing", "--no-download"], "data dir '{tmp}/missing' does not exist"),
    (["--act", "mish"], "unknown activation 'mish'"),
    (["--depth", "21"], "--depth must be 6n+2"),
    (["--norm", "batch"], "unknown norm 'batch'"),
    (["--seeds", "1", "1"], "--seeds must be distinct"),
])
def test_bad_input_is_one_error_line_and_exit_2(tmp_path, capsys, flags, message):
    flags = [flag.format(tmp=tmp_path) for flag in flags]
    code, out, err = recipe(RESNET, "--data-dir", tmp_path, "--no-download", *flags, "--out", tmp_path / "o",
                            capsys=capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("cifar_resnet.py: error: ") and message.format(tmp=tmp_path) in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where CUDA is missing")
def test_cuda_requested_without_cuda(folder, tmp_path, capsys):
    code, _, err = recipe(CNN, "--data-dir", folder, "--device", "cuda", "--out", tmp_path, capsys=capsys)
    assert code == 2 and "no CUDA device" in err


@pytest.mark.matplotlib
def test_torchrun_two_processes_train_like_one(folder, tmp_path, capsys):
    # With a per-sample norm ("ln") the two ranks' averaged gradients equal the one-process gradient, so the
    # weights agree up to float summation order; each rank sees its half of the same augmented batch.
    args = ["--depth", "8", "--norm", "ln", "--data-dir", str(folder), "--max-iter", "6", "--batch-size", "8",
            "--eval-every", "3", "--log-every", "3", "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))  # this checkout, not an installed copy
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(RESNET), *args, "--out", str(tmp_path / "ddp")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert recipe(RESNET, *args, "--out", tmp_path / "one", capsys=capsys)[0] == 0
    ddp, one = (read_json(tmp_path / d / "seed_0" / "results.json") for d in ("ddp", "one"))
    assert ddp["world_size"] == 2 and one["world_size"] == 1
    assert [r["steps"] for r in ddp["train_log"]] == [3, 3]
    a, b = (load_weights(tmp_path / d / "seed_0" / "model.pt") for d in ("ddp", "one"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)
    assert ddp["test"]["top1"] == one["test"]["top1"]
    assert result.stdout.count("results in") == 1  # only rank 0 reports (and writes)
    plot = ["loss_curves.png"] if has_matplotlib() else []  # the loss curves are drawn when matplotlib is there
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == sorted(["history.csv", "results.json", "seed_0"] + plot)


# ---- records that never lie ----

def hold_lock(out):
    """Another process that claims --out and waits: a run in progress, as a second user would meet it."""
    code = ("import sys, time\nfrom layeract_patch.training.outdir import claim_output\n"
            "with claim_output(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)\n")
    process = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True,
                               env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_second_run_on_the_same_out_refuses_and_a_killed_ones_lock_is_not_stale(folder, tmp_path, capsys):
    out = tmp_path / "run"
    holder = hold_lock(out)
    try:
        code, _, err = recipe(RESNET, "--depth", "8", "--data-dir", folder, "--out", out, *SHORT, capsys=capsys)
        assert code == 2 and err.count("\n") == 1
        assert f"is in use by another run (pid {holder.pid})" in err
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # the refused run wrote nothing
    finally:
        holder.kill()  # SIGKILL: no clean-up code runs, the kernel drops the lock
        holder.wait()
    (out / "seed_0").mkdir()
    stale = out / "seed_0" / ".checkpoint.pt.x1y2.tmp"  # what a checkpoint write killed mid-way leaves
    stale.write_bytes(b"half")
    code, _, err = recipe(RESNET, "--depth", "8", "--data-dir", folder, "--out", out, *SHORT, capsys=capsys)
    assert code == 0, err
    assert not stale.exists() and not (out / ".lock").exists()


def test_resume_refuses_changed_settings_listing_each(folder, tmp_path, capsys):
    args = ["--depth", "8", "--data-dir", folder, "--out", tmp_path / "run", *SHORT]
    assert recipe(RESNET, *args, capsys=capsys)[0] == 0
    before = (tmp_path / "run" / "results.json").read_text()
    other = make_imagefolder(tmp_path / "other", classes=3, per_class=(16, 6), seed=1)
    code, _, err = recipe(RESNET, *args, "--resume", "--lr", "0.05", "--milestones", "2", "3", "--data-dir", other,
                          capsys=capsys)
    assert code == 2 and err.count("\n") == 1
    assert "--lr 0.1, not 0.05" in err and "--milestones 4 6, not 2 3" in err and f"not {other}" in err
    code, _, err = recipe(RESNET, *args, "--resume", "--max-iter", "6", capsys=capsys)
    assert code == 2 and "--max-iter 8, not 6" in err  # a shorter run cannot be had by resuming
    assert (tmp_path / "run" / "results.json").read_text() == before


def test_resume_refuses_a_changed_data_set_in_the_same_folder(tmp_path, capsys):
    data = make_imagefolder(tmp_path / "data", classes=3, per_class=(16, 6))
    args = ["--depth", "8", "--data-dir", data, "--out", tmp_path / "run", *SHORT]
    assert recipe(RESNET, *args, capsys=capsys)[0] == 0
    shutil.copy(data / "train" / "class_0" / "001.png", data / "train" / "class_0" / "extra.png")
    code, _, err = recipe(RESNET, *args, "--resume", "--max-iter", "12", capsys=capsys)
    assert code == 2 and "the data set" in err and "'train_images': 48" in err and "'train_images': 49" in err


def test_a_larger_max_iter_extends_the_run_exactly_and_says_so(folder, tmp_path, capsys):
    common = ["--depth", "8", "--data-dir", folder, "--batch-size", "8", "--eval-every", "4", "--log-every", "2"]
    assert recipe(RESNET, *common, "--max-iter", "8", "--out", tmp_path / "run", capsys=capsys)[0] == 0
    code, _, err = recipe(RESNET, *common, "--max-iter", "12", "--out", tmp_path / "run", "--resume", capsys=capsys)
    assert code == 0, err
    # What ran: 12 iterations with the milestones the run started with (4, 6), not 50%/75% of 12.
    assert recipe(RESNET, *common, "--max-iter", "12", "--milestones", "4", "6", "--out", tmp_path / "straight",
                  capsys=capsys)[0] == 0
    extended, straight = (read_json(tmp_path / d / "results.json") for d in ("run", "straight"))
    assert extended["iterations"] == 12 and extended["milestones"] == [4, 6] == extended["args"]["milestones"]
    assert extended["extensions"] == ["max_iter 8 -> 12"]
    seed = read_json(tmp_path / "run" / "seed_0" / "results.json")
    assert seed["iterations"] == 12 and seed["extensions"] == [{"at_iteration": 8, "max_iter": [8, 12]}]
    a, b = (torch.load(tmp_path / d / "seed_0" / "checkpoint.pt", weights_only=False) for d in ("run", "straight"))
    assert a["step"] == b["step"] == 12
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["train_log"] == b["train_log"]


def test_imagefolder_is_normalised_with_its_own_statistics_and_recorded_as_itself(folder, tmp_path, capsys):
    assert recipe(RESNET, "--depth", "8", "--data-dir", folder, "--out", tmp_path / "run", *SHORT,
                  capsys=capsys)[0] == 0
    results = read_json(tmp_path / "run" / "results.json")
    assert results["dataset"] == f"imagefolder:{Path(folder).name}"
    # --dataset and --download choose torchvision's data, which did not run: the record leaves them out
    assert "dataset" not in results["args"] and "download" not in results["args"]
    assert results["args"]["data_dir"] == str(Path(folder).resolve())
    images = load_images(folder, train=True)[0].float().div(255)
    mean = images.mean(dim=(0, 2, 3))
    std = images.transpose(0, 1).reshape(3, -1).std(dim=1)
    torch.testing.assert_close(torch.tensor(results["normalization"]["mean"]), mean)
    torch.testing.assert_close(torch.tensor(results["normalization"]["std"]), std)


def test_imagefolder_without_test_split_is_never_sent_to_torchvision(tmp_path, capsys):
    data = make_imagefolder(tmp_path / "data", classes=3, per_class=(16, 6))
    shutil.rmtree(data / "test")
    code, _, err = recipe(RESNET, "--depth", "8", "--data-dir", data, "--out", tmp_path / "run", *SHORT,
                          capsys=capsys)
    assert code == 2 and "has no test/ with class folders" in err and str(data / "test") in err
    assert sorted(p.name for p in data.iterdir()) == ["train"]  # nothing downloaded into the user's folder
    assert not (tmp_path / "run").exists()


def test_a_val_folder_is_never_taken_for_the_test_set(tmp_path, capsys):
    data = make_imagefolder(tmp_path / "data", classes=3, per_class=(16, 6))
    (data / "test").rename(data / "val")
    code, _, err = recipe(RESNET, "--depth", "8", "--data-dir", data, "--out", tmp_path / "run", *SHORT,
                          capsys=capsys)
    assert code == 2 and err.count("\n") == 1
    assert "has val/ but no test/" in err and "rename val/ to test/" in err
    assert not (tmp_path / "run").exists()


def test_resume_without_a_checkpoint_names_the_path(folder, tmp_path, capsys):
    code, _, err = recipe(RESNET, "--depth", "8", "--data-dir", folder, "--out", tmp_path / "run", "--resume", *SHORT,
                          capsys=capsys)
    assert code == 2 and str(tmp_path / "run" / "seed_0" / "checkpoint.pt") in err and "without --resume" in err


def test_init_is_recorded_and_reaches_the_model_builder(folder, tmp_path, capsys, monkeypatch):
    assert recipe(RESNET, "--depth", "8", "--data-dir", folder, "--out", tmp_path / "he", *SHORT,
                  capsys=capsys)[0] == 0
    results = read_json(tmp_path / "he" / "results.json")
    assert results["init"] == "he" == results["args"]["init"]

    import layeract_patch.models as models

    seen = []
    build = models.cifar_resnet

    def recording_builder(*args, init=None, **kwargs):  # until models/ takes `init`, record and build
        seen.append(init)
        return build(*args, **kwargs)

    monkeypatch.setattr(models, "cifar_resnet", recording_builder)
    assert recipe(RESNET, "--depth", "8", "--init", "torch", "--data-dir", folder, "--out", tmp_path / "torch",
                  *SHORT, capsys=capsys)[0] == 0
    assert seen == ["torch"] and read_json(tmp_path / "torch" / "results.json")["init"] == "torch"
    code, _, err = recipe(RESNET, "--init", "xavier", capsys=capsys)
    assert code == 2 and "invalid choice: 'xavier'" in err


def test_main_leaves_the_parsed_flags_as_they_were(folder, tmp_path, capsys):
    module = runpy.run_path(str(RESNET))  # the recipe's library contract: get_args_parser() + main(args)
    args = module["get_args_parser"]().parse_args(["--depth", "8", "--data-dir", str(folder), "--norm", "none",
                                                   "--out", str(tmp_path / "run"), *SHORT])
    before = dict(vars(args))
    results = module["main"](args)
    assert vars(args) == before and args.lr is None and args.milestones is None
    assert results["args"]["lr"] == 0.01 and results["args"]["milestones"] == [4, 6]  # what ran is in the results
