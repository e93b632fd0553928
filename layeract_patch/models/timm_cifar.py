"""An ImageNet architecture from timm, as a user would take it, trained on CIFAR by the same recipes.

    timm.create_model("cifar_mobilenetv3", act="hardsilu")      # timm's mobilenetv3_small_100, untouched
    timm.create_model("cifar_mobilenetv3", act="la_hardsilu")   # its hard-swish sites as LA-HardSiLU

`cifar_mobilenetv3` is `timm.create_model("mobilenetv3_small_100", pretrained=False, num_classes=...,
in_chans=..., act_layer=<the registry's module for act>)`: the architecture and its own initialisation are
timm's; only the data config (pretrained_cfg: 32x32, CIFAR-10's mean and std, no crop) is CIFAR's, so
recipes/finetune.py resizes and normalizes images as the CIFAR recipes trained it.

What `act` replaces (timm's _gen_mobilenet_v3 passes `act_layer` as the network's default activation):
    - the hard-swish sites: the stem, the expansion and depthwise activations of the eight blocks of stages
      2-4, the final 1x1 conv block (576 channels) and the head's conv_head (1024): 19 modules;
    - not the `nre` blocks (stage 0's depthwise-separable block and stage 1's two inverted residuals), which
      timm builds with ReLU whatever act_layer is: 5 modules;
    - not the squeeze-excite gates: their reduction stays ReLU (force_act_layer) and their gate hard-sigmoid:
      9 of each.
The architecture is kept as timm builds it for 224x224 ImageNet images: at 32x32 the stride-2 stem and four
stride-2 stages leave 16, 8, 4, 2 and finally 1x1 maps (the last stage, the 576-channel block and the head run
at 1x1). That is the point of the model here (an ImageNet architecture as it comes), and it costs accuracy: 2,500
iterations of the recipes' SGD (lr 0.1, batch 128, bf16) reached 34.7% test top-1 where a CIFAR ResNet-20
reaches ~77%. A stride-1 stem would give the network CIFAR-sized maps, every map 4x larger (about 4x the work of
a step); it would be another model, and another name.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Dict

from timm.models import register_model
from torch import nn

from ..modules import LayerAct
from ..registry import create_act_layer, get_act_layer
from .cifar_resnet import CIFAR_CFG
from .layers import check_init, check_norm

__all__ = ["cifar_mobilenetv3", "TIMM_ARCH"]

TIMM_ARCH = "mobilenetv3_small_100"
# The data config the model is trained with (what timm's resolve_data_config and recipes/finetune.py read).
CIFAR_DATA_CFG: Dict[str, Any] = dict(CIFAR_CFG, first_conv="conv_stem", classifier="classifier", hf_hub_id=None,
                                      pool_size=(1, 1), architecture=TIMM_ARCH, tag=None, license="apache-2.0")


def _check(norm: str, init: str) -> None:
    """The one error for a norm or init this model does not have, before anything is built."""
    if check_norm(norm) != "bn":
        raise ValueError(f"cifar_mobilenetv3 is timm's {TIMM_ARCH} with its own BatchNorm; norm must be 'bn', got "
                         f"{norm!r}")
    if check_init(init) != "torch":
        raise ValueError(f"cifar_mobilenetv3 keeps timm's own initialisation of {TIMM_ARCH}: init must be 'torch', "
                         f"got {init!r}")


def _affine_sites(model: nn.Module, layer) -> None:
    """Replace each (non-affine) LayerAct that timm built with an affine one sized to its channels.

    timm builds activations as act_layer(inplace=True), without the channel count an affine LayerAct needs, so
    the model is built with the plain class and every site is resized here: a BatchNormAct2d's `act` takes its
    norm's channels, the head's `act2` takes conv_head's output channels."""
    sized = {}
    for name, module in model.named_modules():
        act = getattr(module, "act", None)
        if isinstance(act, LayerAct) and isinstance(module, nn.modules.batchnorm._BatchNorm):
            sized[f"{name}.act" if name else "act"] = module.num_features
    if isinstance(getattr(model, "act2", None), LayerAct):
        sized["act2"] = model.conv_head.out_channels
    found = [name for name, module in model.named_modules() if isinstance(module, LayerAct)]
    unsized = sorted(set(found) - set(sized))
    if unsized:  # a timm version that places activations elsewhere: say so rather than train a wrong model
        raise RuntimeError(f"cannot size the affine activations {', '.join(unsized)} of timm's {TIMM_ARCH}; train "
                           f"with the non-affine activation and convert with convert_activations(affine=True)")
    for name, channels in sized.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer(num_channels=channels))


@register_model
def cifar_mobilenetv3(pretrained: bool = False, num_classes: int = 10, act: str = "hardsilu", norm: str = "bn",
                      in_chans: int = 3, init: str = "torch", **kwargs) -> nn.Module:
    """timm's mobilenetv3_small_100 (an ImageNet architecture, untouched) for CIFAR; `act` replaces its
    hard-swish (see the module docstring); norm "bn" only (its own), init "torch" only (timm's own). kwargs go to
    timm.create_model (features_only, drop_rate, ...). The same as `timm.create_model("cifar_mobilenetv3", ...)`."""
    import timm

    if pretrained:
        raise ValueError("cifar_mobilenetv3 has no pretrained weights; train one with recipes/cifar_mobilenetv3.py and "
                         "load its model.pt (timm's ImageNet weights are timm/mobilenetv3_small_100's)")
    _check(norm, init)
    layer = get_act_layer(act)
    affine = isinstance(layer, partial) and layer.keywords.get("affine", False)
    plain = partial(layer.func, *layer.args, **{k: v for k, v in layer.keywords.items() if k != "affine"}) \
        if affine else layer
    kwargs.pop("pretrained_cfg", None)  # timm's registry hands the variant's cfg; the model keeps the CIFAR one
    overlay = {**CIFAR_DATA_CFG, "num_classes": num_classes, "input_size": (in_chans, 32, 32),
               **(kwargs.pop("pretrained_cfg_overlay", None) or {})}

    def act_layer(inplace: bool = False, **options) -> nn.Module:  # timm calls act_layer(inplace=True); nn.GELU
        return create_act_layer(plain, inplace=inplace, **options)  # takes no `inplace`, LayerAct ignores it

    model = timm.create_model(TIMM_ARCH, pretrained=False, num_classes=num_classes, in_chans=in_chans,
                              act_layer=act_layer, pretrained_cfg_overlay=overlay, **kwargs)
    if affine:
        _affine_sites(model, layer)
    model.act_name, model.norm_name, model.init = act, "bn", "torch"
    return model
