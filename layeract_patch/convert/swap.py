"""convert_activations: one walk over the model's (parent, name, child) slots, one filter, one swap, a report.

Shaped like torchao's `quantize_(model, config, filter_fn)`. Three doors open only when asked for: the example
forward (example_input), call-site sizing (affine=True) and functional-call rewriting (functional="convert").
"""
from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from functools import partial
from collections import Counter, defaultdict
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Tuple, Union

from torch import nn
from torch.nn.utils.parametrize import is_parametrized

from ..modules import LayerAct
from .calibrate import as_calibration, calibrate_sites, calibration_batches, check_model_runs, on_model_device
from .call_sites import CallSiteActs
from .example_forward import record
from .functional_calls import discarded_in_code, find_by_tracing, find_in_code, rewrite
from .report import ConversionReport, Skip, Swap
from .sizing import size_affine
from .targets import Targets, conversion_hint, gate_types, is_activation, resolve_targets
from .tracing import HOOK_ATTRS, discarded_calls, trace
from .wrappers import refuse_scripted, strip_wrappers, unwrap

__all__ = ["convert_activations"]

logger = logging.getLogger("layeract_patch.convert")

FUNCTIONAL_MODES = ("report", "convert", "ignore")
_GATE_SLOTS = ("scale_activation", "gate")  # torchvision SqueezeExcitation, timm SE/ECA/CBAM gates


def convert_activations(model: nn.Module, to: Union[str, type, Mapping[type, Any]] = "la_silu", *,
                        filter_fn: Optional[Callable[[nn.Module, str], bool]] = None, affine: bool = False,
                        example_input: Any = None, functional: str = "report", return_report: bool = False,
                        calibrate: Any = None, **layer_kwargs: Any):
    """Replace the activations of `model` with LayerAct, in place; returns the (possibly new) root.

    Args:
        model: any nn.Module; the root itself may be an activation. Load pretrained weights before, build the
            optimizer after (with affine=True the new parameters exist only after the conversion).
        to: "la_silu" / "la_hardsilu" / "la_gelu" (or "la_silu_affine", ...), a LayerAct class, or a mapping
            {source module type: target}, which converts exactly those types, e.g.
            {nn.Hardswish: "la_hardsilu", nn.ReLU: "la_silu", nn.GELU: "la_gelu"}. Its keys must be activations
            (any in `layeract_patch.catalogue`, or a LayerAct class to re-target non-affine modules converted
            before). A name or a class converts `default_activation_types(to)`, the families its catalogue
            record names: LA-SiLU and LA-HardSiLU take ReLU, SiLU and hard-swish (and timm's kin), LA-GELU takes
            nn.GELU and timm's GELU and GELUTanh, each in its own form (nn.GELU(approximate="tanh") becomes
            LAGELU(approximate="tanh")) unless `approximate=` is given or to="la_gelu_tanh". Modules converted
            before are kept as they are; when they differ from what `to` asks for, the report says so and a
            warning is raised.
        filter_fn: `filter_fn(module, fqn) -> bool`, False keeps that module as it is. `fqn` is its name in the
            unwrapped model (DDP's `module.` and torch.compile's `_orig_mod.` removed). Functional call sites
            (functional="convert") are offered as the equivalent module, e.g. an nn.ReLU named "conv1.relu".
        affine: give each call site a learnable per-channel weight/bias (see LayerAct). Needs each site's channel
            count: from `example_input`; else from a torch.fx trace, where the module feeding the activation fixes
            it (a BatchNorm, GroupNorm or conv, seen through pooling, dropout and residual sums) and the module is
            called once; else from the structure (a timm BatchNormAct2d's act, a module right after a
            BatchNorm/conv in an nn.Sequential); else a ValueError naming the modules. A module called several
            times per forward (torchvision ResNet's `relu`) always needs `example_input`.
        example_input: a tensor (or tuple of positional args, or dict of kwargs) on the model's device, for one
            example forward, run in the model's current mode without grad; BatchNorm statistics and the RNG state
            are restored after it. It records every call site (needed for affine with reused modules), the
            functional calls, and in-place activations called only for their side effect (`self.act(y)` with
            its result discarded): LayerAct is never in place, so those would silently stop acting, and
            converting them raises a ValueError naming them. Without example_input they are found by a
            trace when one runs (affine=True, functional="convert"), else by reading the parent's forward
            source (`self.act(y)` as a statement); pass an example_input for a model you do not know.
        functional: what to do with F.relu / F.silu / F.hardswish calls that no module swap reaches:
            "report" (default) lists them in the report and warns (found by the example forward, else by
            reading each module's forward code, which sees no helper functions); "convert" rewrites them into
            modules with torch.fx first, which returns a GraphModule (the model's own methods such as timm's
            forward_features are gone, train/eval control flow is fixed at trace time; load weights before
            converting); "ignore" skips the search.
        calibrate: data to fit each affine LayerAct's weight and bias to the activation it replaces, so that a
            trained model keeps what it learned (see `convert/calibrate.py`): a tensor batch of model inputs, or
            an iterable (a list, a DataLoader) of batches or of (input, target) pairs; a few hundred samples are
            enough; `layeract_patch.Calibration(data, steps=...)` sets how hard each site is fitted. Needs an
            affine target ("la_silu_affine", "la_hardsilu_affine", or affine=True). The model runs in eval mode
            without grad while calibrating; only the new weights and biases are written, and each module's
            train/eval mode is restored. Without example_input, the first batch serves as one.
            The report's `calibration` lists each site's reconstruction error before and after.
        return_report: return `(model, ConversionReport)` instead of the model. The report is also logged at
            INFO level on the "layeract_patch.convert" logger.
        **layer_kwargs: passed to every new LayerAct, e.g. alpha=1e-5, approximate="tanh" (LA-GELU), or
            start_dim: "the layer" of every converted activation, for the whole model. 1 (the default, the
            paper's) normalizes all non-batch dims of each sample: a ViT MLP's (N, L, D) activation over L x D;
            -1 normalizes each token over D. Or affine_dim: the dim an affine target's weight acts along. By
            default start_dim (a conv map's channels), except where the activation's input comes straight from
            an nn.Linear (a transformer's or a channels-last ConvNeXt's MLP): there the last dim, the features,
            so one module serves any sequence length or image size; affine_dim=1 forces dim 1 (per token).

    Raises:
        ValueError: unknown `to`, a `to` key that is not an activation, bad options, affine without a way to size
            every site, an in-place activation whose result is discarded, or nothing to convert (the message
            names the model's class and what it found instead).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert_activations expects an nn.Module, got {type(model).__name__}")
    if functional not in FUNCTIONAL_MODES:
        raise ValueError(f"functional={functional!r} is not one of {FUNCTIONAL_MODES}")
    if filter_fn is not None and not callable(filter_fn):
        raise TypeError(f"filter_fn must be callable as filter_fn(module, fqn) -> bool, got {type(filter_fn).__name__}")
    refuse_scripted(model)
    targets = resolve_targets(to, layer_kwargs, affine)
    batches = None
    if calibrate is not None:  # prepare: everything about the data is checked before the model changes
        _require_affine(targets, to)
        calibrate = as_calibration(calibrate)
        batches = calibration_batches(calibrate.data)
        check_model_runs(model, batches)
        if example_input is None:
            example_input = on_model_device(model, batches[0])
    if targets.any_affine and isinstance(model, nn.parallel.DistributedDataParallel):
        raise ValueError("affine=True adds parameters, which DistributedDataParallel would not synchronize: convert "
                         "model.module first, then wrap it in DDP and build the optimizer")
    report = ConversionReport(model=type(model).__name__)
    inner = not is_activation(model)  # a root that is itself an activation makes no functional calls to find

    # What the model does when it runs, as far as asked. Nothing here changes the model.
    root, recorded, traced, discarded = model, None, None, {}
    if functional == "convert" and inner:
        root, discarded = rewrite(model, targets, report)
    if example_input is not None:
        watched = {id(m): m for m in root.modules() if targets.for_type(type(m)) is not None}
        recorded = record(root, watched, example_input, functional == "report" and inner, report)
        discarded = recorded.discarded
    elif functional == "report" and inner:
        find_in_code(root, report)

    # The walk and the filter, then what replaces each chosen module.
    chosen, every, kept = _choose(root, targets, filter_fn, report)
    plan = {key: targets.for_type(type(slots[0].child)) for key, slots in chosen.items()}
    if recorded is None and inner and any(t.affine for t in plan.values()):
        with contextlib.suppress(Exception):  # untraceable: only the structural rules size affine sites
            traced = trace(unwrap(root), targets.leaves())
            discarded = discarded_calls(*traced)
    if recorded is None and traced is None and inner:  # no forward ran and nothing was traced: read the code
        discarded = {**discarded_in_code(chosen), **discarded}
    _refuse_discarded(chosen, discarded)
    replacements = {key: (target.build(chosen[key][0].child), target.cls.__name__)
                    for key, target in plan.items() if not target.affine}
    attachments = []
    affine_jobs = [(key, chosen[key][0].child, target, chosen[key], every[key])
                   for key, target in plan.items() if target.affine]
    if affine_jobs:
        sized, attachments = size_affine(type(model).__name__, affine_jobs, recorded, traced)
        replacements.update(sized)

    # The swap. Nothing above touched the model, so an error leaves it as it was.
    if root is not model:
        _move_hooks(model, root, share=True)
    for key, slots in chosen.items():
        new, description = replacements[key]
        old = slots[0].child
        _move_hooks(old, new, share=len(slots) == len(every[key]))
        for slot in slots:
            if slot.parent is None:
                root = new
            else:
                slot.parent._modules[slot.name] = new
            report.swapped.append(Swap(slot.fqn, type(old).__name__, description))
    for dispatch, callers in attachments:
        for index, caller in enumerate(callers):
            dispatch.attach(caller if caller is not None else root, index)

    if batches is not None:
        sites = []  # (name, affine LayerAct, the activation it replaced): one per call site
        for key, slots in chosen.items():
            new = replacements[key][0]
            split = isinstance(new, CallSiteActs)
            sites += [(f"{slots[0].fqn}.sites.{i}" if split else slots[0].fqn, site, slots[0].child,
                       None if split or any(slot.parent is None for slot in slots) else partial(_revert, slots))
                      for i, site in enumerate(new.sites if split else [new])]
        report.calibration, unreached = calibrate_sites(root, sites, batches, calibrate)
        _report_kept(report, chosen, calibrate.max_error)
        if unreached:
            report.notes.append(f"not calibrated (no calibration forward reached them; weight 1, bias 0): "
                                f"{', '.join(unreached)}")
    _warn_not_retargeted(model, kept, targets)
    _check_something_done(model, root, report, targets, example_input is None and functional == "report" and inner)
    logger.info("%s", report)
    return (root, report) if return_report else root


def _require_affine(targets: Targets, to: Any) -> None:
    """calibrate= fits an affine LayerAct's weight and bias: a target without them is refused, naming the fix."""
    plain = [t for t in targets.by_type.values() if not t.affine]
    if plain:
        name = to.strip().lower() if isinstance(to, str) else f"{plain[0].cls.__name__}"
        fix = f"to={name + '_affine'!r} (or affine=True)" if isinstance(to, str) else "affine=True"
        raise ValueError(f"calibrate= fits the weight and bias of an affine LayerAct, and the target "
                         f"{plain[0].describe()} has none; convert with {fix}")


class _Slot(NamedTuple):
    parent: Optional[nn.Module]
    name: Optional[str]
    child: nn.Module
    fqn: str
    on_weight: bool = False  # inside a parametrization (torch.nn.utils.parametrize): it acts on a weight


def _slots(root: nn.Module) -> List[_Slot]:
    """Every (parent, attribute) holding a module, in module order; an instance under two parents gives two."""
    slots = [_Slot(None, None, root, "")]
    seen = {id(root)}

    def visit(module: nn.Module, prefix: str, on_weight: bool) -> None:
        if isinstance(module, (LayerAct, CallSiteActs)):
            return
        for name, child in module._modules.items():
            if child is not None:
                weight = on_weight or (name == "parametrizations" and is_parametrized(module))
                slots.append(_Slot(module, name, child, strip_wrappers(f"{prefix}{name}", root), weight))
                if id(child) not in seen:
                    seen.add(id(child))
                    visit(child, f"{prefix}{name}.", weight)

    visit(root, "", False)
    return slots


def _describe(module: nn.Module) -> str:
    if isinstance(module, CallSiteActs):
        return f"CallSiteActs of {_describe(module.sites[0])}"
    return type(module).__name__ + ("(affine)" if getattr(module, "affine", False) else "")


def _choose(root: nn.Module, targets: Targets, filter_fn: Optional[Callable], report: ConversionReport):
    """The slots to convert, by module instance; every slot of each instance; the converted modules that differ
    from their target and are kept. Skips go into the report."""
    gates = gate_types()
    chosen: Dict[int, List[_Slot]] = defaultdict(list)
    every: Dict[int, List[_Slot]] = defaultdict(list)
    kept: List[Tuple[str, nn.Module, str]] = []
    for slot in _slots(root):
        module = slot.child
        if slot.on_weight:  # e.g. register_parametrization(lin, "weight", nn.ReLU()): a constraint, not an activation
            if is_activation(module) or targets.for_type(type(module)) is not None:
                report.skipped.append(Skip(slot.fqn, type(module).__name__, "acts on a weight (a parametrization), "
                                                                             "never converted"))
            continue
        first_time = id(module) not in every
        every[id(module)].append(slot)
        converted = isinstance(module, (LayerAct, CallSiteActs))
        target = targets.for_type(type(module.sites[0] if isinstance(module, CallSiteActs) else module))
        name = type(module).__name__
        wanted = target or targets.requested
        if converted and (wanted is None or wanted.matches(module)):
            reason = "already LayerAct"
        elif converted and target is None:  # `to` named a target: what was converted before stays as it is
            reason = f"already {_describe(module)}, not re-targeted to {wanted.describe()}"
        elif converted and (isinstance(module, CallSiteActs) or module.affine):
            reason = (f"already {_describe(module)}, not re-targeted to {wanted.describe()}: that would drop its "
                      f"trained weight and bias")
        elif isinstance(module, gates) or (slot.name in _GATE_SLOTS and (target or is_activation(module))):
            reason = "gate, never converted"
        elif target is None:
            if not is_activation(module):
                continue
            reason = f"not a target type; {conversion_hint(type(module))}"
        elif filter_fn is not None and not filter_fn(module, slot.fqn):
            report.skipped.append(Skip(slot.fqn, name, "excluded by filter_fn"))
            continue
        else:
            chosen[id(module)].append(slot)
            continue
        if first_time:
            report.skipped.append(Skip(slot.fqn, name, reason))
            if "not re-targeted" in reason:
                kept.append((slot.fqn, module, reason))
    return chosen, every, kept


def _refuse_discarded(chosen: Dict[int, List[_Slot]], discarded: Dict[int, Any]) -> None:
    """An in-place activation called for its side effect (`self.act(y); return y`) would, as a LayerAct (never in
    place), silently stop acting: refuse, naming each and the fix."""
    found = [(name, module) for key, (name, module) in discarded.items()
             if key in chosen and getattr(module, "inplace", False) and not isinstance(module, LayerAct)]
    if found:
        names = ", ".join(f"{name} ({type(module).__name__}(inplace=True))" for name, module in found)
        raise ValueError(f"convert_activations: the model calls {names} for its in-place side effect and discards "
                         f"the result (like `self.act(y); return y`). LayerAct never works in place, so after the "
                         f"conversion that call would silently do nothing. Assign the result where the model calls "
                         f"it (`y = self.act(y)`), or keep it as it is with "
                         f"filter_fn=lambda module, fqn: fqn != {found[0][0]!r}")


def _revert(slots: List[_Slot]) -> None:
    """Put the activation a site replaced back in every place that held it (calibration's max_error)."""
    for slot in slots:
        slot.parent._modules[slot.name] = slot.child


def _report_kept(report: ConversionReport, chosen: Dict[int, List[_Slot]], max_error: Optional[float]) -> None:
    """Sites calibration reverted move from `swapped` to `skipped`, with their error."""
    kept = {c.fqn: c for c in report.calibration if c.kept}
    if not kept:
        return
    fqns = {slot.fqn: kept[slots[0].fqn] for slots in chosen.values() if slots[0].fqn in kept for slot in slots}
    report.swapped = [s for s in report.swapped if s.fqn not in fqns]
    report.skipped += [Skip(fqn, c.source, f"calibration error {c.calibrated_error:.3g} above max_error={max_error}: "
                                         f"kept") for fqn, c in fqns.items()]


def _move_hooks(old: nn.Module, new: nn.Module, share: bool) -> None:
    """Give `new` the hooks of `old`; shared dicts keep the user's RemovableHandles working."""
    for attr in HOOK_ATTRS:
        value = old.__dict__.get(attr)
        if value is not None:
            new.__dict__[attr] = value if share or isinstance(value, bool) else copy.copy(value)


def _warn_not_retargeted(model: nn.Module, kept: List[Tuple[str, nn.Module, str]], targets: Targets) -> None:
    """Converting again with another target (or affine=True) keeps what was converted, and says so."""
    if not kept:
        return
    fqn, _, reason = kept[0]
    movable = [type(m).__name__ for _, m, _ in kept if isinstance(m, LayerAct) and not m.affine]
    wanted = targets.requested
    fix = "" if not movable or wanted is None else (
        f", or re-target the non-affine ones with a mapping: to={{{movable[0]}: {wanted.cls.__name__}}}"
        + (", affine=True" if wanted.affine else ""))
    warnings.warn(f"convert_activations: {len(kept)} module(s) of {type(model).__name__} were converted before and "
                  f"are kept as they are ({fqn or '<root>'}: {reason}); convert the original model instead{fix}",
                  UserWarning, stacklevel=3)


def _check_something_done(model: nn.Module, root: nn.Module, report: ConversionReport, targets: Targets,
                          may_trace: bool) -> None:
    """Never a silent no-op: nothing converted (now or before) raises, naming the model and what it has instead;
    functional calls left behind warn."""
    converted = report.swapped or any(isinstance(m, (LayerAct, CallSiteActs)) for m in root.modules())
    if not converted and may_trace and not report.pending_functional():
        # Only here, explaining an error, is a plain swap worth a trace: it also sees helper functions' calls.
        find_by_tracing(root, targets.leaves(), report)
    pending = report.pending_functional()
    labels = ", ".join(f"{k} x{n}" for k, n in Counter(c.function for c in pending).items())
    if converted:
        if pending:
            warnings.warn(f"convert_activations: {type(model).__name__} makes {len(pending)} functional activation "
                          f"call(s) that a module swap cannot reach ({labels}, e.g. in {pending[0].fqn or '<root>'}); "
                          f"functional='convert' turns them into LayerAct (the model becomes a torch.fx "
                          f"GraphModule), functional='ignore' silences this", UserWarning, stacklevel=3)
        return
    excluded = sum(1 for s in report.skipped if s.reason == "excluded by filter_fn")
    others = {s.type: s.reason.split("; ", 1)[1] for s in report.skipped if s.reason.startswith("not a target")}
    counts = Counter(s.type for s in report.skipped if s.reason.startswith("not a target"))
    hints = []
    if excluded:
        hints.append(f"filter_fn excluded all {excluded} candidates")
    if pending:
        hints.append(f"its activations are functional calls ({labels}): pass functional='convert'")
    if others:  # each type with the catalogue's hint: GELU x12 (to='la_gelu' converts it), ...
        hints.append("it has " + ", ".join(f"{t} x{counts[t]} ({hint})" for t, hint in others.items()))
    raise ValueError(f"convert_activations found nothing to convert in {type(model).__name__}"
                     + ("; " + "; ".join(hints) if hints else
                        f": it has no {', '.join(dict.fromkeys(t.__name__ for t in targets.by_type))} modules"))
