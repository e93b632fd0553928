"""The study runner never loses a record: a killed runner's finished run is recovered, a second runner on the same
folder stops, damaged study files are named with what to do, and an unusable --out is one error line."""
import json
import subprocess
from dataclasses import asdict

import pytest

from layeract_patch.studies import presets
from layeract_patch.studies import reproduce as runner
from test_recipes import hold_lock
from test_reproduce import reproduce
from test_training import make_imagefolder

(SPEC,) = presets.select("smoke", acts=["relu"], seeds=[0])
ARGS = ["--preset", "smoke", "--acts", "relu", "--seeds", "0", "--threads", "1", "--no-figures"]


@pytest.fixture
def study(tmp_path):
    """A data folder and a study folder whose one run finished (runs/<name>/results.json as the recipe writes it)."""
    data = make_imagefolder(tmp_path / "data", classes=3, per_class=(2, 1))
    out = tmp_path / "study"
    run = out / "runs" / SPEC.name
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({
        "dataset": "imagefolder:data", "args": {"amp": False, "device": "auto", "data_dir": str(data)},
        "runs": [{"seed": 0, "iterations": 12, "train_seconds": 3.0, "val": None,
                  "test": {"top1": 40.0, "top5": 100.0, "loss": 1.1, "loss_std": 0.2}}]}))
    return data, out


@pytest.fixture
def no_runs(monkeypatch):
    def launched(*args, **kwargs):
        raise AssertionError("a run was launched")

    monkeypatch.setattr(runner, "_launch", launched)


def test_a_finished_run_whose_runner_was_killed_is_recovered_into_runs_csv(study, capsys, no_runs):
    data, out = study  # the recipe finished and wrote results.json; kill -9 of the runner: no meta/<name>.json
    code, stdout, err = reproduce(*ARGS, "--data-dir", data, "--out", out, capsys=capsys)
    assert code == 0, err
    assert "1 finished already" in stdout and f"recovered the record of 1 finished run(s)" in stdout
    meta = json.loads((out / "meta" / f"{SPEC.name}.json").read_text())
    assert meta["recovered"].startswith(f"rebuilt from runs/{SPEC.name}") and meta["wall_seconds"] is None
    assert meta["command"].endswith(f"--data-dir {data} --out {out / 'runs' / SPEC.name}")
    rows = (out / "runs.csv").read_text().splitlines()
    assert len(rows) == 2 and f"runs/{SPEC.name}" in rows[1] and ",40.0," in rows[1]
    code, stdout, _ = reproduce(*ARGS, "--data-dir", data, "--out", out, capsys=capsys)
    assert code == 0 and "recovered" not in stdout  # once


def test_a_second_runner_on_the_same_study_stops_naming_the_first(study, capsys):
    data, out = study
    started = out / "runs" / "cifar_resnet8_bn_he_relu_cifar10_it12_s1"  # the first runner's run, before its
    started.mkdir()                                                     # first checkpoint
    (started / "log.txt").write_text("training")
    holder = hold_lock(out)
    try:
        code, _, err = reproduce(*ARGS, "--seeds", "0", "1", "--data-dir", data, "--out", out, capsys=capsys)
    finally:
        holder.kill()
        holder.wait()
    assert code == 2 and err.count("\n") == 1 and f"in use by another run (pid {holder.pid})" in err
    assert (started / "log.txt").is_file() and not (out / "meta").exists()  # nothing cleared, nothing recorded


@pytest.mark.parametrize("damage, where, what", [
    ("truncated", "results", "not a JSON object"),
    ("truncated", "meta", "not a JSON object"),
    ("empty object", "meta", "no 'spec' entry"),
    ("no runs", "results", "an empty 'runs' list"),
])
def test_a_damaged_study_file_is_named_with_what_to_do(study, capsys, no_runs, damage, where, what):
    data, out = study
    (out / "meta").mkdir()
    (out / "meta" / f"{SPEC.name}.json").write_text(json.dumps({  # as the runner records a run
        "spec": {**asdict(SPEC), "name": SPEC.name}, "command": "python recipes/cifar_resnet.py", "attempts": [],
        "wall_seconds": 5.0, "returncode": 0, "amp": False, "data_dir": str(data), "code_version": []}))
    assert reproduce(*ARGS, "--data-dir", data, "--out", out, capsys=capsys)[0] == 0
    path = out / "meta" / f"{SPEC.name}.json" if where == "meta" else out / "runs" / SPEC.name / "results.json"
    text = path.read_text()
    path.write_text({"truncated": text[: len(text) // 2], "empty object": "{}",
                     "no runs": json.dumps({**json.loads(text), "runs": []})}[damage])
    for flags in (ARGS + ["--data-dir", data], ["--report-only"]):
        code, _, err = reproduce(*flags, "--out", out, capsys=capsys)
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
        assert f"study file '{path}' is damaged: " in err and what in err and "delete it and run the study" in err


def test_an_out_that_is_a_file_or_cannot_be_written_is_one_error_line(study, tmp_path, capsys):
    data, _ = study
    (tmp_path / "a_file").write_text("")
    for flags in ([], ["--dry-run"]):  # a dry run does not list paths under a file either
        code, stdout, err = reproduce(*ARGS, *flags, "--data-dir", data, "--out", tmp_path / "a_file", capsys=capsys)
        assert code == 2 and stdout == "" and "is a file, not a folder" in err and err.count("\n") == 1
    with read_only(tmp_path / "locked") as locked:
        code, _, err = reproduce(*ARGS, "--data-dir", data, "--out", locked / "study", capsys=capsys)
        assert code == 2 and err.count("\n") == 1 and "cannot be written" in err, err
        assert list(locked.iterdir()) == []


class read_only:
    """A folder no one may write to: chmod for a user, the immutable attribute for root (who ignores modes)."""

    def __init__(self, folder):
        self.folder = folder

    def __enter__(self):
        import os

        self.folder.mkdir()
        if os.getuid() == 0:
            if subprocess.run(["chattr", "+i", str(self.folder)], capture_output=True).returncode != 0:
                pytest.skip("running as root where chattr +i is not available: no folder is read-only to root")
        else:
            self.folder.chmod(0o555)
        return self.folder

    def __exit__(self, *exc):
        subprocess.run(["chattr", "-i", str(self.folder)], capture_output=True)
        self.folder.chmod(0o755)
