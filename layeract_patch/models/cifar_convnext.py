"""A small ConvNeXt (Liu et al. 2022) for CIFAR: GELU by default, any activation of the registry.

    timm.create_model("cifar_convnext", act="gelu")          # ConvNeXt's own GELU and channel LayerNorm
    timm.create_model("cifar_convnext", act="la_gelu")       # LA-GELU in every block
"""
from __future__ import annotations

from typing import Any, Dict, Sequence

import torch
import torch.nn.functional as F
from timm.models import register_model
from torch import Tensor, nn

from ..registry import create_act_layer, get_act_layer
from .cifar_resnet import CIFAR_CFG
from .layers import ClassifierMixin, build_cifar_model, check_init, check_norm, create_norm, init_weights

__all__ = ["CifarConvNeXt", "ConvNeXtBlock", "cifar_convnext", "LAYER_SCALE_INIT"]

default_cfgs: Dict[str, Dict[str, Any]] = {"cifar_convnext": dict(CIFAR_CFG, first_conv="stem.conv", classifier="fc")}

# Layer scale: ConvNeXt's own 1e-6, kept after measuring it against larger starts on the recipes' schedule (SGD,
# lr 0.1 without warmup, 2,500 iterations of batch 128, bf16, GELU, CIFAR-10, seed 0, test top-1 of the last
# weights):   1e-6: 58.1%    0.1: 48.4%    1.0: diverged (chance, loss 2.30 at 300 iterations)
# The worry was that with SGD (steps proportional to the gradient, unlike ConvNeXt's AdamW) the branches, whose
# weights' gradients are scaled by gamma, would stay idle at 1e-6. They do not: gamma's own gradient (the branch
# output against the loss gradient) does not shrink with gamma, and measured, the blocks' mean |gamma| was 0.015-0.06
# after 10 steps and 0.05-0.2 after 300. Starting at 1e-6 lets each block find that scale; a fixed 0.1 or 1.0 puts
# all 8 branches in at once at lr 0.1, before the LayerNorm network has settled.
LAYER_SCALE_INIT = 1e-6


class ConvNeXtBlock(nn.Module):
    """dwconv 7x7 -> norm -> 1x1 conv to 4C -> act -> 1x1 conv back to C -> x gamma (layer scale) -> + input.

    The pointwise layers are 1x1 convolutions rather than ConvNeXt's Linear on a channels-last view, so the
    activation sees (N, 4C, H, W): an affine LayerAct's weight is then per channel (its dim 1), and
    convert_activations sizes it from an example input as for any conv net.
    """

    def __init__(self, dim: int, act: str = "gelu", norm: str = "lnc", layer_scale_init: float = LAYER_SCALE_INIT,
                 expansion: int = 4, kernel_size: int = 7) -> None:
        super().__init__()
        hidden = expansion * dim
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = create_norm(norm, dim)
        self.pw1 = nn.Conv2d(dim, hidden, 1)
        self.act = create_act_layer(act, num_channels=hidden)
        self.pw2 = nn.Conv2d(hidden, dim, 1)
        self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale_init))) if layer_scale_init > 0 else None

    def forward(self, x: Tensor) -> Tensor:
        y = self.pw2(self.act(self.pw1(self.norm(self.conv_dw(x)))))
        if self.gamma is not None:
            y = y * self.gamma.view(1, -1, 1, 1)
        return x + y


class Stem(nn.Module):
    """The first conv and its norm (a module of its own, not an nn.Sequential, so timm's feature wrapper finds it)."""

    def __init__(self, in_chans: int, dim: int, patch: int, norm: str) -> None:
        super().__init__()
        # patch 1: a 3x3 conv at full resolution; patch p > 1: ConvNeXt's non-overlapping p x p patchify
        self.conv = (nn.Conv2d(in_chans, dim, 3, padding=1) if patch == 1 else
                     nn.Conv2d(in_chans, dim, patch, stride=patch))
        self.norm = create_norm(norm, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.conv(x))


class Stage(nn.Module):
    """Optional downsampling (norm, then a 2x2 stride-2 conv, as ConvNeXt) followed by the blocks."""

    def __init__(self, in_dim: int, dim: int, depth: int, downsample: bool, act: str, norm: str,
                 layer_scale_init: float) -> None:
        super().__init__()
        self.downsample = (nn.Sequential(create_norm(norm, in_dim), nn.Conv2d(in_dim, dim, 2, stride=2))
                           if downsample else nn.Identity())
        self.blocks = nn.Sequential(*(ConvNeXtBlock(dim, act, norm, layer_scale_init) for _ in range(depth)))

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.downsample(x))


class CifarConvNeXt(ClassifierMixin, nn.Module):
    """stem -> 4 stages (downsampling by 2 between them) of ConvNeXt blocks -> global average pool -> norm -> linear.

    Sized for training on one CPU thread (bf16 autocast): a 2x2 patchify stem to 16x16 (a 3x3 stride-1 stem, which
    keeps the first stage at 32x32, made the step 3.5x slower, ~100 images/s), widths (32, 64, 128, 256), two
    blocks per stage: 16x16, 8x8, 4x4, 2x2 maps, 1.6M parameters; ~300 images/s per training step on one
    thread of an Intel Xeon (bf16 autocast, batch 128), 1.5x a ResNet-20 step.

    Args:
        num_classes, in_chans: as CifarResNet's.
        act: an activation name of layeract_patch.registry; "gelu" (ConvNeXt's) by default. One module per block,
            sized to its 4x-expanded channels (so affine LayerActs, e.g. "la_gelu_affine", work).
        norm: "lnc" (default: LayerNorm over the channels at each pixel, ConvNeXt's own), "ln" (GroupNorm(1):
            LayerNorm over C, H, W per sample, the package's "ln"), "bn" or "none".
        init: "he" (Kaiming normal, zero biases, norms as identity) or "torch" (PyTorch's default init).
        dims, depths, stem_patch, layer_scale_init: the architecture (see above and LAYER_SCALE_INIT).
    """
    num_feature_levels = 4  # one per stage

    def __init__(self, num_classes: int = 10, act: str = "gelu", norm: str = "lnc", in_chans: int = 3,
                 init: str = "he", dims: Sequence[int] = (32, 64, 128, 256), depths: Sequence[int] = (2, 2, 2, 2),
                 stem_patch: int = 2, layer_scale_init: float = LAYER_SCALE_INIT) -> None:
        super().__init__()
        get_act_layer(act)  # fail on a bad name before building anything
        norm, init = check_norm(norm), check_init(init)
        if len(dims) != len(depths) or not dims:
            raise ValueError(f"dims and depths must have one entry per stage, got {list(dims)} and {list(depths)}")
        self.act_name, self.norm_name, self.init = act, norm, init
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.stem = Stem(in_chans, dims[0], stem_patch, norm)
        stages, in_dim, reduction, self.feature_info = [], dims[0], stem_patch, []
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            stages.append(Stage(in_dim, dim, depth, i > 0, act, norm, layer_scale_init))
            reduction *= 2 if i > 0 else 1
            self.feature_info.append(dict(num_chs=dim, reduction=reduction, module=f"stages.{i}"))
            in_dim = dim
        self.stages = nn.Sequential(*stages)
        self.num_features = in_dim
        self.head_norm = create_norm(norm, in_dim)  # ConvNeXt's norm before the classifier, on the pooled (N, C, 1, 1)
        self.fc = nn.Linear(self.num_features, num_classes)
        self.pretrained_cfg = dict(default_cfgs["cifar_convnext"], num_classes=num_classes,
                                   input_size=(in_chans, 32, 32))
        init_weights(self, init)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = torch.flatten(self.head_norm(F.adaptive_avg_pool2d(x, 1)), 1)
        return x if pre_logits else self.fc(x)


@register_model
def cifar_convnext(pretrained: bool = False, **kwargs) -> CifarConvNeXt:
    """The small CIFAR ConvNeXt; kwargs: num_classes, act, norm, in_chans, init (and the architecture's dims,
    depths, stem_patch, layer_scale_init) and timm's own (features_only, ...). The same as
    `timm.create_model("cifar_convnext", ...)`."""
    return build_cifar_model(CifarConvNeXt, "cifar_convnext", default_cfgs["cifar_convnext"],
                             "recipes/cifar_convnext.py", pretrained, **kwargs)
