"""Opening a file never runs code: planted checkpoints, CIFAR batches and kernel libraries that would create a
marker file are refused with one line naming the file, and the marker is never made."""
import json
import os
import pickle
import subprocess

import pytest
import torch

from layeract_patch.training import finetune as ft
from test_recipes import CNN, RESNET, recipe
from test_training import make_cifar_root, make_imagefolder

EVAL_ARGS = ["--corruptions", "contrast", "--severities", "1"]


class Planted:
    """What an attacker pickles: unpickling it runs a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def plant_checkpoint(path, marker, state=None):
    """A torch checkpoint whose one tensor is replaced by the planted object."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = dict(state or {"format": 1, "step": 0, "settings": {}})
    state["model"] = {"conv.weight": Planted(marker)}
    torch.save(state, path)
    return path


def one_error_line(stderr, *words):
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "error:" in lines[0] and "Traceback" not in stderr, stderr
    assert all(word in lines[0] for word in words), lines[0]


# ---- checkpoints: loaded weights-only ----

def test_eval_corruptions_refuses_a_planted_cifar_model(tmp_path, capsys):
    marker = tmp_path / "marker"
    seed = tmp_path / "run" / "seed_0"
    plant_checkpoint(seed / "model.pt", marker)
    (seed / "results.json").write_text(json.dumps({"architecture": {"model": "cifar_resnet", "depth": 8}}))
    code, _, stderr = recipe(RESNET.with_name("eval_corruptions.py"), "--checkpoint", seed.parent, "--data-dir",
                             tmp_path / "data", "--out", tmp_path / "eval", *EVAL_ARGS, capsys=capsys)
    assert code == 2 and not marker.exists() and not (tmp_path / "eval").exists()
    one_error_line(stderr, str(seed / "model.pt"), "posix.system", "weights-only")


def test_eval_corruptions_refuses_a_planted_fine_tuning_checkpoint(tmp_path, capsys):
    marker = tmp_path / "marker"
    run = tmp_path / "ft"
    plant_checkpoint(run / "checkpoint_finetuned.pt", marker)
    (run / "results.json").write_text(json.dumps({"model": "timm/test_efficientnet", "classes": 3,
                                                  "settings": {"act": "la_silu", "img_size": 32}}))
    code, _, stderr = recipe(RESNET.with_name("eval_corruptions.py"), "--checkpoint", run, "--data-dir",
                             tmp_path / "data", "--out", tmp_path / "eval", *EVAL_ARGS, capsys=capsys)
    assert code == 2 and not marker.exists()
    one_error_line(stderr, str(run / "checkpoint_finetuned.pt"), "weights-only")


def test_cifar_resume_refuses_a_planted_checkpoint(tmp_path, capsys):
    marker = tmp_path / "marker"
    data = make_imagefolder(tmp_path / "data", classes=2, per_class=(4, 2))
    planted = plant_checkpoint(tmp_path / "run" / "seed_0" / "checkpoint.pt", marker)
    code, _, stderr = recipe(RESNET, "--depth", "8", "--data-dir", data, "--out", tmp_path / "run", "--resume",
                             "--max-iter", "2", "--batch-size", "2", capsys=capsys)
    assert code == 2 and not marker.exists()
    one_error_line(stderr, str(planted), "weights-only")


def test_finetune_resume_refuses_a_planted_checkpoint(tmp_path):
    marker = tmp_path / "marker"
    planted = plant_checkpoint(tmp_path / "checkpoint_finetuned.pt", marker)
    data = torch.utils.data.TensorDataset(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="weights-only") as err:
        ft.finetune(torch.nn.Linear(3, 2), data, iterations=2, batch_size=2, opt="sgd", lr=0.1, weight_decay=0.0,
                    checkpoint=planted, resume=True)
    assert str(planted) in str(err.value) and not marker.exists()


def test_checkpoints_the_recipes_write_still_load(tmp_path):
    # what Run.state_dict holds: RNG states, optimizer, scheduler and scaler states, plain-python records
    from layeract_patch.training.checkpoint import load_checkpoint, save_checkpoint
    from layeract_patch.training.spine import Run

    model = torch.nn.Linear(3, 2)
    optimizer = ft.build_optimizer(model, "adamw", 0.1, 1e-4, 0.9)
    model(torch.randn(2, 3)).sum().backward()
    optimizer.step()
    for scheduler in (torch.optim.lr_scheduler.MultiStepLR(optimizer, [1, 2]),
                      ft.warmup_cosine(optimizer, 1, 4)):
        run = Run(model, optimizer, scheduler, settings={"milestones": [1, 2], "data": {"classes": ["a"]}},
                  scaler=torch.amp.GradScaler("cpu"), records={"best": {"top1": float("-inf"), "model": None}})
        save_checkpoint(run.state_dict(), tmp_path / "checkpoint.pt")
        state = load_checkpoint(tmp_path / "checkpoint.pt")
        assert torch.equal(state["rng"]["torch"], run.state_dict()["rng"]["torch"])
        assert state["settings"] == run.settings and state["records"] == run.records


# ---- CIFAR batches: md5-checked before unpickling ----

@pytest.mark.parametrize("planted", ["data_batch_3", "batches.meta"])
def test_a_planted_cifar_batch_is_refused_before_anything_is_unpickled(tmp_path, capsys, monkeypatch, planted):
    marker = tmp_path / "marker"
    root = make_cifar_root(tmp_path / "cifar", monkeypatch=monkeypatch)  # these files' md5s are "official"
    with open(root / "cifar-10-batches-py" / planted, "wb") as f:
        pickle.dump(Planted(marker), f)
    code, _, stderr = recipe(CNN, "--data-dir", root, "--no-download", "--out", tmp_path / "run", "--max-iter", "2",
                             "--batch-size", "8", capsys=capsys)
    assert code == 2 and not marker.exists() and not (tmp_path / "run").exists()
    one_error_line(stderr, str(root / "cifar-10-batches-py" / planted), "md5")


# ---- the compiled kernel cache: owner and permissions checked ----

PLANTED_LIBRARY = r"""
#include <stdio.h>
__attribute__((constructor)) static void planted(void) { FILE *f = fopen(MARKER, "w"); if (f) fclose(f); }
"""


@pytest.fixture
def fresh_dispatch(monkeypatch):
    """Forget which backends loaded (and warned), and restore that memory afterwards."""
    from layeract_patch import _kernels
    from layeract_patch._kernels import cpu_kernel

    monkeypatch.setattr(_kernels, "_modules", {})
    monkeypatch.setattr(_kernels, "_chosen", {})
    cpu_kernel.library.cache_clear()
    yield cpu_kernel
    cpu_kernel.library.cache_clear()


def test_a_library_others_could_plant_is_never_loaded(compiled, fresh_dispatch, tmp_path, monkeypatch):
    from layeract_patch.functional import la_reference, la_silu

    cpu_kernel = fresh_dispatch
    cache, marker = tmp_path / "cache", tmp_path / "marker"
    monkeypatch.setenv("LAYERACT_CACHE_DIR", str(cache))
    library = cpu_kernel.build()  # the name the kernel is cached under; then someone else's library there
    assert oct(cache.stat().st_mode & 0o777) == "0o700"  # a cache folder this package makes is private
    source = tmp_path / "planted.c"
    source.write_text(PLANTED_LIBRARY)
    subprocess.run(cpu_kernel.find_compiler() + ["-shared", "-fPIC", f'-DMARKER="{marker}"', str(source), "-o",
                                                 str(library)], check=True)
    cases = [(library, 0o664, cache, 0o700, "file", "writable by group or others"),
             (library, 0o600, cache, 0o777, "folder", "writable by group or others")]
    if os.getuid() == 0:  # root can hand the file to another user
        cases.append((library, 0o600, cache, 0o700, "file", "owned by uid 65534"))
    for file, file_mode, folder, folder_mode, what, why in cases:
        os.chmod(file, file_mode)
        os.chmod(folder, folder_mode)
        if why.startswith("owned"):
            os.chown(file, 65534, 65534)
        cpu_kernel.library.cache_clear()
        with pytest.raises(RuntimeError, match=f"kernel cache {what} .*{why}.*LAYERACT_CACHE_DIR"):
            cpu_kernel.library()
        assert not marker.exists()
    # as a user meets it: LayerAct still computes, with the eager backend and one warning naming the file
    cpu_kernel.library.cache_clear()
    x = torch.randn(2, 3, 4)
    with pytest.warns(RuntimeWarning, match=f"'cpu' backend is unavailable.*kernel cache (file|folder) .*{cache}"):
        out = la_silu(x)
    torch.testing.assert_close(out, la_reference(x, "silu"))
    assert not marker.exists()
