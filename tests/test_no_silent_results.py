"""Inputs that used to give a wrong result without a word: each now gives the right result or one clear error."""
import numpy as np
import pytest
import torch

from layeract_patch import LAHardSiLU, LASiLU, set_backend
from layeract_patch.functional import la_hardsilu, la_silu


# ---- affine parameters on another device than the input ----

def test_affine_parameters_on_the_meta_device_are_refused_as_torch_refuses():
    x = torch.randn(2, 3, 4)
    weight, bias = torch.ones(3, device="meta"), torch.zeros(3, device="meta")
    with pytest.raises(RuntimeError, match="same device.*cpu.*meta.*affine weight"):
        la_silu(x, weight=weight, bias=bias)
    with pytest.raises(RuntimeError, match=r"same device.*\.to\('cpu'\)"):
        LAHardSiLU(affine=True, num_channels=3, device="meta")(x)
    module = LASiLU(affine=True, num_channels=3, device="meta").to_empty(device="cpu")
    module.reset_parameters()
    torch.testing.assert_close(module(x), la_silu(x))  # moved to the input's device, it runs: weight 1, bias 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_affine_parameters_on_cuda_with_a_cpu_input_are_refused():
    with pytest.raises(RuntimeError, match="same device"):
        LASiLU(affine=True, num_channels=3).cuda()(torch.randn(2, 3, 4))


# ---- alpha that is 0 in float32: NaN for a sample whose values are all equal ----

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("alpha", [0, 0.0, 1e-50, 2.0 ** -150])
def test_an_alpha_that_is_zero_in_float32_is_refused(dtype, alpha):
    x = torch.zeros(2, 3, 4, dtype=dtype)  # a dead (all-zero) map
    with pytest.raises(ValueError, match="alpha must be a finite number > 0, also in float32"):
        la_silu(x, alpha=alpha)
    with pytest.raises(ValueError, match="alpha"):
        LAHardSiLU(alpha=alpha)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_smallest_alpha_accepted_gives_finite_results_for_constant_samples(backend, dtype):
    set_backend(backend)
    try:
        x = torch.stack([torch.zeros(3, 4), torch.full((3, 4), 0.5)]).to(dtype).requires_grad_()
        for act in (la_silu, la_hardsilu):
            out = act(x, alpha=2.0 ** -149)  # the smallest float32 above 0
            (grad,) = torch.autograd.grad(out.sum(), x)
            assert out.isfinite().all() and grad.isfinite().all()
            torch.testing.assert_close(out, x.detach() * 0.5)  # n = 0 for a constant sample: scale 1/2
    finally:
        set_backend("auto")


# ---- images: 16-bit rescaled, float refused (both loaders) ----

def image_root(tmp_path, odd=None):
    """train/ and val/ with two classes of 8-bit PNGs; `odd` (name, PIL image) goes into train/a/."""
    from PIL import Image

    for split in ("train", "val"):
        for cls, value in (("a", 60), ("b", 180)):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(folder / f"{i}.png")
    if odd is not None:
        odd[1].save(tmp_path / "train" / "a" / odd[0])
    return tmp_path


def test_a_16_bit_grey_png_is_rescaled_in_both_loaders(tmp_path):
    from PIL import Image

    from layeract_patch.training.data import load_images
    from layeract_patch.training.folders import image_folders

    wide = np.array([[0, 257 * 100], [65535, 257 * 200]], dtype=np.uint16).repeat(4, 0).repeat(4, 1)
    root = image_root(tmp_path, ("wide.png", Image.fromarray(wide)))
    assert Image.open(root / "train" / "a" / "wide.png").mode == "I;16"
    expected = torch.tensor([[0, 100], [255, 200]], dtype=torch.uint8).repeat_interleave(4, 0).repeat_interleave(4, 1)
    images, _, _ = load_images(root, "cifar10", train=True)  # the CIFAR recipes' ImageFolder
    assert torch.equal(images[2, 0], expected)  # a/0.png, a/1.png, a/wide.png: grey in all three channels
    train, _ = image_folders(root)  # fine-tuning's
    path = next(i for i, (p, _) in enumerate(train.samples) if p.endswith("wide.png"))
    assert torch.equal(torch.from_numpy(np.array(train[path][0]))[..., 1], expected)


def test_a_float_image_is_refused_naming_the_file(tmp_path):
    from PIL import Image

    from layeract_patch.training.data import load_images
    from layeract_patch.training.folders import check_images, image_folders

    root = image_root(tmp_path, ("float.tiff", Image.fromarray(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8))))
    message = f"{root / 'train' / 'a' / 'float.tiff'}.*floating-point pixels"
    with pytest.raises(ValueError, match=message):
        load_images(root, "cifar10", train=True)
    train, held_out = image_folders(root)
    with pytest.raises(ValueError, match=message):
        check_images(train, held_out)  # what fine-tuning checks before it starts


# ---- fine-tuning folders: a looping link, an empty class folder ----

def test_a_link_looping_back_is_refused_not_followed(tmp_path):
    from layeract_patch.training.folders import image_folders

    root = image_root(tmp_path)
    (root / "train" / "a" / "loop").symlink_to("..")
    with pytest.raises(ValueError, match=f"{root / 'train' / 'a' / 'loop'}.*a folder above it"):
        image_folders(root)
    (root / "train" / "a" / "loop").unlink()
    (root / "train" / "a" / "more").symlink_to(root / "val" / "a")  # a link that does not loop is followed
    assert len(image_folders(root)[0]) == 6


def test_an_empty_class_folder_is_named_with_its_split(tmp_path):
    from layeract_patch.training.folders import image_folders

    root = image_root(tmp_path)
    (root / "val" / "c").mkdir()
    with pytest.raises(FileNotFoundError, match=f"class folder '{root / 'val' / 'c'}' holds no images"):
        image_folders(root)


# ---- official CIFAR-C labels: checked before the evaluation starts ----

def finished_cifar_run(tmp_path, classes=3):
    """seed_0/ of a CIFAR run as the recipes leave it: the tested weights and the results.json naming them."""
    import json

    from layeract_patch.training.cifar import build_model

    arch = {"model": "cifar_resnet", "depth": 8, "act": "relu", "norm": "bn", "init": "he", "num_classes": classes,
            "in_chans": 3, "image_size": [32, 32]}
    seed = tmp_path / "run" / "seed_0"
    seed.mkdir(parents=True)
    torch.save(build_model(arch).state_dict(), seed / "model.pt")
    (seed / "results.json").write_text(json.dumps({
        "architecture": arch, "classes": [f"class_{i}" for i in range(classes)], "model": "cifar_resnet8",
        "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3}, "dataset": "imagefolder:data", "seed": 0}))
    return seed


@pytest.mark.parametrize("labels, problem", [
    (np.full(10, 9.9), "not whole numbers"),  # was truncated to 9
    (np.full(10, 3), "outside the model's classes 0..2"),  # was an IndexError mid-evaluation
    (np.full(10, -1), "outside the model's classes"),
    (np.zeros((10, 1), np.int64), "2-D array"),
])
def test_official_cifar_c_labels_are_checked_before_the_evaluation(tmp_path, capsys, labels, problem):
    from test_recipes import RESNET, recipe
    from test_training import make_imagefolder

    seed = finished_cifar_run(tmp_path)
    data = make_imagefolder(tmp_path / "data", classes=3, per_class=(1, 1))
    official = tmp_path / "CIFAR-10-C"
    official.mkdir()
    np.save(official / "fog.npy", np.zeros((10, 32, 32, 3), np.uint8))
    np.save(official / "labels.npy", labels)
    code, _, stderr = recipe(RESNET.with_name("eval_corruptions.py"), "--checkpoint", seed, "--data-dir", data,
                             "--corruptions-dir", official, "--corruptions", "fog", "--severities", "1", "--out",
                             tmp_path / "eval", capsys=capsys)
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and f"{official / 'labels.npy'} holds" in lines[0] and problem in lines[0]
    assert not (tmp_path / "eval").exists()
