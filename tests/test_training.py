"""The training library piece by piece: checkpoints, progress, data loading, augmentation, batches, metrics."""
import io
import json
import os
import pickle
import signal
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from layeract_patch.training import Progress, load_checkpoint, load_images, save_checkpoint, stratified_split
from layeract_patch.training.batches import TrainBatches, normalize, random_crop_flip
from layeract_patch.training.data import dataset_stats
from layeract_patch.training.spine import GracefulStop
from layeract_patch.training.metrics import evaluate
from layeract_patch.training.results import plot_losses
from layeract_patch.training.results import format_summary, summarize, write_csv, write_json


# ---- tiny data sets, built by the tests (also used by test_recipes.py) ----

def class_image(rng, cls, size=32, channels=3):
    """Noise plus a bright band whose position depends on the class: learnable, not trivial."""
    image = rng.integers(0, 120, (size, size, channels), dtype=np.uint8)
    band = slice(4 * cls % (size - 6), 4 * cls % (size - 6) + 6)
    image[band, :, :] += 120
    return image[..., 0] if channels == 1 else image


def make_imagefolder(root: Path, classes=3, per_class=(12, 4), size=32, gray=False, seed=0) -> Path:
    """root/train/class_<c>/*.png|jpg and root/test/...; PNG and JPEG alternate."""
    rng = np.random.default_rng(seed)
    for split, count in zip(("train", "test"), per_class):
        for cls in range(classes):
            folder = root / split / f"class_{cls}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                image = Image.fromarray(class_image(rng, cls, size, 1 if gray else 3))
                image.save(folder / (f"{i:03d}.png" if i % 2 else f"{i:03d}.jpg"), quality=95)
    return root


def make_cifar_root(root: Path, dataset="cifar10", per_file=6, test=10, seed=0, *, monkeypatch) -> Path:
    """The pickle layout torchvision downloads (cifar-10-batches-py/ or cifar-100-python/), tiny. The loader reads
    only files whose md5 torchvision lists: `monkeypatch` puts these files' md5s in that list for the test."""
    rng = np.random.default_rng(seed)
    classes = 10 if dataset == "cifar10" else 100
    label_key = "labels" if dataset == "cifar10" else "fine_labels"

    def batch(count):
        labels = [int(x) for x in rng.integers(0, classes, count)]
        data = np.stack([class_image(rng, c % 7).transpose(2, 0, 1).reshape(-1) for c in labels])
        return {"data": data, label_key: labels, "batch_label": "test data"}

    if dataset == "cifar10":
        folder = root / "cifar-10-batches-py"
        files = {f"data_batch_{i}": batch(per_file) for i in range(1, 6)}
        files["test_batch"] = batch(test)
        files["batches.meta"] = {"label_names": [f"name{i}" for i in range(10)], "num_vis": 3072}
    else:
        folder = root / "cifar-100-python"
        files = {"train": batch(5 * per_file), "test": batch(test),
                 "meta": {"fine_label_names": [f"fine{i}" for i in range(100)]}}
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        with open(folder / name, "wb") as f:
            pickle.dump(content, f)
    import torchvision.datasets as tvd
    from torchvision.datasets.utils import calculate_md5

    cls = tvd.CIFAR10 if dataset == "cifar10" else tvd.CIFAR100
    for key in ("train_list", "test_list"):
        monkeypatch.setattr(cls, key, [[name, calculate_md5(str(folder / name))] for name, _ in getattr(cls, key)])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": calculate_md5(str(folder / cls.meta["filename"]))})
    return root


def make_mnist_root(root: Path, train=8, test=4, seed=0) -> Path:
    """MNIST/raw/*-idx?-ubyte files in the big-endian IDX format torchvision reads."""
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, count in (("train", train), ("t10k", test)):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, count, dtype=np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, count, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, count) + labels.tobytes())
    return root


# ---- checkpoint ----

def test_checkpoint_roundtrip_and_atomic_replace(tmp_path, monkeypatch):
    path = tmp_path / "run" / "checkpoint.pt"
    save_checkpoint({"step": 1, "w": torch.arange(3)}, path)
    assert load_checkpoint(path)["step"] == 1

    def crash(obj, f, *a, **k):
        f.write(b"half a checkpoint")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    state = load_checkpoint(path)
    assert state["step"] == 1 and torch.equal(state["w"], torch.arange(3))  # old file intact
    assert sorted(p.name for p in path.parent.iterdir()) == ["checkpoint.pt"]  # no temp litter


def test_atomically_written_files_get_the_usual_permissions(tmp_path):
    old_mask = os.umask(0o022)
    try:
        save_checkpoint({"step": 1}, tmp_path / "checkpoint.pt")
        write_json({"a": 1}, tmp_path / "results.json")
    finally:
        os.umask(old_mask)
    for name in ("checkpoint.pt", "results.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644


def test_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        load_checkpoint(tmp_path / "nothing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt.*corrupt"):
        load_checkpoint(bad)


# ---- progress ----

def test_progress_plain_lines_when_not_a_terminal():
    stream = io.StringIO()
    bar = Progress(100, desc="seed 0", stream=stream, interval=3600)
    for step in range(1, 101):
        bar.update(step, images=128, loss=torch.tensor(2.5), lr=0.1)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2  # the first and the last step; the interval hides the rest
    assert lines[0].startswith("seed 0   1/100 loss=2.5 lr=0.1")
    assert lines[1].startswith("seed 0 100/100 loss=2.5 lr=0.1") and "img/s" in lines[1]
    assert "\r" not in stream.getvalue()


def test_progress_bar_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    with Progress(10, stream=stream) as bar:
        for step in range(1, 11):
            bar.update(step, loss=1.0)
    text = stream.getvalue()
    assert text.startswith("\r[") and "10/10" in text and text.endswith("\n")
    assert text.count("\n") == 1  # one line, redrawn in place


class Clock:
    """A stand-in for time.perf_counter that moves only when told: progress arithmetic without real timing."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_progress_shows_an_eta_that_leaves_evaluations_out(monkeypatch):
    from layeract_patch.training import progress

    clock = Clock()
    monkeypatch.setattr(progress.time, "perf_counter", clock)
    stream = io.StringIO()
    bar = Progress(10, desc="seed 0", stream=stream, interval=0)
    for step in range(1, 5):  # 2 s a step, 10 images a step
        clock.now += 2
        bar.update(step, images=10)
    with bar.paused():  # an evaluation of 100 s: neither the pace nor images/s counts it
        clock.now += 100
    clock.now += 2
    bar.update(5, images=10)
    for step in range(6, 11):
        clock.now += 2
        bar.update(step, images=10)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "seed 0  1/10 5 img/s (0:02 elapsed, ETA 0:18)"
    assert lines[3] == "seed 0  4/10 5 img/s (0:08 elapsed, ETA 0:12)"
    assert lines[4] == "seed 0  5/10 5 img/s (1:50 elapsed, ETA 0:10)"  # not the 2:10 the evaluation would make it
    assert lines[-1] == "seed 0 10/10 5 img/s (2:00 elapsed)"  # done: no ETA


def test_progress_of_a_resumed_run_paces_from_its_own_first_step(monkeypatch):
    from layeract_patch.training import progress

    clock = Clock()
    monkeypatch.setattr(progress.time, "perf_counter", clock)
    stream = io.StringIO()
    bar = Progress(100, stream=stream, interval=0)
    clock.now += 3
    bar.update(91)  # resumed at 90: one step in 3 s, nine to go
    assert stream.getvalue() == " 91/100 (0:03 elapsed, ETA 0:27)\n"


def test_progress_waits_its_delay_before_saying_anything(monkeypatch):
    from layeract_patch.training import progress

    clock = Clock()
    monkeypatch.setattr(progress.time, "perf_counter", clock)
    stream = io.StringIO()
    bar = Progress(1000, desc="loading train", stream=stream, interval=10, delay=2)
    for step in range(1, 11):  # 10 steps in 1 s: silent
        clock.now += 0.1
        bar.update(step, images=1)
    assert stream.getvalue() == ""
    clock.now += 2
    bar.update(11, images=1)
    assert stream.getvalue() == "loading train   11/1000 4 img/s (0:03 elapsed, ETA 4:30)\n"


# ---- data ----

def test_loading_a_folder_that_takes_a_while_says_so(tmp_path, monkeypatch, capsys):
    from layeract_patch.training import data

    root = make_imagefolder(tmp_path / "folder", classes=2, per_class=(3, 2))
    monkeypatch.setattr(data, "LOAD_DELAY", 0.0)  # as if decoding took longer than the delay
    load_images(root, train=True)
    err = capsys.readouterr().err
    assert f"loading {root / 'train'} 1/6" in err and f"loading {root / 'train'} 6/6" in err and "elapsed" in err


def test_a_failed_download_leaves_no_empty_folders(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    def offline(*args, **kwargs):
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(tvd, "CIFAR10", offline)
    with pytest.raises(FileNotFoundError, match="downloading it failed"):
        load_images(tmp_path / "new" / "data", "cifar10", train=True, download=True)
    assert list(tmp_path.iterdir()) == []  # neither new/ nor new/data/ is left behind


def test_imagefolder_rgb_png_and_jpeg(tmp_path):
    root = make_imagefolder(tmp_path / "folder")
    images, labels, classes = load_images(root, "cifar10", train=True)
    assert images.dtype == torch.uint8 and images.shape == (36, 3, 32, 32)
    assert classes == ["class_0", "class_1", "class_2"] and labels.tolist() == [0] * 12 + [1] * 12 + [2] * 12
    png = np.array(Image.open(root / "train" / "class_1" / "001.png"))
    assert torch.equal(images[13], torch.from_numpy(png).permute(2, 0, 1))  # files sorted; PNG is lossless
    test_images, test_labels, _ = load_images(root, "cifar10", train=False)
    assert test_images.shape == (12, 3, 32, 32) and test_labels.bincount().tolist() == [4, 4, 4]


def test_imagefolder_grayscale_resize_and_errors(tmp_path):
    root = make_imagefolder(tmp_path / "gray", gray=True, per_class=(2, 1))
    images, _, _ = load_images(root, "mnist", train=True)
    assert images.shape == (6, 1, 32, 32)
    assert load_images(root, "mnist", train=True, image_size=16)[0].shape == (6, 1, 16, 16)
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(root / "train" / "class_0" / "odd.png")
    with pytest.raises(ValueError, match="differ in size.*resize them"):
        load_images(root, "mnist", train=True)
    (root / "test" / "class_9").mkdir()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(root / "test" / "class_9" / "x.png")
    with pytest.raises(ValueError, match="class_9.*no counterpart"):
        load_images(root, "mnist", train=False)


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_cifar_pickle_root(tmp_path, dataset, monkeypatch):
    root = make_cifar_root(tmp_path / dataset, dataset, monkeypatch=monkeypatch)
    images, labels, classes = load_images(root, dataset, train=True, download=False)
    assert images.shape == (30, 3, 32, 32) and images.dtype == torch.uint8 and labels.dtype == torch.int64
    assert len(classes) == (10 if dataset == "cifar10" else 100)
    folder = "cifar-10-batches-py/data_batch_1" if dataset == "cifar10" else "cifar-100-python/train"
    with open(root / folder, "rb") as f:
        first = pickle.load(f)
    assert torch.equal(images[0], torch.from_numpy(first["data"][0]).view(3, 32, 32))  # CHW rows, as torchvision
    assert load_images(root, dataset, train=False, download=False)[0].shape == (10, 3, 32, 32)


def test_mnist_root(tmp_path):
    images, labels, classes = load_images(make_mnist_root(tmp_path / "mnist"), "mnist", train=False, download=False)
    assert images.shape == (4, 1, 28, 28) and labels.dtype == torch.int64 and len(classes) == 10


def test_missing_data_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="nowhere.*does not exist"):
        load_images(tmp_path / "nowhere", "cifar10", download=False)
    with pytest.raises(ValueError, match="unknown dataset 'svhn'"):
        load_images(tmp_path, "svhn")
    import torchvision.datasets
    from urllib.error import URLError

    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(FileNotFoundError, match="downloading it failed.*no network"):
        load_images(tmp_path / "empty", "cifar10", download=True)


def test_stratified_split():
    labels = torch.arange(10).repeat_interleave(50)
    train, val = stratified_split(labels, 0.1, seed=0)
    assert labels[val].bincount().tolist() == [5] * 10
    assert len(train) + len(val) == 500 and not set(train.tolist()) & set(val.tolist())
    assert torch.equal(val, stratified_split(labels, 0.1, seed=0)[1])
    assert not torch.equal(val, stratified_split(labels, 0.1, seed=1)[1])
    assert len(stratified_split(labels, 0.0, seed=0)[1]) == 0
    with pytest.raises(ValueError, match="fraction"):
        stratified_split(labels, 1.0, seed=0)


def test_dataset_stats_known_and_measured():
    assert dataset_stats("cifar10", torch.zeros(2, 3, 4, 4, dtype=torch.uint8))[0][0] == pytest.approx(0.4914)
    gray = torch.full((2, 1, 4, 4), 51, dtype=torch.uint8)
    mean, std = dataset_stats("cifar10", gray)  # published stats do not fit one channel: measured instead
    assert mean == pytest.approx((0.2,)) and std[0] > 0


# ---- augmentation and batches ----

def test_random_crop_flip_matches_per_image_crops():
    images = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    out = random_crop_flip(images, padding=2, generator=torch.Generator().manual_seed(0))
    padded = F.pad(images, (2, 2, 2, 2))
    seen_shift = seen_flip = False
    for original, crop in zip(padded, out):
        candidates = {(dy, dx, flip) for dy in range(5) for dx in range(5) for flip in (False, True)
                      if torch.equal(crop, (lambda c: c.flip(-1) if flip else c)(original[:, dy:dy + 8, dx:dx + 8]))}
        assert candidates, "every output must be a (flipped) 8x8 window of the zero-padded input"
        seen_shift |= all((dy, dx) != (2, 2) for dy, dx, _ in candidates)
        seen_flip |= all(flip for _, _, flip in candidates)
    assert seen_shift and seen_flip
    assert torch.equal(random_crop_flip(images, padding=0, flip=False), images)


def test_normalize():
    images = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    out = normalize(images, mean, std, channels_last=True)
    expected = (images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(out, expected)
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_train_batches_epochs_determinism_and_ranks():
    # Each image holds its own index, so batches can be decoded back into indices.
    ids = torch.arange(50)
    images = ids.view(50, 1, 1, 1).expand(50, 1, 2, 2).to(torch.uint8).contiguous()
    batches = TrainBatches(images, ids, 8, (0.0,), (1 / 255,), seed=3, padding=0, flip=False)

    def indices(inputs):
        return inputs[:, 0, 0, 0].round().long().tolist()

    epoch = [i for step in range(6) for i in indices(batches(step)[0])]  # 50 // 8 = 6 full batches
    assert len(set(epoch)) == 48
    assert indices(batches(2)[0]) == indices(batches(2)[0]) and batches(2)[1].tolist() == indices(batches(2)[0])
    assert indices(batches(6)[0]) != indices(batches(0)[0])  # a new permutation next epoch
    aug = TrainBatches(images, ids, 8, (0.0,), (1 / 255,), seed=3)
    halves = [TrainBatches(images, ids, 8, (0.0,), (1 / 255,), seed=3, rank=r, world_size=2) for r in (0, 1)]
    whole = aug(7)[0]
    assert torch.equal(halves[0](7)[0], whole[0::2]) and torch.equal(halves[1](7)[0], whole[1::2])
    with pytest.raises(ValueError, match="divisible"):
        TrainBatches(images, ids, 9, (0.0,), (1.0,), seed=0, world_size=2)


# ---- metrics, results, plots, interrupt ----

class FixedLogits(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return self.logits[x[:, 0, 0, 0].round().long()]


def test_evaluate_matches_hand_computation():
    torch.manual_seed(0)
    logits = torch.randn(23, 7)
    labels = torch.randint(0, 7, (23,))
    images = torch.arange(23).view(23, 1, 1, 1).to(torch.uint8)
    result = evaluate(FixedLogits(logits), images, labels, (0.0,), (1 / 255,), batch_size=5)
    losses = F.cross_entropy(logits, labels, reduction="none")
    top5 = (logits.topk(5, 1).indices == labels[:, None]).any(1).float().mean() * 100
    assert result["top1"] == pytest.approx((logits.argmax(1) == labels).float().mean().item() * 100)
    assert result["top5"] == pytest.approx(top5.item())
    assert result["loss"] == pytest.approx(losses.mean().item(), rel=1e-5)
    assert result["loss_std"] == pytest.approx(losses.std(unbiased=False).item(), rel=1e-4)
    assert result["count"] == 23


def test_top5_is_left_out_where_every_label_is_in_the_top_5():
    images = torch.zeros(6, 1, 1, 1, dtype=torch.uint8)
    for classes, has_top5 in ((3, False), (5, False), (6, True)):
        result = evaluate(FixedLogits(torch.randn(6, classes)), images, torch.zeros(6, dtype=torch.long), (0.0,),
                          (1.0,))
        assert ("top5" in result) == has_top5, classes
    assert "top5" not in format_summary(summarize([evaluate(FixedLogits(torch.randn(6, 3)), images,
                                                            torch.zeros(6, dtype=torch.long), (0.0,), (1.0,))]))


def test_summary_best_mean_std_and_files(tmp_path):
    runs = [{"top1": 90.0, "loss": 0.3}, {"top1": 92.0, "loss": 0.4}, {"top1": 91.0, "loss": 0.2}]
    summary = summarize(runs)
    assert summary["top1"] == {"best": 92.0, "mean": 91.0, "std": 1.0, "n": 3}
    assert summary["loss"]["best"] == 0.2  # lower is better for losses
    assert "92.0000 /  91.0000 (1.0000)" in format_summary(summary)
    write_csv([{"iteration": 1, "a": 2}, {"iteration": 2, "b": 3}], tmp_path / "h.csv", ("iteration",))
    assert (tmp_path / "h.csv").read_text() == "iteration,a,b\n1,2,\n2,,3\n"
    write_json({"x": 1}, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text()) == {"x": 1}


RUNS = [{"seed": 0, "train_log": [{"iteration": 1, "train_loss": 2.0}, {"iteration": 2, "train_loss": 1.0}],
         "history": [{"iteration": 2, "val_loss": 1.5}]}]


@pytest.mark.matplotlib
def test_plot_skipped_without_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import now raises ImportError
    assert plot_losses(RUNS, tmp_path / "loss.png") is None and not (tmp_path / "loss.png").exists()


@pytest.mark.matplotlib
def test_plot_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = plot_losses(RUNS, tmp_path / "loss.png", title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_graceful_stop_first_signal_sets_flag_second_interrupts():
    previous = signal.getsignal(signal.SIGINT)
    with GracefulStop() as stop:
        signal.raise_signal(signal.SIGINT)
        assert stop.requested and stop.should_stop(1)
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is previous


# ---- the spine: one loop, one checkpoint format, one resume rule ----

def tiny_run(settings=None):
    from layeract_patch.training.spine import Run

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [3], gamma=0.1)
    return Run(model, optimizer, scheduler, settings=settings or {"lr": 0.1, "max_iter": 6})


def step_batches(step):
    generator = torch.Generator().manual_seed(step)  # a batch is a function of its step: resumable
    return torch.randn(5, 4, generator=generator), torch.randint(0, 3, (5,), generator=generator)


def test_fit_stopped_and_resumed_equals_a_straight_run(tmp_path):
    from layeract_patch.training.spine import LoopConfig, fit

    evaluated = []
    straight = fit(tiny_run(), step_batches, LoopConfig(6, log_every=2, eval_every=3),
                   on_eval=lambda run: evaluated.append(run.step))
    assert evaluated == [3, 6] and [row["iteration"] for row in straight.train_log] == [2, 3, 4, 6]

    path = tmp_path / "checkpoint.pt"
    first = fit(tiny_run(), step_batches, LoopConfig(4, log_every=2, eval_every=3, checkpoint=path))
    saved = load_checkpoint(path)
    assert saved["step"] == 4 and saved["format"] == 1 and saved["settings"] == first.settings
    resumed = tiny_run()
    resumed.load_state_dict(saved)
    fit(resumed, step_batches, LoopConfig(6, log_every=2, eval_every=3))
    assert resumed.step == 6 and resumed.train_log == straight.train_log
    assert all(torch.equal(a, b) for a, b in zip(resumed.model.state_dict().values(),
                                                 straight.model.state_dict().values()))


def test_fit_stops_on_a_non_finite_loss_naming_the_fix():
    from layeract_patch.training.spine import LoopConfig, fit

    def nan_batches(step):
        inputs, targets = step_batches(step)
        return inputs * float("nan"), targets

    with pytest.raises(FloatingPointError, match="loss nan at iteration 2; lower --lr"):
        fit(tiny_run(), nan_batches, LoopConfig(4, log_every=2))


def test_the_resume_rule_lists_every_difference_and_allows_declared_extensions():
    from layeract_patch.training.checkpoint import check_resume

    saved = {"lr": 0.1, "max_iter": 8, "milestones": [4, 6], "data_dir": "a"}
    assert check_resume(saved, dict(saved), "c.pt", ("max_iter",)) == []
    assert check_resume(saved, {**saved, "max_iter": 12}, "c.pt", ("max_iter",)) == ["max_iter 8 -> 12"]
    with pytest.raises(ValueError) as err:
        check_resume(saved, {**saved, "lr": 0.05, "milestones": [2], "data_dir": "b", "max_iter": 4}, "c.pt",
                     ("max_iter",))
    message = str(err.value)
    for part in ("--lr 0.1, not 0.05", "--milestones 4 6, not 2", "--data-dir a, not b", "--max-iter 8, not 4",
                 "a larger --max-iter may extend a run"):
        assert part in message
    with pytest.raises(ValueError, match="--max-iter 8, not 12"):
        check_resume(saved, {**saved, "max_iter": 12}, "c.pt")  # not declared extendable: refused


def test_claim_output_refuses_a_second_holder_and_leaves_no_trace_on_failure(tmp_path):
    from layeract_patch.training.outdir import OutputBusy, claim_output

    out = tmp_path / "new" / "run"
    with claim_output(out):
        assert (out / ".lock").read_text() == str(os.getpid())
        with pytest.raises(OutputBusy, match=f"in use by another run \\(pid {os.getpid()}\\)"):
            with claim_output(out):
                pass
    assert not (tmp_path / "new").exists()  # the folders the claim made were empty: removed again
    with claim_output(out):
        (out / "results.json").write_text("{}")
    assert sorted(p.name for p in out.iterdir()) == ["results.json"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        with claim_output(tmp_path / "file"):
            pass
