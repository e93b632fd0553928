"""Does the modern zoo convert? Issue 25's GELU models, each converted and run forward and backward.

    OMP_NUM_THREADS=1 python benchmarks/convert_zoo.py                  # the whole list, batch 2, input size each
    python benchmarks/convert_zoo.py --models convnext_atto vit_tiny_patch16_224 --batch 1

Every model is built without weights (pretrained=False / weights=None) and converted with each activation
mapped to its family's LayerAct, read from the catalogue: GELU (both forms) -> LA-GELU in the same form,
SiLU and ReLU -> LA-SiLU, hard-swish -> LA-HardSiLU. Gates (squeeze-excitation sigmoids) must stay as they
were. One row per model: the activations it had, the LayerAct modules it has after, what was left as it is
(activations of no LayerAct family, e.g. a head's Tanh), whether the gates were kept, and whether a forward on
random images and a backward (of the summed log-softmax) gave finite outputs and finite gradients for every
parameter. Exit status 1 when a model fails one of these or keeps an activation that a LayerAct family covers.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections import Counter
from typing import Callable, Dict, List, Tuple

import torch
from torch import nn

from layeract_patch import catalogue, convert_activations
from layeract_patch.convert import gate_types
from layeract_patch.modules import LayerAct

MODELS = ("convnext_atto", "torchvision/convnext_tiny", "vit_tiny_patch16_224", "deit_tiny_patch16_224",
          "swin_tiny_patch4_window7_224", "efficientformer_l1", "maxvit_tiny_tf_224", "coatnet_0_rw_224",
          "mobilevitv2_050", "levit_128s")


def build(name: str) -> Tuple[nn.Module, int]:
    """The model without weights, and its input size (timm's pretrained_cfg; 224 for torchvision)."""
    if name.startswith("torchvision/"):
        import torchvision

        return getattr(torchvision.models, name.split("/", 1)[1])(weights=None), 224
    import timm

    model = timm.create_model(name, pretrained=False)
    return model, model.pretrained_cfg.get("input_size", (3, 224, 224))[-1]


def family_mapping() -> Dict[type, str]:
    return {t: catalogue.layer_act_for(catalogue.element_of(t)).name for t in catalogue.replaced_types()}


def counts(modules: List[nn.Module], label: Callable[[nn.Module], str]) -> str:
    return ", ".join(f"{name} {n}" for name, n in Counter(label(m) for m in modules).items()) or "-"


def check(name: str, batch: int) -> Tuple[bool, str]:
    start = time.perf_counter()
    model, size = build(name)
    before = [m for m in model.modules() if catalogue.element_of(m) is not None]
    gates = {n: type(m) for n, m in model.named_modules() if isinstance(m, gate_types())}
    model, report = convert_activations(model, to=family_mapping(), return_report=True)
    after = dict(model.named_modules())
    converted = [m for m in after.values() if isinstance(m, LayerAct)]
    left = [m for m in after.values() if catalogue.element_of(m) is not None]
    gates_kept = all(type(after.get(n)) is cls for n, cls in gates.items())
    others = [s.type for s in report.skipped if s.reason.startswith("not a target")]  # no LayerAct family's
    out = model(torch.randn(batch, 3, size, size))
    out.log_softmax(-1).sum().backward()
    finite_forward = bool(out.isfinite().all())
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    finite_backward = all(g is not None and bool(g.isfinite().all()) for g in grads)
    ok = bool(converted) and not left and gates_kept and finite_forward and finite_backward
    row = (f"| {name} | {size} | {counts(before, lambda m: type(m).__name__)} | "
           f"{counts(converted, lambda m: type(m).__name__ + ('(tanh)' if m.kind == 'gelu_tanh' else ''))} | "
           f"{len(report.swapped)} | {counts(others, str)} | {len(gates)} {'kept' if gates_kept else 'CHANGED'} | "
           f"{'yes' if finite_forward else 'NO'} | {'yes' if finite_backward else 'NO'} | "
           f"{time.perf_counter() - start:.1f} |")
    return ok, row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS),
                        help="timm names, or torchvision/<name> (default: issue 25's list)")
    parser.add_argument("--batch", type=int, default=2, help="images per forward (default: %(default)s)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)  # timm's and torch's deprecation notes
    torch.manual_seed(0)
    print(f"# convert_activations(model, to=<each family's LayerAct>), batch {args.batch}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s)")
    print("| model | input | activations before | LayerAct after | converted | left as is | gates | finite forward | "
          "finite backward | seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    failed = []
    for name in args.models:
        try:
            ok, row = check(name, args.batch)
        except Exception as err:  # one model's failure is a row of the table, not the end of the run
            ok, row = False, f"| {name} | | FAILED: {type(err).__name__}: {err} | | | | | | | |"
        print(row, flush=True)
        if not ok:
            failed.append(name)
    print(f"# {len(args.models) - len(failed)} of {len(args.models)} models converted, kept their gates and ran "
          f"finite forward and backward" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
