"""The README's main job: patch a torchvision ResNet-18 to LA-SiLU in one call and train it a few steps.

    .venv/bin/python -m layeract_patch.demo [--steps 5] [--batch-size 8] [--img-size 32]

Runs offline (random weights and random images), in seconds on two CPU cores.
"""
from __future__ import annotations

import argparse
import os
import shlex
import time
import warnings
from pathlib import Path

import torch
import torchvision
from torch import nn

from . import __version__, backend
from .convert import convert_activations
from .modules import LayerAct
from .training.command import python_command


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="training steps after the conversion")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--to", default="la_silu", help="la_silu or la_hardsilu")
    return parser


def main(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the backend fallback warning, shown below instead
        kernel = backend("cpu")
    print(f"layeract-patch {__version__}, torch {torch.__version__}, CPU backend: {kernel}")
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    keys_before = list(model.state_dict())
    relus = sum(isinstance(m, nn.ReLU) for m in model.modules())

    model, report = convert_activations(model, to=args.to, return_report=True)
    print(report)
    print(f"nn.ReLU modules before: {relus}, after: {sum(isinstance(m, nn.ReLU) for m in model.modules())}; "
          f"LayerAct modules now: {sum(isinstance(m, LayerAct) for m in model.modules())}; "
          f"state_dict keys unchanged: {list(model.state_dict()) == keys_before}")

    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    images = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    labels = torch.randint(0, 10, (args.batch_size,))
    model.train()
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        loss = nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        print(f"step {step}/{args.steps}  loss {loss.item():.4f}  (fitting one random batch)")
    print(f"{args.steps} steps in {time.perf_counter() - start:.1f} s. Next: {next_command()}")


def next_command() -> str:
    """The CIFAR recipe's --help, as it runs from here without an activated venv (the recipes live in the
    repository, beside this package, when it is installed from a clone)."""
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "cifar_resnet.py"
    if not recipe.is_file():
        return "recipes/cifar_resnet.py --help, in a clone of the repository"
    relative = os.path.relpath(recipe)
    shown = shlex.quote(str(recipe) if relative.startswith("..") else relative)
    return f"{python_command()} {shown} --help"


if __name__ == "__main__":
    main(get_args_parser().parse_args())
