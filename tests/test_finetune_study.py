"""studies/finetune_study.py: the grid over trained models, and the table made from its run folders."""
import json

import pytest

from layeract_patch.studies.finetune_study import GridConfig, plan, sources, write_table


def make_source(study, act, seed):
    run = study / "runs" / f"cifar_resnet20_bn_he_{act}_cifar10_it2500_s{seed}"
    (run / f"seed_{seed}").mkdir(parents=True)
    (run / f"seed_{seed}" / "model.pt").write_bytes(b"")
    (run / "results.json").write_text(json.dumps({"args": {"model": "cifar_resnet", "depth": 20, "act": act}}))


def test_the_grid_pairs_each_trained_model_with_its_familys_affine_layeract(tmp_path):
    for act in ("relu", "hardsilu"):
        make_source(tmp_path / "study", act, 0)
    cells = list(plan(GridConfig(tmp_path / "study", "data", tmp_path / "out", budgets=(10, 30), calibrate=64)))
    assert len(cells) == 2 * 2 * 2  # sources x budgets x (calibrated, plain)
    for source, start, budget, config in cells:
        assert config.model == "timm/cifar_resnet20" and config.model_kwargs == {"act": source.act}
        assert config.act == {"relu": "la_silu_affine", "hardsilu": "la_hardsilu_affine"}[source.act]
        assert config.max_iter == budget and config.seed == source.seed
        # the two starts differ only in calibration; the control rides with the calibrated one
        assert (config.calibrate, config.baseline) == ((64, True) if start == "calibrated" else (None, False))
    with pytest.raises(FileNotFoundError, match="holds no trained model"):
        list(plan(GridConfig(tmp_path / "empty", "data", tmp_path / "out")))


def scores(top1, loss_std=1.0):
    return {"top1": top1, "loss_std": loss_std}


def test_the_table_gives_mean_std_over_seeds_and_the_paired_comparison(tmp_path):
    out = tmp_path / "runs"
    for seed, (plain, calibrated) in enumerate([(70.0, 75.0), (72.0, 76.0), (71.0, 74.0)]):
        base = out / f"relu_s{seed}"
        (base / "calibrated_it100").mkdir(parents=True)
        (base / "plain_it100").mkdir()
        (base / "calibrated_it100" / "results.json").write_text(json.dumps(
            {"original": scores(76.0), "plain_swap": scores(30.0), "converted": scores(75.5),
             "finetuned": scores(calibrated), "baseline": scores(76.0)}))
        (base / "plain_it100" / "results.json").write_text(json.dumps(
            {"original": scores(76.0), "converted": scores(30.0), "finetuned": scores(plain)}))
    running = out / "relu_s3" / "plain_it100"  # a cell still running is left out
    running.mkdir(parents=True)
    (running / "results.json").write_text(json.dumps({"original": scores(1.0)}))
    table = write_table(out, tmp_path / "docs").read_text()
    assert "| relu | original | 0 | 3 | 76.00 ± 0.00 |" in table
    assert "| relu | from calibrated | 100 | 3 | 75.00 ± 1.00 |" in table
    assert "| relu | from plain swap | 100 | 3 | 71.00 ± 1.00 |" in table
    # differences 5, 4, 3: mean 4, std 1, t = 4 / (1 / sqrt 3) = 6.93 with 2 df -> p = 0.020
    assert "| relu | 100 | 3 | 4.00 ± 1.00 | 0.020 |" in table
    # the header, then per seed the calibrated cell's 5 rows and the plain cell's 1
    assert (tmp_path / "docs" / "cells.csv").read_text().count("\n") == 1 + 3 * (5 + 1)


def test_a_resnet20_source_keeps_its_name_and_every_other_model_is_named_with_it(tmp_path):
    study = tmp_path / "study"
    make_source(study, "silu", 0)  # ResNet-20: the name its finished fine-tuning runs already live under
    for model, depth, act in (("cifar_resnet", 32, "silu"), ("layeract_cnn", None, "silu"),
                              ("cifar_mobilenetv3", None, "hardsilu")):
        run = study / "runs" / f"{model}{depth or ''}_{act}_s1"
        (run / "seed_1").mkdir(parents=True)
        (run / "seed_1" / "model.pt").write_bytes(b"")
        (run / "results.json").write_text(json.dumps({"args": {"model": model, "depth": depth, "act": act}}))
    found = sorted((s.name, s.model) for s in sources(study))
    assert found == [("cifar_mobilenetv3_hardsilu_s1", "cifar_mobilenetv3"),
                     ("cifar_resnet32_silu_s1", "cifar_resnet32"), ("layeract_cnn_silu_s1", "layeract_cnn"),
                     ("silu_s0", "cifar_resnet20")]
