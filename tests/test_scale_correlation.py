import csv
import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from layeract_patch.studies.scale_correlation import (CSV_COLUMNS, CorrelationConfig, check_config,
                                                      format_correlation_table, load_study_data, make_mlp,
                                                      plot_correlations, summarize_correlations,
                                                      train_and_measure, undefined_panels)

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "scale_correlation.py"


def _recipe():
    spec = importlib.util.spec_from_file_location("scale_correlation_recipe", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """64 RGB 8x8 images in 2 classes (dark / bright, with noise), as train/<class>/*.png."""
    root = tmp_path_factory.mktemp("rgb_folder")
    gen = torch.Generator().manual_seed(0)
    for label, base in (("dark", 60), ("bright", 180)):
        folder = root / "train" / label
        folder.mkdir(parents=True)
        for i in range(32):
            image = (base + 40 * torch.randn(3, 8, 8, generator=gen)).clamp(0, 255).to(torch.uint8)
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i:02d}.png")
    return root


def _config(root, out, **kw):
    settings = dict(data_dir=str(root), out=str(out), widths=(4, 8), acts=("relu", "la_silu"), seeds=(0, 1),
                    max_iter=6, batch_size=16, eval_samples=40, device="cpu")
    settings.update(kw)
    return check_config(CorrelationConfig(**settings))


def test_the_recipe_writes_correlations_summary_and_reports_the_grayscale_conversion(image_folder, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--data-dir", str(image_folder), "--widths", "4", "8", "--acts", "relu", "la_silu", "--seeds", "0", "1",
            "--max-iter", "6", "--batch-size", "16", "--eval-samples", "40", "--device", "cpu", "--out", str(out)]
    assert _recipe().run(argv) == 0
    printed = capsys.readouterr().out
    assert "RGB converted to grayscale" in printed and "8x8 -> 64 features" in printed
    with open(out / "correlations.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_COLUMNS
    # 64 images / batch 16: an epoch is 4 iterations, so measurements at 0, 4 (epoch 1) and 6 (the end).
    assert {r["iteration"] for r in rows} == {"0", "4", "6"}
    assert {r["layer"] for r in rows} == {"act1", "act2", "act3", "act4"}
    assert {(r["act"], r["width"], r["seed"]) for r in rows} == {
        (a, w, s) for a in ("relu", "la_silu") for w in ("4", "8") for s in ("0", "1")}
    assert len(rows) == 3 * 4 * 2 * 2 * 2
    for r in rows:
        assert math.isnan(float(r["pearson"])) or -1 <= float(r["pearson"]) <= 1
        assert 0 <= float(r["sum_mean"]) <= int(r["width"])
    summary = (out / "summary.md").read_text()
    assert "| relu | 4 | 2 |" in summary and "| la_silu | 8 | 2 |" in summary
    assert summary.split("\n\n", 1)[1] in printed


def test_measured_correlation_matches_an_independent_computation(image_folder, tmp_path):
    cfg = _config(image_folder, tmp_path, max_iter=1)
    data = load_study_data(cfg)
    rows = [r for r in train_and_measure(data, "relu", 8, 3, cfg) if r["iteration"] == 0]
    torch.manual_seed(3)
    model = make_mlp(64, 8, "relu", 2)
    x, y = data.inputs(data.eval_index), data.labels[data.eval_index]
    with torch.no_grad():
        hidden, counts = x, []
        for i in range(1, 5):
            pre = getattr(model, f"fc{i}")(hidden)
            counts.append((pre >= 0).sum(1).numpy())
            hidden = pre.clamp_min(0)
        losses = torch.nn.functional.cross_entropy(model.head(hidden), y, reduction="none").numpy()
    assert len(rows) == 4
    for row, count in zip(rows, counts):
        assert row["pearson"] == pytest.approx(np.corrcoef(losses, count)[0, 1], abs=1e-6)
        assert row["sum_mean"] == pytest.approx(count.mean()) and row["sum_std"] == pytest.approx(count.std(ddof=1))


def test_color_modes_and_the_eval_subset(image_folder, tmp_path):
    gray = load_study_data(_config(image_folder, tmp_path))
    rgb = load_study_data(_config(image_folder, tmp_path, color="rgb", eval_samples=1000))
    assert gray.pixels.shape == (64, 64) and rgb.pixels.shape == (64, 192)
    assert "RGB, flattened" in rgb.description
    assert len(gray.eval_index) == 40 and len(rgb.eval_index) == 64  # capped at the data size
    assert len(set(gray.eval_index.tolist())) == 40


def test_the_paper_schedule_is_the_default():
    cfg = check_config(CorrelationConfig(data_dir=".", device="cpu"))
    assert (cfg.max_iter, cfg.batch_size, cfg.lr, cfg.momentum, cfg.weight_decay) == (6400, 128, 0.01, 0.9, 1e-4)
    assert cfg.milestones == (3200, 4800)
    assert check_config(CorrelationConfig(data_dir=".", max_iter=2000, device="cpu")).milestones == (1000, 1500)


def test_summary_on_known_rows():
    def row(seed, iteration, pearson, cv, acc=0.5):
        return {"act": "relu", "width": 20, "seed": seed, "layer": "act1", "iteration": iteration,
                "pearson": pearson, "sum_cv": cv, "accuracy": acc}

    rows = [row(0, 0, 0.9, 9.0), row(0, 10, 0.5, 0.2), row(0, 20, -0.3, 0.4, acc=0.7),
            row(1, 10, math.nan, 0.0), row(1, 20, 0.1, 0.3, acc=0.9)]
    (s,) = summarize_correlations(rows)
    assert s["seeds"] == 2 and s["undefined"] == pytest.approx(0.25)
    assert s["mean_abs_r"] == pytest.approx(0.3) and s["max_abs_r"] == pytest.approx(0.5)
    assert s["final_r"] == pytest.approx(-0.1) and s["sum_cv"] == pytest.approx(0.225)
    assert s["final_accuracy"] == pytest.approx(0.8)
    assert "| relu | 20 | 2 | 0.300 | 0.500 | -0.100 | 0.2250 | 25% | 0.800 |" in format_correlation_table([s])
    # the column says what a missing correlation means
    table = format_correlation_table([s])
    assert "r undefined: the share of measurements" in table and "perfect balance" in table


@pytest.mark.matplotlib
def test_plot_is_skipped_quietly_without_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    rows = [{"act": "relu", "width": 4, "seed": 0, "layer": "act1", "epoch": 0.0, "pearson": 0.1}]
    assert plot_correlations(rows, tmp_path / "c.png") is None
    assert not (tmp_path / "c.png").exists()


@pytest.mark.matplotlib
def test_plot_is_written_with_matplotlib(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [{"act": a, "width": w, "seed": s, "layer": l, "epoch": e,
             "pearson": math.nan if (a, l) == ("la_hardsilu", "act2") else 0.1 * e}
            for a in ("relu", "la_hardsilu") for w in (4, 8) for s in (0, 1) for l in ("act1", "act2") for e in (0, 1)]
    assert plot_correlations(rows, tmp_path / "c.png").stat().st_size > 0


def test_a_panel_without_any_correlation_is_named_not_left_empty():
    rows = [{"act": a, "layer": l, "pearson": math.nan if (a, l) == ("la_hardsilu", "act4") or e == 0 else 0.2}
            for a in ("relu", "la_hardsilu") for l in ("act1", "act4") for e in (0, 1)]
    assert undefined_panels(rows) == [("la_hardsilu", "act4")]


def test_its_data_errors_ask_only_for_the_train_split_it_reads(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _recipe().run(["--data-dir", str(empty), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "an ImageFolder root with train/<class>/<image>, or a torchvision mnist root" in err and "test/" not in err
    assert "only train/ is read" in " ".join(_recipe().get_args_parser().format_help().split())


def test_bad_arguments_get_a_one_line_error_and_exit_code_2(image_folder, tmp_path, capsys):
    recipe = _recipe()
    assert recipe.run(["--data-dir", str(image_folder), "--acts", "relu", "gelu_x", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scale_correlation.py: error: unknown activation 'gelu_x'") and "la_silu" in err
    assert err.count("\n") == 1
    assert recipe.run(["--data-dir", str(image_folder), "--eval-samples", "1", "--out", str(tmp_path)]) == 2
    assert "--eval-samples must be >= 2" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert recipe.run(["--data-dir", str(empty), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"scale_correlation.py: error: data dir {str(empty)!r} holds no usable data")


def test_a_missing_data_dir_fails_cleanly_from_the_command_line(tmp_path):
    missing = tmp_path / "nowhere"
    result = subprocess.run([sys.executable, str(RECIPE), "--data-dir", str(missing), "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, PYTHONPATH=str(RECIPE.parents[1])))  # this checkout's package
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"scale_correlation.py: error: data dir {str(missing)!r} does not exist")
    assert "--download" in result.stderr


def test_an_existing_study_is_replaced_only_with_overwrite(image_folder, tmp_path, capsys):
    recipe = _recipe()
    argv = ["--data-dir", str(image_folder), "--widths", "4", "--acts", "relu", "--seeds", "0", "--max-iter", "2",
            "--batch-size", "16", "--device", "cpu", "--out", str(tmp_path / "run")]
    assert recipe.run(argv) == 0
    (tmp_path / "run" / "summary.md").write_text("an earlier study")
    assert recipe.run(argv + ["--max-iter", "4"]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "run" / "summary.md").read_text() == "an earlier study"
    assert recipe.run(argv + ["--max-iter", "4", "--overwrite"]) == 0
    with open(tmp_path / "run" / "correlations.csv", newline="") as f:
        assert max(int(row["iteration"]) for row in csv.DictReader(f)) == 4
    assert "4 iterations" in (tmp_path / "run" / "summary.md").read_text()
