"""convert_activations: swap a torchvision or timm model's activations for LayerAct, in place, with a report.

    model = convert_activations(torchvision.models.resnet50(weights="DEFAULT"), to="la_silu")

What it converts (by default): nn.ReLU, nn.SiLU, nn.Hardswish and timm's Swish, HardSwish, SwishMe,
HardSwishMe (the catalogue's element activations), also inside timm's norm-act modules (BatchNormAct2d.act).
Gates (sigmoid-like modules, and whatever sits in a `scale_activation` or `gate` slot) are never touched.
Without `affine` nothing is added to the state_dict, so pretrained weights load before or after the conversion.

    swap.py              the common path: walk, filter_fn, swap (hooks, mode, device, dtype kept), report
    targets.py           `to=` resolved into LayerAct targets per source type (from the catalogue)
    report.py            ConversionReport
    example_forward.py   the example forward (example_input): call sites, functional calls, discarded results
    sizing.py            affine=True: one weight/bias per call site, sized; CallSiteActs for reused modules
    calibrate.py         calibrate=: fit each affine LayerAct to the activation it replaced (trained models)
    call_sites.py        CallSiteActs
    functional_calls.py  F.relu & co.: found in forward code, or rewritten into modules with torch.fx
    tracing.py           the torch.fx trace that keeps activations whole
    wrappers.py          DDP / DataParallel / torch.compile wrappers and their name prefixes
"""
from .calibrate import Calibration
from .call_sites import CallSiteActs
from .report import ConversionReport
from .swap import convert_activations
from .targets import default_activation_types, gate_types

__all__ = ["convert_activations", "Calibration", "ConversionReport", "CallSiteActs", "default_activation_types",
           "gate_types"]
