"""The two CIFAR models beyond the paper's: a small ConvNeXt (GELU) and timm's MobileNetV3-Small as it comes;
built through timm and the registry, trained by their recipes, loaded back by the fine-tuning code, and run
by the study presets."""
import importlib.util
import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from layeract_patch import LAGELU, LAHardSiLU, LayerAct, convert_activations
from layeract_patch.models import CifarConvNeXt, cifar_convnext, cifar_mobilenetv3
from layeract_patch.models.layers import ChannelLayerNorm, create_norm
from layeract_patch.studies import presets
from layeract_patch.studies.finetune_study import GridConfig, plan, run_grid, sources
from layeract_patch.studies.report import Group
from layeract_patch.studies.trained_models import load_trained
from layeract_patch.training import cli
from layeract_patch.training.cifar_config import CifarConfig, resolve_config, timm_model_name
from layeract_patch.training.finetune import conversion_target
from layeract_patch.training.pretrained import create_model
from test_recipes import recipe
from test_training import make_imagefolder

ROOT = Path(__file__).resolve().parents[1]
CONVNEXT, MOBILENET = ROOT / "recipes" / "cifar_convnext.py", ROOT / "recipes" / "cifar_mobilenetv3.py"
SHORT = ["--max-iter", "6", "--batch-size", "8", "--eval-every", "3", "--eval-batch-size", "16"]


def kinds(model):
    return Counter(type(m).__name__ for m in model.modules())


def load_recipe(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the models ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["cifar_convnext", "cifar_mobilenetv3"])
def test_both_build_through_timm_with_any_class_and_channel_count(name):
    model = timm.create_model(name, num_classes=7, in_chans=1)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 7)
    assert model.pretrained_cfg["input_size"][1:] == (32, 32) and model.pretrained_cfg["crop_pct"] == 1.0
    assert timm.data.resolve_data_config({}, model=model)["mean"] == (0.4914, 0.4822, 0.4465)  # CIFAR's, not ImageNet's
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model(name, pretrained=True)


@pytest.mark.parametrize("act, kind, affine", [("gelu", nn.GELU, False), ("la_gelu", LAGELU, False),
                                               ("la_gelu_affine", LAGELU, True), ("la_silu", LayerAct, False)])
def test_convnext_has_one_activation_module_per_block(act, kind, affine):
    model = timm.create_model("cifar_convnext", act=act)
    acts = [m for m in model.modules() if isinstance(m, (nn.GELU, LayerAct))]
    assert len(acts) == 8 and all(isinstance(m, kind) for m in acts)  # depths (2, 2, 2, 2)
    widths = [4 * d for d in (32, 64, 128, 256) for _ in range(2)]  # each sized to its 4x expansion
    assert [getattr(m, "affine", False) for m in acts] == [affine] * 8
    if affine:
        assert [m.num_channels for m in acts] == widths
    x = torch.randn(4, 3, 32, 32)
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_convnext_defaults_are_gelu_and_convnexts_channel_layernorm():
    model = cifar_convnext()
    assert kinds(model)["GELU"] == 8 and model.act_name == "gelu" and model.norm_name == "lnc"
    # stem, 8 blocks, 3 downsamplings and the head: every norm a LayerNorm over channels
    assert kinds(model)["ChannelLayerNorm"] == 1 + 8 + 3 + 1
    assert [b.gamma[0].item() for s in model.stages for b in s.blocks] == pytest.approx([1e-6] * 8)  # ConvNeXt's
    assert model.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, 256, 2, 2)
    for norm, kind in (("bn", nn.BatchNorm2d), ("ln", nn.GroupNorm)):
        assert kinds(cifar_convnext(norm=norm))[kind.__name__] == 13
    assert not any(isinstance(m, (nn.LayerNorm, nn.BatchNorm2d, nn.GroupNorm))
                   for m in cifar_convnext(norm="none").modules())


def test_lnc_normalizes_each_pixel_over_its_channels_and_ln_each_sample_over_everything():
    x = torch.randn(2, 6, 5, 5) * 3 + 1
    lnc, ln = create_norm("lnc", 6), create_norm("ln", 6)
    assert isinstance(lnc, ChannelLayerNorm)
    expected = F.layer_norm(x.permute(0, 2, 3, 1), (6,), eps=1e-6).permute(0, 3, 1, 2)
    assert torch.allclose(lnc(x), expected, atol=1e-5)
    assert torch.allclose(lnc(x).mean(1), torch.zeros(2, 5, 5), atol=1e-5)
    assert not torch.allclose(ln(x), expected, atol=1e-2)  # the package's "ln" is another norm


def test_mobilenetv3_is_timms_architecture_untouched_with_its_own_init():
    torch.manual_seed(0)
    ours = cifar_mobilenetv3(num_classes=10)
    torch.manual_seed(0)
    theirs = timm.create_model("mobilenetv3_small_100", pretrained=False, num_classes=10)
    mine, timms = ours.state_dict(), theirs.state_dict()
    assert list(mine) == list(timms)
    assert all(torch.equal(mine[k], timms[k]) for k in timms)  # the same weights from the same seed: timm's init
    assert kinds(ours) == kinds(theirs)
    assert ours.conv_stem.stride == (2, 2)  # the ImageNet stem: 32 px -> 16 px, 1x1 at the end
    assert ours.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, 576, 1, 1)


@pytest.mark.parametrize("act, kind", [("hardsilu", nn.Hardswish), ("la_hardsilu", LAHardSiLU), ("gelu", nn.GELU),
                                       ("la_gelu_tanh", LAGELU)])
def test_mobilenetv3_act_replaces_the_hard_swish_sites_only(act, kind):
    model = timm.create_model("cifar_mobilenetv3", act=act)
    found = kinds(model)
    assert found[kind.__name__] == 19  # stem, 8 blocks x 2, the final 1x1 block, the head's conv_head
    assert found["ReLU"] == 14 and found["Hardsigmoid"] == 9  # the `nre` blocks (5) and the SE gates (9 + 9) stay
    assert found["Hardswish"] == (19 if act == "hardsilu" else 0)
    assert isinstance(model.act2, kind) and isinstance(model.blocks[0][0].bn1.act, nn.ReLU)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_mobilenetv3_affine_layeract_gets_each_sites_channels():
    model = cifar_mobilenetv3(act="la_hardsilu_affine")
    sites = [m for m in model.modules() if isinstance(m, LAHardSiLU)]
    assert len(sites) == 19 and all(m.affine for m in sites)
    assert model.bn1.act.num_channels == 16 and model.act2.num_channels == 1024
    assert model.blocks[2][0].bn1.act.num_channels == 96 and model.blocks[5][0].bn1.act.num_channels == 576
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert model.act2.weight.grad is not None


def test_mobilenetv3_refuses_another_norm_or_init_naming_it():
    with pytest.raises(ValueError, match="norm must be 'bn', got 'ln'"):
        cifar_mobilenetv3(norm="ln")
    with pytest.raises(ValueError, match="init must be 'torch'.*got 'he'"):
        timm.create_model("cifar_mobilenetv3", init="he")
    with pytest.raises(ValueError, match="unknown norm 'gn'"):
        cifar_mobilenetv3(norm="gn")


def test_convert_activations_reaches_every_site():
    x = torch.randn(2, 3, 32, 32)
    convnext = convert_activations(cifar_convnext(act="gelu").eval(), to="la_gelu", affine=True, example_input=x)
    acts = [m for m in convnext.modules() if isinstance(m, LAGELU)]
    assert len(acts) == 8 and not any(isinstance(m, nn.GELU) for m in convnext.modules())
    assert [m.num_channels for m in acts][::2] == [128, 256, 512, 1024]
    mobilenet = cifar_mobilenetv3(act="hardsilu").eval()
    to, affine = conversion_target("auto")  # hard-swish -> LA-HardSiLU, ReLU -> LA-SiLU
    mobilenet = convert_activations(mobilenet, to=to, affine=affine, example_input=x)
    found = kinds(mobilenet)
    assert found["LAHardSiLU"] == 19 and found["LASiLU"] == 14 and found["Hardswish"] == found["ReLU"] == 0
    assert found["Hardsigmoid"] == 9  # a gate, not an activation LayerAct replaces
    assert mobilenet(x).shape == convnext(x).shape == (2, 10)


# --- config, command line, presets -----------------------------------------------------------------------------

def test_config_names_each_model_as_timm_does_and_records_no_depth(tmp_path):
    assert timm_model_name("cifar_resnet", 20) == "cifar_resnet20"
    assert timm_model_name("cifar_convnext", 20) == "cifar_convnext" == timm_model_name("cifar_convnext")
    assert timm_model_name("cifar_mobilenetv3") == "cifar_mobilenetv3"
    for model in ("cifar_convnext", "cifar_mobilenetv3", "layeract_cnn"):
        norm, init = ("bn", "torch") if model == "cifar_mobilenetv3" else ("bn", "he")
        cfg = resolve_config(CifarConfig(model=model, depth=20, norm=norm, init=init, out=str(tmp_path / model)))
        assert cfg.depth is None and cfg.model_name == model
    with pytest.raises(ValueError, match="unknown model 'convnext'"):
        resolve_config(CifarConfig(model="convnext", out=str(tmp_path / "x")))


def test_each_recipe_has_its_models_defaults_and_only_resnet_a_depth():
    convnext = load_recipe(CONVNEXT).get_args_parser().parse_args([])
    assert (convnext.model, convnext.act, convnext.norm, convnext.init, convnext.depth) == \
        ("cifar_convnext", "gelu", "lnc", "he", None)
    mobilenet = load_recipe(MOBILENET).get_args_parser().parse_args([])
    assert (mobilenet.model, mobilenet.act, mobilenet.norm, mobilenet.init, mobilenet.depth) == \
        ("cifar_mobilenetv3", "hardsilu", "bn", "torch", None)
    with pytest.raises(SystemExit):
        load_recipe(MOBILENET).get_args_parser().parse_args(["--depth", "20"])
    assert "MobileNetV3-Small" in cli.get_args_parser("cifar_mobilenetv3").description


@pytest.mark.parametrize("flags, message", [
    (["--norm", "ln"], "--norm ln: cifar_mobilenetv3 takes --norm bn only"),
    (["--init", "he"], "--init he: cifar_mobilenetv3 takes --init torch only"),
])
def test_mobilenetv3_recipe_refuses_another_norm_before_any_work(tmp_path, capsys, flags, message):
    code, _, err = recipe(MOBILENET, *flags, "--data-dir", tmp_path / "no_data", "--out", tmp_path / "run",
                          capsys=capsys)
    assert code == 2 and err.count("\n") == 1 and message in err  # before the data is even looked for
    assert not (tmp_path / "run").exists()


def test_the_gelu_and_timm_source_presets():
    gelu = presets.select("gelu")
    assert len(gelu) == 9 and {r.model for r in gelu} == {"cifar_convnext"}
    assert {r.act for r in gelu} == {"gelu", "la_gelu", "la_gelu_affine"} and {r.seed for r in gelu} == {0, 1, 2}
    assert {(r.norm, r.init, r.depth, r.schedule.max_iter, r.schedule.eval_every) for r in gelu} == \
        {("lnc", "he", None, 2500, 250)}
    assert gelu[0].name == "cifar_convnext_lnc_he_gelu_cifar10_it2500_s0" and "--depth" not in gelu[0].recipe_args()
    source = presets.select("timm_source")
    assert [(r.model, r.act, r.norm, r.init, r.seed) for r in source] == \
        [("cifar_mobilenetv3", "hardsilu", "bn", "torch", seed) for seed in (0, 1, 2)]
    assert {r.schedule for r in source} == {r.schedule for r in presets.sources()}


@pytest.mark.parametrize("preset, runs, script, first", [
    ("gelu", 9, "cifar_convnext.py", "cifar_convnext_lnc_he_gelu_cifar10_it2500_s0"),
    ("timm_source", 3, "cifar_mobilenetv3.py", "cifar_mobilenetv3_bn_torch_hardsilu_cifar10_it2500_s0"),
])
def test_the_new_presets_dry_run_through_their_recipes(tmp_path, capsys, preset, runs, script, first):
    data = make_imagefolder(tmp_path / "data", classes=3, per_class=(4, 2))
    code, stdout, err = recipe(ROOT / "recipes" / "reproduce.py", "--preset", preset, "--data-dir", data, "--out",
                               tmp_path / "study", "--amp", "--jobs", "1", "--threads", "1", "--no-figures",
                               "--dry-run", capsys=capsys)
    assert code == 0, err
    lines = stdout.splitlines()
    assert lines[0].startswith(f"{runs} runs: 0 finished already, 0 to resume, {runs} to start")
    assert lines[1] == f"[1/{runs}] start {first}"
    commands = [line for line in lines if line.startswith("    ")]
    assert len(commands) == runs and all(f"recipes/{script}" in c and "--depth" not in c for c in commands)


def test_a_report_names_the_new_models():
    convnext = Group("cifar_convnext", None, "lnc", "he", "cifar10", 2500, True, [], {})
    assert convnext.title.startswith("CIFAR ConvNeXt, channel layer norm (ConvNeXt's), He init, CIFAR-10")
    mobilenet = Group("cifar_mobilenetv3", None, "bn", "torch", "cifar10", 2500, False, [], {})
    assert mobilenet.title.startswith("MobileNetV3-Small (timm's ImageNet architecture), batch norm, timm's init")
    resnet = Group("cifar_resnet", 20, "bn", "torch", "cifar10", 2500, False, [], {})
    assert resnet.title.startswith("ResNet-20, batch norm, PyTorch's default init")


# --- trained by the recipes, loaded back by the fine-tuning code -----------------------------------------------

@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_imagefolder(tmp_path_factory.mktemp("imagefolder"), classes=3, per_class=(16, 6))


@pytest.fixture(scope="module")
def trained(folder, tmp_path_factory):
    """Each model trained for a few steps by its recipe's main(), in a study's layout (runs/<name>/)."""
    study = tmp_path_factory.mktemp("study")
    runs = {}
    for path, name, act in ((CONVNEXT, "cifar_convnext", "la_gelu_affine"), (MOBILENET, "cifar_mobilenetv3",
                                                                              "hardsilu")):
        module = load_recipe(path)
        out = study / "runs" / f"{name}_{act}"
        results = module.main(module.get_args_parser().parse_args(
            ["--act", act, "--data-dir", str(folder), "--out", str(out), "--amp", *SHORT]))
        runs[name] = (out, results)
    return study, runs


@pytest.mark.parametrize("name, act", [("cifar_convnext", "la_gelu_affine"), ("cifar_mobilenetv3", "hardsilu")])
def test_each_recipe_trains_its_model_end_to_end(trained, name, act):
    out, results = trained[1][name]
    assert results["model"] == name and results["act"] == act and results["iterations"] == 6
    assert results["architecture"]["model"] == name and results["architecture"]["depth"] is None
    assert results["args"]["depth"] is None
    run = json.loads((out / "seed_0" / "results.json").read_text())
    assert [row["iteration"] for row in run["history"]] == [3, 6]
    first, last = run["train_log"][0]["train_loss"], run["train_log"][-1]["train_loss"]
    assert torch.isfinite(torch.tensor([first, last])).all() and 0 <= run["test"]["top1"] <= 100
    weights = torch.load(out / "seed_0" / "model.pt", map_location="cpu", weights_only=True)
    fresh = timm.create_model(name, num_classes=3, act=act, norm=results["norm"], init=results["init"])
    assert list(weights) == list(fresh.state_dict())
    assert run["params"] == sum(p.numel() for p in fresh.parameters())
    assert any(not torch.equal(weights[k], v) for k, v in fresh.state_dict().items() if v.is_floating_point())


@pytest.mark.parametrize("name", ["cifar_convnext", "cifar_mobilenetv3"])
def test_a_trained_run_loads_back_for_evaluation(trained, folder, name):
    out, results = trained[1][name]
    loaded = load_trained(out / "seed_0")  # what recipes/eval_corruptions.py --checkpoint does
    saved = torch.load(out / "seed_0" / "model.pt", map_location="cpu", weights_only=True)
    assert loaded.description["model"] == name and loaded.num_classes == 3 and not loaded.model.training
    assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in saved.items())
    images, _ = loaded.test_images(folder)
    assert loaded.model(images[:2].float() / 255).shape == (2, 3)


def test_the_finetune_loader_rebuilds_a_trained_mobilenetv3_exactly(trained):
    out, _ = trained[1]["cifar_mobilenetv3"]
    weights = out / "seed_0" / "model.pt"
    model = create_model("timm/cifar_mobilenetv3", str(weights), act="hardsilu")  # what finetune.py's flags build
    saved = torch.load(weights, map_location="cpu", weights_only=True)
    assert model.state_dict().keys() == saved.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())
    assert model.classifier.out_features == 3 and kinds(model)["Hardswish"] == 19
    with pytest.raises(ValueError, match="do not fit timm/cifar_convnext"):
        create_model("timm/cifar_convnext", str(weights))


def test_the_finetune_study_finds_both_models_and_fine_tunes_the_timm_one(trained, folder, tmp_path):
    study, runs = trained
    found = {s.model: s for s in sources(study)}
    assert set(found) == {"cifar_convnext", "cifar_mobilenetv3"}
    assert found["cifar_mobilenetv3"].name == "cifar_mobilenetv3_hardsilu_s0"
    assert found["cifar_convnext"].name == "cifar_convnext_la_gelu_affine_s0"
    config = GridConfig(study, str(folder), tmp_path / "finetune", budgets=(2,), calibrate=8, acts=["hardsilu"],
                        finetune={"batch_size": 8, "workers": 0, "augment": "cifar"})
    cells = list(plan(config))
    assert [(c.model, c.model_kwargs, c.act) for _, _, _, c in cells] == \
        [("timm/cifar_mobilenetv3", {"act": "hardsilu"}, "la_hardsilu_affine")] * 2
    run_grid(config, stream=open(tmp_path / "log.txt", "w"))
    calibrated = json.loads((tmp_path / "finetune" / "cifar_mobilenetv3_hardsilu_s0" / "calibrated_it2" /
                             "results.json").read_text())
    assert {"original", "plain_swap", "converted", "finetuned", "baseline"} <= set(calibrated)
    assert calibrated["new_head"] is False  # the trained 3-class head was loaded, not replaced
    assert calibrated["conversion"]["swapped"] == 19 + 14  # hard-swish and the ReLUs; the gates stay


def test_the_throughput_benchmark_measures_each_model_beside_resnet20(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # the script imports its sibling timing.py
    import bench_cifar_models

    assert bench_cifar_models.main(["--models", "cifar_convnext:la_gelu", "cifar_mobilenetv3:hardsilu", "--batch", "2",
                                    "--budget", "0.01", "--repeats", "1", "--threads", "1", "--cpu-clock",
                                    "--default-heap"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("# training step, batch 2, bf16 (CPU autocast): 1 repeats of 3 interleaved rounds")
    assert [line.split(":")[0] + ":" + line.split(":")[1] for line in lines[2:]] == \
        ["cifar_resnet20:silu", "cifar_convnext:la_gelu", "cifar_mobilenetv3:hardsilu"]
    assert "1.00x ResNet-20's step time" in lines[2] and all(" images/s, " in line for line in lines[2:])
    assert bench_cifar_models.main(["--models", "no_such_model"]) == 2
