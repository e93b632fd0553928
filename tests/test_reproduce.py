"""The study runner (recipes/reproduce.py): its statistics, its report, and the smoke preset end to end."""
import csv
import json
import re
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from layeract_patch.studies import presets
from layeract_patch.studies.figures import accuracy_interval
from layeract_patch.studies.report import build_report, group_runs, read_runs
from layeract_patch.studies.reproduce import RUN_COLUMNS
from layeract_patch.studies.stats import betainc, confidence_interval, t_cdf, t_quantile, t_two_sided_p, welch_test
from test_recipes import recipe
from test_training import make_imagefolder

ROOT = Path(__file__).resolve().parents[1]
REPRODUCE = ROOT / "recipes" / "reproduce.py"


def reproduce(*args, capsys=None):
    """`python recipes/reproduce.py args...`, in this process (the runs themselves are subprocesses)."""
    return recipe(REPRODUCE, *args, capsys=capsys)


# --- statistics, against closed forms and published tables -----------------------------------------------

def two_sided_p_closed_form(t, df):
    """Student's t for df 1, 2, 4 has elementary CDFs; theta = atan(t / sqrt(df))."""
    t = abs(t)
    if df == 1:
        return 1 - 2 / math.pi * math.atan(t)
    if df == 2:
        return 1 - t / math.sqrt(2 + t * t)
    theta = math.atan(t / 2)
    return 1 - math.sin(theta) * (1 + math.cos(theta) ** 2 / 2)


@pytest.mark.parametrize("df", [1, 2, 4])
@pytest.mark.parametrize("t", [0.1, 0.7, 1.5, 2.4494897, 6.0, 40.0])
def test_t_distribution_matches_closed_forms(t, df):
    assert t_two_sided_p(t, df) == pytest.approx(two_sided_p_closed_form(t, df), abs=1e-12)
    assert t_cdf(t, df) + t_cdf(-t, df) == pytest.approx(1.0, abs=1e-12)


def test_t_values_from_tables():
    assert t_two_sided_p(2.0, 5) == pytest.approx(0.1019, abs=5e-5)
    assert t_quantile(0.975, 2) == pytest.approx(4.303, abs=5e-4)
    assert t_quantile(0.975, 10) == pytest.approx(2.228, abs=5e-4)
    assert t_quantile(0.975, 1e6) == pytest.approx(1.960, abs=5e-4)
    assert t_quantile(0.025, 4) == pytest.approx(-2.776, abs=5e-4)
    # I_x(2, 3) = sum_{j=2..4} C(4, j) x^j (1-x)^(4-j) at x = 0.4
    assert betainc(2, 3, 0.4) == pytest.approx(0.3456 + 0.1536 + 0.0256, abs=1e-12)
    with pytest.raises(ValueError, match="0 <= x <= 1"):
        betainc(1, 1, 1.5)


def test_welch_and_confidence_interval_by_hand():
    test = welch_test([93.0, 94.0, 98.0], [92.0, 93.0, 94.0])
    # variances of the means 7/3 and 1/3: t = 2 / sqrt(8/3), df = (8/3)^2 / ((7/3)^2/2 + (1/3)^2/2) = 2.56
    assert test.difference == 2.0 and test.t == pytest.approx(2 / math.sqrt(8 / 3))
    assert test.df == pytest.approx(2.56) and test.p == pytest.approx(t_two_sided_p(test.t, 2.56))
    equal = welch_test([90.0, 91.0, 92.0], [92.0, 93.0, 94.0])  # equal variances, equal n: df = 4
    assert equal.df == pytest.approx(4) and equal.p == pytest.approx(two_sided_p_closed_form(math.sqrt(6), 4))
    low, high = confidence_interval([90.0, 91.0, 92.0])
    half = 4.302653 / math.sqrt(3)  # t_{0.975, 2} * s / sqrt(n), s = 1
    assert low == pytest.approx(91 - half, abs=1e-5) and high == pytest.approx(91 + half, abs=1e-5)
    assert welch_test([1.0], [2.0, 3.0]) is None and confidence_interval([1.0]) is None


# --- the report from a hand-written runs.csv -----------------------------------------------------------------

def write_runs_csv(path, runs, corruptions=None, **same):
    """runs: (act, seed, top1, loss std); corruptions: (act, seed) -> {"c_total": ..., ...} for some runs;
    `same`: columns every row gets (e.g. amp=True)."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RUN_COLUMNS, restval="")
        writer.writeheader()
        for act, seed, top1, loss_std in runs:
            writer.writerow(dict(**(corruptions or {}).get((act, seed), {}), **same, model="cifar_resnet", depth=20, norm="bn", act=act, init="he", seed=seed,
                                 dataset="cifar10", iterations=2500, test_top1=top1, test_loss=0.5,
                                 test_loss_std=loss_std, max_iter=2500, milestones="1250 1875", lr=0.1,
                                 batch_size=128, eval_every=250, data_dir="/data/cifar10",
                                 run_dir=f"runs/r20_{act}_s{seed}", command="python recipes/cifar_resnet.py ..."))


def test_report_statistics_from_a_hand_written_csv(tmp_path):
    write_runs_csv(tmp_path / "runs.csv", [
        ("relu", 0, 90.0, 1.5), ("relu", 1, 91.0, 1.6), ("relu", 2, 92.0, 1.7),
        ("silu", 0, 92.0, 1.6), ("silu", 1, 93.0, 1.6), ("silu", 2, 94.0, 1.7),
        ("la_silu", 0, 93.0, 1.3), ("la_silu", 1, 94.0, 1.4), ("la_silu", 2, 98.0, 1.5),
        ("la_hardsilu", 0, 91.5, 1.4),
    ])
    (group,) = group_runs(read_runs(tmp_path / "runs.csv"))
    relu, la_silu = group.acts["relu"], group.acts["la_silu"]
    assert (relu.n, relu.best, relu.mean, relu.std) == (3, 92.0, 91.0, 1.0)
    assert la_silu.mean == 95.0 and la_silu.std == pytest.approx(math.sqrt(7))
    assert la_silu.vs["silu"].df == pytest.approx(2.56) and la_silu.vs["relu"].difference == 4.0
    assert relu.vs["silu"].p == pytest.approx(0.070484, abs=1e-6)  # t = -sqrt(6), df = 4
    assert la_silu.loss_std_vs["relu"].p == pytest.approx(0.070484, abs=1e-6)  # -0.2 with std 0.1 each
    assert group.acts["la_hardsilu"].vs["silu"] is None  # one seed: no test

    text = build_report(tmp_path, figures=False).read_text()
    assert "## ResNet-20, batch norm, He init, CIFAR-10, 2,500 iterations" in text
    assert "Paper: Table 3 and Table 5 (5 runs)." in text
    assert "| ReLU | 3 | 92.00 | 91.00 ± 1.00 | [88.52, 93.48] | 0.07 | – | 91.68 / 91.41 | 1.600 ± 0.100 " \
           "| 1.51 / 1.53 |" in text
    p = la_silu.vs["silu"].p
    assert f"LA-SiLU vs SiLU, test top-1: +2.00 points, p={p:.2g} (n=3 vs 3): not significant" in text
    assert "The paper: +0.23 (same direction)." in text
    assert "SiLU vs ReLU, test top-1: +2.00 points, p=0.07 (n=3 vs 3)" in text and "ReLU vs SiLU" not in text
    assert "LA-SiLU vs SiLU, per-sample test-loss std (Table 5; lower = more balanced): -0.233" in text
    assert "The paper: -0.22 (same direction)." in text  # Table 5 means 1.39 vs 1.61
    assert "LA-HardSiLU vs SiLU, test top-1: -1.50 points (n=1 vs 3): too few seeds for a test" in text
    assert "| LA-HardSiLU | 1 | 91.50 | 91.50 | – |" in text  # one seed: no spread shown, no interval
    assert "2,500 iterations, lr 0.1 / 10 at 1,250 and 1,875, batch 128" in text
    # another machine's folder means nothing to a reader: the data set is named, not the path it had there
    assert "3.9% of the paper's training" in text and "Data: CIFAR-10. " in text and "/data/cifar10" not in text
    assert "rebuild this file from the repository root with `.venv/bin/python recipes/reproduce.py" in text
    assert "Runs that did not finish" not in text

    # A run that stopped with an error (the recipe's diverged-loss exit) is listed, not silently dropped.
    name = "cifar_resnet32_none_torch_silu_cifar10_it2500_s0"
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / f"{name}.json").write_text(json.dumps({"spec": {"name": name}, "returncode": 1}))
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / f"{name}.log").write_text("...\ncifar_resnet.py: error: training diverged: loss nan\n")
    text = build_report(tmp_path, figures=False).read_text()
    assert f"- `{name}`: exit 1: cifar_resnet.py: error: training diverged: loss nan" in text


def test_report_robustness_table_from_a_hand_written_csv(tmp_path):
    runs = [("relu", 0, 90.0, 1.5), ("relu", 1, 91.0, 1.6), ("silu", 0, 92.0, 1.6), ("silu", 1, 93.0, 1.6),
            ("la_silu", 0, 93.0, 1.3), ("la_silu", 1, 94.0, 1.4)]
    groups = dict(c_clean=90.0, c_noise=50.0, c_blur=60.0, c_digital=70.0, c_weather=75.0, c_extra=72.0)
    totals = {("silu", 0): 70.0, ("silu", 1): 71.0, ("la_silu", 0): 72.0, ("la_silu", 1): 74.0}
    write_runs_csv(tmp_path / "runs.csv", runs, {key: dict(groups, c_total=t) for key, t in totals.items()})
    text = build_report(tmp_path, figures=False).read_text()
    assert "| activation | n | clean | Total | Noise | Blur | Digital | Weather | Extra | p(Total) vs SiLU |" in text
    p = welch_test([72.0, 74.0], [70.0, 71.0]).p  # t = 2.5 / sqrt(1.25) = 2.236, df = 1.47
    assert f"| LA-SiLU | 2 | 90.00 ± 0.00 | 73.00 ± 1.41 | 50.00 ± 0.00 |" in text
    assert f"LA-SiLU vs SiLU, corrupted top-1 (Total): +2.50 points, p={p:.2g}: not significant" in text
    assert "| ReLU |" not in text.split("Robustness:")[1]  # ReLU's runs were not evaluated: no row, no test
    write_runs_csv(tmp_path / "runs.csv", runs)  # no run evaluated: no robustness table at all
    assert "Robustness:" not in build_report(tmp_path, figures=False).read_text()


@pytest.mark.matplotlib
def test_report_figures_or_a_note_without_matplotlib(tmp_path):
    write_runs_csv(tmp_path / "runs.csv", [("silu", 0, 90.0, 1.5), ("silu", 1, 91.0, 1.6),
                                           ("la_silu", 0, 91.0, 1.4), ("la_silu", 1, 92.0, 1.3)])
    for act, seed in (("silu", 0), ("silu", 1), ("la_silu", 0), ("la_silu", 1)):
        seed_dir = tmp_path / f"runs/r20_{act}_s{seed}" / f"seed_{seed}"
        seed_dir.mkdir(parents=True)
        seed_dir.joinpath("train_log.csv").write_text(
            "iteration,train_loss,lr\n" + "".join(f"{i},{2.3 - i / 2000 - seed / 10},0.1\n" for i in range(100, 2600, 100)))
    text = build_report(tmp_path).read_text()
    try:
        import matplotlib  # noqa: F401  (not a dependency)
    except ImportError:
        assert "Figures skipped: matplotlib is not installed" in text
        assert not (tmp_path / "figures").exists()
    else:
        slug = "cifar_resnet20_bn_he_cifar10_it2500"
        for kind in ("loss", "top1"):
            assert (tmp_path / "figures" / f"{slug}_{kind}.png").stat().st_size > 1000
            assert f"(figures/{slug}_{kind}.png)" in text


def test_report_early_training_loss_and_precision(tmp_path):
    runs = [("silu", 0, 90.0, 1.5), ("silu", 1, 91.0, 1.6), ("la_silu", 0, 91.0, 1.4), ("la_silu", 1, 92.0, 1.3)]
    write_runs_csv(tmp_path / "runs.csv", runs, amp=True)
    for act, seed, *_ in runs:
        seed_dir = tmp_path / f"runs/r20_{act}_s{seed}" / f"seed_{seed}"
        seed_dir.mkdir(parents=True)
        offset = 0.2 if act == "la_silu" else 0.0  # LA-SiLU's loss sits 0.2 lower all along
        seed_dir.joinpath("train_log.csv").write_text("iteration,train_loss,lr\n" + "".join(
            f"{i},{2.3 - i / 2000 - seed / 10 - offset},0.1\n" for i in range(100, 2600, 100)))
    text = build_report(tmp_path, figures=False).read_text()
    # by hand: windows 100..1200 lie before the drop at 1250, mean iteration 650 -> 2.3 - 0.325 - seed / 10
    silu, la = [1.975, 1.875], [1.775, 1.675]
    assert "mean training loss over the first 1,250 iterations" in text
    assert "| SiLU | 2 | 1.925 ± 0.071 | – |" in text  # a column per reference run here: SiLU only
    p = welch_test(la, silu).p  # t = -0.2 / 0.0707, df = 2
    assert p == pytest.approx(0.1056, abs=1e-3)
    assert f"| LA-SiLU | 2 | 1.725 ± 0.071 | {p:.2g} |" in text
    assert f"LA-SiLU vs SiLU, early training loss: -0.200, p={p:.2g}: not significant" in text
    # the precision is part of the table's identity and said beside the schedule
    assert "2,500 iterations, bf16 autocast" in text and "Precision: bfloat16 autocast" in text
    write_runs_csv(tmp_path / "runs.csv", runs)  # float32 runs: no precision note
    assert "autocast" not in build_report(tmp_path, figures=False).read_text()


def test_report_compares_la_gelu_with_gelu(tmp_path):
    # the gelu preset's table has no SiLU or ReLU runs: its p-values are against GELU, in a column of their own
    write_runs_csv(tmp_path / "runs.csv", [
        ("la_gelu_affine", 0, 58.0, 1.10), ("la_gelu_affine", 1, 59.0, 1.12),
        ("la_gelu", 0, 59.0, 1.10), ("la_gelu", 1, 60.0, 1.11), ("gelu", 0, 57.0, 1.20), ("gelu", 1, 58.0, 1.22)])
    (group,) = group_runs(read_runs(tmp_path / "runs.csv"))
    assert list(group.acts) == ["gelu", "la_gelu", "la_gelu_affine"]  # the plain activation first, as for SiLU
    p = welch_test([59.0, 60.0], [57.0, 58.0]).p
    assert group.acts["la_gelu"].vs["gelu"].p == pytest.approx(p)
    text = build_report(tmp_path, figures=False).read_text()
    assert "| activation | n | best | mean ± std | 95% CI | p vs GELU | paper best / mean |" in text
    assert "p vs SiLU" not in text and "p vs ReLU" not in text
    assert f"| LA-GELU | 2 | 60.00 | 59.50 ± 0.71 | [53.15, 65.85] | {p:.2g} | – |" in text
    assert f"LA-GELU vs GELU, test top-1: +2.00 points, p={p:.2g} (n=2 vs 2)" in text
    assert "Affine LA-GELU vs GELU, per-sample test-loss std" in text and "GELU vs LA-GELU" not in text


# --- presets and selection ---------------------------------------------------------------------------------

def test_presets_and_selection():
    cpu = presets.cpu()
    assert len(cpu) == 18 and {r.seed for r in cpu} == {0, 1, 2}
    no_norm = [r for r in cpu if r.norm == "none"]
    assert {(r.depth, r.act, r.init) for r in no_norm} == {(32, "silu", "torch"), (32, "la_silu", "torch")}
    for run in (no_norm[0], cpu[0]):  # the init is always named: the command says what ran
        assert run.recipe_args()[run.recipe_args().index("--init") + 1] == run.init
    assert no_norm[0].recipe_args()[no_norm[0].recipe_args().index("--lr") + 1] == "0.01"
    paper = presets.paper()
    assert len(paper) == 155 and all(r.schedule.resolved_milestones() == (32000, 48000) for r in paper)
    assert {r.init for r in paper if r.model == "cifar_resnet" and r.norm == "none"} == {"torch"}
    picked = presets.select("cpu", acts=["LA-SiLU"], seeds=[5, 6], max_iter=100)
    assert {(r.depth, r.act, r.seed) for r in picked} == {(20, "la_silu", 5), (20, "la_silu", 6),
                                                          (32, "la_silu", 5), (32, "la_silu", 6)}
    assert all(r.schedule.resolved_milestones() == (50, 75) for r in picked)
    with pytest.raises(ValueError, match="no run of preset 'cpu' matches"):
        presets.select("cpu", depths=[56])


@pytest.mark.parametrize("flags, message", [
    (["--preset", "cpu", "--acts", "mish"], "unknown activation 'mish'"),
    (["--preset", "smoke", "--norms", "batch"], "unknown norm 'batch'"),
    (["--preset", "smoke", "--data-dir", "{tmp}/missing", "--out", "{tmp}/o"], "data dir '{tmp}/missing' does not"),
    (["--report-only", "--out", "{tmp}/nothing"], "--report-only needs --out"),
    (["--acts", "relu"], "choose --preset"),
])
def test_bad_input_is_one_error_line(tmp_path, capsys, flags, message):
    code, _, err = reproduce(*[f.format(tmp=tmp_path) for f in flags], capsys=capsys)
    assert code == 2 and err.count("\n") == 1 and message.format(tmp=tmp_path) in err
    assert not (tmp_path / "o").exists()


def test_a_dry_run_prints_what_the_run_would(tmp_path, capsys):
    data = make_imagefolder(tmp_path / "data", classes=3, per_class=(10, 4))
    out = tmp_path / "study"
    args = ["--preset", "smoke", "--acts", "relu", "la_silu", "--seeds", "0", "1", "--data-dir", data, "--out", out,
            "--jobs", "2"]
    (out / "runs" / "cifar_resnet8_bn_he_relu_cifar10_it12_s1").mkdir(parents=True)  # a finished run: not started
    (out / "runs" / "cifar_resnet8_bn_he_relu_cifar10_it12_s1" / "results.json").write_text("{}")
    code, stdout, err = reproduce(*args, "--dry-run", capsys=capsys)
    assert code == 0, err
    lines = stdout.splitlines()
    assert lines[0] == "4 runs: 1 finished already, 0 to resume, 3 to start; 2 at a time, 1 thread(s) each"
    started = [line for line in lines if line.startswith("[")]
    assert started == ["[1/3] start cifar_resnet8_bn_he_relu_cifar10_it12_s0",  # seed-major, as the runner goes
                       "[2/3] start cifar_resnet8_bn_he_la_silu_cifar10_it12_s0",
                       "[3/3] start cifar_resnet8_bn_he_la_silu_cifar10_it12_s1"]
    assert lines[-1] == "dry run: nothing started; without --dry-run 3 runs would start in this order, 2 at a time"
    assert not (out / "meta").exists() and not (out / "logs").exists()
    # where the real run would stop at once, so does the dry run: no list of runs that would never start
    code, stdout, err = reproduce(*args[:-4], "--data-dir", tmp_path / "missing", "--out", out, "--dry-run",
                                  capsys=capsys)
    assert code == 2 and stdout == "" and f"data dir '{tmp_path / 'missing'}' does not exist" in err


def test_the_accuracy_figure_draws_intervals_within_what_is_possible():
    class Stats:
        mean, ci = 15.1, (-38.6, 68.9)  # n=2: the t-interval leaves 0-100%

    assert accuracy_interval(Stats) == (0.0, 68.9)
    Stats.mean, Stats.ci = 95.0, (88.0, 102.5)
    assert accuracy_interval(Stats) == (88.0, 100.0)
    Stats.ci = None  # one seed: the mean alone
    assert accuracy_interval(Stats) == (95.0, 95.0)


# --- the smoke preset end to end, twice, then an interrupted and a partial run -------------------------------

def test_smoke_preset_runs_resumes_and_reports(tmp_path, capsys, monkeypatch):
    data = make_imagefolder(tmp_path / "data", classes=3, per_class=(10, 4))
    out = tmp_path / "study"
    args = ["--preset", "smoke", "--data-dir", data, "--out", out, "--jobs", "2", "--threads", "1"]
    code, stdout, err = reproduce(*args, capsys=capsys)
    assert code == 0, err
    with open(out / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["act"], r["seed"]) for r in rows) == [("la_silu", "0"), ("la_silu", "1"), ("relu", "0"),
                                                            ("relu", "1")]
    for row in rows:
        results = json.loads((out / row["run_dir"] / "results.json").read_text())
        assert float(row["test_top1"]) == results["test"]["top1"] and int(row["iterations"]) == 12
        assert row["command"].startswith("OMP_NUM_THREADS=1 ") and "--max-iter 12 --milestones 6 9" in row["command"]
        assert "--resume" not in row["command"] and float(row["wall_seconds"]) > 0
    report = (out / "report.md").read_text()
    # Seed-major: both seed-0 runs are launched before any seed-1 run.
    logs = sorted((out / "logs").glob("*.log"), key=lambda p: p.stat().st_ctime)
    assert [p.name.endswith("_s0.log") for p in logs] == [True, True, False, False]
    assert "## ResNet-8, batch norm, He init, CIFAR-10, 12 iterations" in report
    # what the recipe really loaded; the folder by its name, as the study's absolute path is this machine's
    assert "CIFAR-10 as an ImageFolder (`data`, loaded as `imagefolder:data`)" in report and str(data) not in report
    assert "| LA-SiLU | 2 |" in report and "| ReLU | 2 |" in report and "LA-SiLU vs ReLU, test top-1" in report

    # Twice: nothing runs again, runs.csv keeps one row per run.
    def no_run(*a, **k):
        raise AssertionError("a finished run was launched again")

    monkeypatch.setattr(subprocess, "run", no_run)
    code, stdout, _ = reproduce(*args, capsys=capsys)
    assert code == 0 and "4 finished already" in stdout
    monkeypatch.undo()

    # An interrupted run (checkpoint, no results) resumes; a run stopped before its first checkpoint restarts.
    resumed, restarted = (out / r["run_dir"] for r in rows[:2])
    (resumed / "results.json").unlink()
    next(resumed.glob("seed_*/results.json")).unlink()
    shutil.rmtree(restarted)
    restarted.mkdir()
    (restarted / "stale.txt").write_text("written before the first checkpoint")
    code, stdout, err = reproduce(*args, capsys=capsys)
    assert code == 0, err
    assert "2 finished already, 1 to resume, 1 to start" in stdout
    assert "resumed from" in (out / "logs" / f"{resumed.name}.log").read_text()
    attempts = json.loads((out / "meta" / f"{resumed.name}.json").read_text())["attempts"]
    assert len(attempts) == 2 and attempts[1]["command"].endswith("--resume")
    versions = json.loads((out / "meta" / f"{resumed.name}.json").read_text())["code_version"]
    assert len(versions) == 2 and all(v == "unknown" or len(v.split("+")[0]) == 40 for v in versions)
    attempts = json.loads((out / "meta" / f"{restarted.name}.json").read_text())["attempts"]
    assert len(attempts) == 2 and not attempts[1]["command"].endswith("--resume")
    assert (restarted / "results.json").is_file() and not (restarted / "stale.txt").exists()
    with open(out / "runs.csv") as f:
        assert sorted(r["run_dir"] for r in csv.DictReader(f)) == sorted(r["run_dir"] for r in rows)

    # --eval-corruptions on a finished study: each run is evaluated on CIFAR-C without training again.
    code, stdout, err = reproduce(*args, "--acts", "la_silu", "--seeds", "0", "--eval-corruptions", capsys=capsys)
    assert code == 0, err
    assert "1 finished already" not in stdout and "1 to evaluate on CIFAR-C" in stdout
    with open(out / "runs.csv") as f:
        evaluated = [r for r in csv.DictReader(f) if r["c_total"]]
    assert [(r["act"], r["seed"]) for r in evaluated] == [("la_silu", "0")]
    results = json.loads((out / evaluated[0]["run_dir"] / "results.json").read_text())
    assert float(evaluated[0]["c_total"]) == pytest.approx(results["corruptions"]["groups"]["Total"])
    assert results["runs"][0]["iterations"] == 12  # not retrained
    assert "Robustness: top-1 (%) on the test set under the 19 CIFAR-C corruptions" in (out / "report.md").read_text()


def test_a_run_records_the_code_it_started_from(tmp_path, capsys, monkeypatch):
    """The checkout may move on while a run trains: the record names the commit at the run's start."""
    from layeract_patch.studies import reproduce as runner

    checkout = {"version": "a" * 40}
    monkeypatch.setattr(runner, "_code_version", lambda root: checkout["version"])
    real_popen = subprocess.Popen

    class CommitDuringRun(real_popen):
        def wait(self, *args, **kwargs):
            checkout["version"] = "b" * 40  # a commit lands while the recipe runs
            return super().wait(*args, **kwargs)

    monkeypatch.setattr(runner.subprocess, "Popen", CommitDuringRun)
    data = make_imagefolder(tmp_path / "data", classes=3, per_class=(10, 4))
    out = tmp_path / "study"
    code, _, err = reproduce("--preset", "smoke", "--data-dir", data, "--out", out, "--acts", "relu", "--seeds", "0",
                             "--threads", "1", capsys=capsys)
    assert code == 0, err
    (meta,) = (out / "meta").glob("*.json")
    assert json.loads(meta.read_text())["code_version"] == ["a" * 40]


def test_a_background_study_stops_on_sigterm_and_its_run_can_continue(tmp_path):
    # Started as `cmd &` from a script, the runner has SIGINT ignored; SIGTERM must still stop it cleanly:
    # the running recipe saves a checkpoint (exit 130), nothing new starts, and no process is left behind.
    import os
    import signal
    import time

    data = make_imagefolder(tmp_path / "data", classes=3, per_class=(10, 4))
    out = tmp_path / "study"
    command = [sys.executable, str(REPRODUCE), "--preset", "smoke", "--acts", "relu", "--seeds", "0", "1",
               "--max-iter", "100000", "--data-dir", str(data), "--out", str(out), "--threads", "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runner = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    log = out / "logs" / "cifar_resnet8_bn_he_relu_cifar10_it100000_s0.log"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.is_file() and "seed 0 " in log.read_text()):
        time.sleep(0.2)
    assert runner.poll() is None, runner.stdout.read()
    runner.send_signal(signal.SIGTERM)
    output, _ = runner.communicate(timeout=120)
    assert runner.returncode == 130, output
    assert "interrupted; run the same command again to continue" in output
    meta = json.loads((out / "meta" / "cifar_resnet8_bn_he_relu_cifar10_it100000_s0.json").read_text())
    assert [a["returncode"] for a in meta["attempts"]] == [130]
    assert (out / "runs" / "cifar_resnet8_bn_he_relu_cifar10_it100000_s0" / "seed_0" / "checkpoint.pt").is_file()
    assert not (out / "logs" / "cifar_resnet8_bn_he_relu_cifar10_it100000_s1.log").exists()  # nothing new started
    dry = subprocess.run(command + ["--dry-run"], env=env, capture_output=True, text=True)
    assert re.search(r"resume +cifar_resnet8_bn_he_relu_cifar10_it100000_s0", dry.stdout)
