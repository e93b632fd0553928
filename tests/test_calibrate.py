"""Calibrated conversion: convert_activations(model, to="la_silu_affine", calibrate=data) on a trained model."""
import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from layeract_patch import Calibration, convert_activations
from layeract_patch.convert import CallSiteActs
from layeract_patch.modules import LayerAct


class Block(nn.Module):
    """A residual block that calls one activation module twice, as torchvision's ResNet blocks do."""

    def __init__(self, channels: int, act: nn.Module) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)
        self.conv2, self.bn2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)
        self.act = act

    def forward(self, x):
        return self.act(self.bn2(self.conv2(self.act(self.bn1(self.conv1(x))))) + x)


def small_net(act: type) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), act(), Block(8, act()),
                         nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), act(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))


def trained(act: type, seed: int = 0):
    """A small CNN trained for a few dozen steps on a learnable synthetic task; returns it and held-out inputs."""
    torch.manual_seed(seed)
    net = small_net(act)
    images = torch.randn(256, 3, 12, 12)
    labels = (images[:, 0, :6].mean((1, 2)) > 0).long() + 2 * (images[:, 1, 6:].mean((1, 2)) > 0).long()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    for step in range(40):
        rows = torch.arange(step * 32, step * 32 + 32) % 256
        loss = nn.functional.cross_entropy(net(images[rows]), labels[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net, images


def snapshot(model: nn.Module):
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


# How much closer to the original's logits the calibrated swap must come than the plain one. A smooth source is
# already near its LayerAct (errors ~1e-3 a site) and what is left is the spread of per-sample statistics, which
# per-channel parameters cannot follow; ReLU's step is matched almost exactly by a steep gate.
@pytest.mark.parametrize("act,to,factor", [(nn.SiLU, "la_silu_affine", 0.5), (nn.ReLU, "la_silu_affine", 0.01),
                                           (nn.Hardswish, "la_hardsilu_affine", 0.6),
                                           (nn.GELU, "la_gelu_affine", 0.6)])
def test_calibration_fits_every_site_and_writes_nothing_else(act, to, factor):
    net, images = trained(act)
    net.train()  # the user's mode, which calibration must give back
    before = snapshot(net)
    with torch.no_grad():
        original = net.eval()(images)
        plain = convert_activations(small_net(act), to=to.replace("_affine", ""))
        plain.load_state_dict(before)
        plain_out = plain.eval()(images)
    net.train()

    model, report = convert_activations(net, to=to, calibrate=images[:128], return_report=True)

    # every call site (the block's activation is called twice: two sites) has a record, and each got better
    assert isinstance(model[3].act, CallSiteActs)
    assert len(report.calibration) == 4
    for record in report.calibration:
        assert record.samples == 128 and record.source == act.__name__
        assert record.calibrated_error < record.plain_error, record
    # nothing but the LayerAct weights and biases changed, bit for bit; the train/eval flags came back
    after = model.state_dict()
    for name, value in before.items():
        assert torch.equal(after[name], value), name
    new = set(after) - set(before)
    assert new and all(name.endswith((".weight", ".bias")) for name in new)
    assert all(m.training for m in model.modules())
    # the calibrated model reproduces the original's logits far better than the plain swap, on held-out inputs
    with torch.no_grad():
        calibrated_out = model.eval()(images[128:])
    gap = (calibrated_out - original[128:]).pow(2).mean()
    assert gap < factor * (plain_out[128:] - original[128:]).pow(2).mean()
    assert "calibration:" in str(report)


def test_calibration_takes_a_dataloader_of_pairs_and_lists_of_batches():
    net, images = trained(nn.SiLU, seed=1)
    state = snapshot(net)
    loader = DataLoader(TensorDataset(images[:96], torch.zeros(96, dtype=torch.long)), batch_size=32)
    _, from_loader = convert_activations(net, to="la_silu_affine", calibrate=loader, return_report=True)
    assert [r.samples for r in from_loader.calibration] == [96] * 4
    again = small_net(nn.SiLU)
    again.load_state_dict(state)
    _, from_list = convert_activations(again, to="la_silu_affine", calibrate=list(images[:96].split(32)),
                                       return_report=True)
    # the same data gives the same fit, whichever container holds it
    assert [r.calibrated_error for r in from_list.calibration] == [r.calibrated_error for r in from_loader.calibration]


def untouched(model: nn.Module, state) -> bool:
    after = model.state_dict()
    return (set(after) == set(state) and all(torch.equal(after[k], v) for k, v in state.items())
            and not any(isinstance(m, LayerAct) for m in model.modules()))


@pytest.mark.parametrize("data,message", [
    ([], "no data"),
    (torch.randn(4, 5, 12, 12), "cannot run on the calibration data"),  # 5 channels for a 3-channel model
    (torch.full((4, 3, 12, 12), float("nan")), "NaN or infinite"),
    (torch.zeros(0, 3, 12, 12), "no samples"),
    (torch.randint(0, 255, (4, 3, 12, 12)), "dtype"),
    ("images/", "takes a tensor batch"),
])
def test_bad_calibration_data_is_one_error_and_leaves_the_model_as_it_was(data, message):
    net, _ = trained(nn.ReLU)
    state = snapshot(net)
    with pytest.raises((ValueError, TypeError), match=message):
        convert_activations(net, to="la_silu_affine", calibrate=data)
    assert untouched(net, state)


def test_calibrate_with_a_plain_target_names_the_affine_one():
    net, images = trained(nn.SiLU)
    state = snapshot(net)
    with pytest.raises(ValueError, match="to='la_hardsilu_affine'"):
        convert_activations(net, to="la_hardsilu", calibrate=images[:8])
    assert untouched(net, state)
    # affine=True is the other spelling of the same target, and works
    model, report = convert_activations(net, to="la_silu", affine=True, calibrate=images[:32], return_report=True)
    assert len(report.calibration) == 4


def test_the_calibration_benchmark_runs_end_to_end(tmp_path):
    """benchmarks/bench_calibration.py at a tiny size: a saved CIFAR model, an ImageFolder made here, two rows."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    import numpy as np
    import timm
    from PIL import Image

    import layeract_patch.models  # noqa: F401  (registers cifar_resnet20 with timm)

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label in range(10):
            folder = tmp_path / "data" / split / f"class_{label}"
            folder.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    torch.manual_seed(0)
    torch.save(timm.create_model("cifar_resnet20", act="relu", num_classes=10).state_dict(), tmp_path / "model.pt")
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run(
        [sys.executable, "benchmarks/bench_calibration.py", "--weights", str(tmp_path / "model.pt"), "--act", "relu",
         "--data-dir", str(tmp_path / "data"), "--samples", "8", "--variants", "0", "1", "--json",
         str(tmp_path / "rows.json")], cwd=root, env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(root)),
        capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = json.loads((tmp_path / "rows.json").read_text())["rows"]
    assert [r["variant"] for r in rows] == ["original", "plain swap (la_silu)", "closed form", "+ gain search"]
    assert all(0 <= r["top1"] <= 100 for r in rows) and rows[2]["seconds_median"] > 0
    assert "CPU" in run.stdout and "wall" in run.stdout


def test_max_error_keeps_the_sites_calibration_cannot_fit_and_reports_them():
    net, images = trained(nn.Hardswish)
    net.eval()
    originals = {name: m for name, m in net.named_modules() if isinstance(m, nn.Hardswish)}
    _, first = convert_activations(copy.deepcopy(net), to="la_hardsilu_affine", calibrate=images[:64],
                                   return_report=True)
    single = sorted(c.calibrated_error for c in first.calibration if ".sites." not in c.fqn)
    bound = (single[0] + single[-1]) / 2  # between the best and the worst single-call site: some stay, some go
    model, report = convert_activations(net, to="la_hardsilu_affine", return_report=True,
                                        calibrate=Calibration(images[:64], max_error=bound))
    kept = [c for c in report.calibration if c.kept]
    assert kept and len(kept) < len(report.calibration)
    for c in report.calibration:
        assert c.kept == (c.calibrated_error > bound and ".sites." not in c.fqn), c  # shared call sites stay
    modules = dict(model.named_modules())
    for c in kept:  # the very module the model had, in its place, listed as skipped and not as swapped
        assert modules[c.fqn] is originals[c.fqn]
        assert any(s.fqn == c.fqn and "above max_error" in s.reason for s in report.skipped)
        assert all(s.fqn != c.fqn for s in report.swapped)
    assert "kept as Hardswish" in str(report)
    assert model(images[:4]).isfinite().all()


@pytest.mark.parametrize("bound", [0, -0.1, float("nan"), True, "0.1"])
def test_a_bad_max_error_is_one_clear_error(bound):
    with pytest.raises(ValueError, match="max_error"):
        Calibration(torch.randn(2, 3, 12, 12), max_error=bound)
