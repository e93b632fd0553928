"""Calibrated conversion: fit each affine LayerAct to the activation it replaces, so a trained model keeps working.

A trained network's activation is a = y * s(y). LayerAct's scale sees the layer-normalized input instead, and
per sample y = std_s * n + mean_s exactly, so an affine LayerAct with weight ~ std and bias ~ mean reproduces a
smooth activation up to how much the per-sample statistics vary; a steep gate (both times a large gain)
approximates ReLU's step. Calibration finds those weights and biases, as post-training quantization calibrates
its observers (prepare -> calibrate -> convert):

    1. prepare   the calibration batches are checked and the original model is run on the first one, before
                 anything changes (`calibration_batches`, `check_model_runs`);
    2. convert   `convert_activations` swaps in affine LayerActs sized by that first batch;
    3. calibrate layer by layer in forward order (`calibrate_sites`): the inputs a site sees in the model as
                 converted so far are cached, the replaced activation's output on them is the target, and the
                 site's weight and bias start from a per-channel regression of y on n (times the gain that fits
                 best) and are refined by Adam on the relative reconstruction error. Later sites thus see, and
                 correct for, the small errors of earlier ones, as layer-wise post-training quantization does.

Nothing but the LayerAct weights and biases changes: the model runs in eval mode under no_grad (batch norm uses
its running statistics), each module's train/eval flag is restored afterwards, and no other parameter or
buffer is written.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .._eval_mode import evaluating
from ..functional import affine_dim_of, layer_act, layer_stats
from ..modules import LayerAct
from .report import LayerCalibration
from .wrappers import unwrap

__all__ = ["Calibration", "LayerCalibration", "calibration_batches", "check_model_runs", "calibrate_sites",
           "on_model_device"]

# The closed-form start is scaled by the gain that fits best: 1 for a source of the target's own family (SiLU
# -> LA-SiLU), ~1.5 across the smooth and hard families, large for ReLU's step.
GAINS = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 48.0, 64.0)
LEARNING_RATE = 0.02  # relative to the start's mean |weight|: a ReLU site's steep start needs larger steps


@dataclass(frozen=True)
class Calibration:
    """`convert_activations(..., calibrate=Calibration(data, steps=...))`: the data and how hard to fit.

    data: as `calibrate=` takes it (a tensor batch, or an iterable of batches or (input, target) pairs).
    steps: Adam steps per site after the closed-form start (0: the start alone).
    batch_size: samples per Adam step.
    search_gain: scale the closed-form start by the gain that fits best (needed for ReLU sources); False
        keeps the plain regression.
    max_error: a site whose relative error is still above this after the fit keeps the activation it had
        (listed in the report's `skipped`, its error in `calibration`), so the rest of the model does not pay
        for the few sites an affine LayerAct cannot reproduce: typically activations on 1x1 or 2x2 maps, where
        "the layer" is a pixel's channels and each sample's statistics vary most (an ImageNet network at 32 px).
        None (default) converts every site.
    """
    data: Any
    steps: int = 200
    batch_size: int = 64
    search_gain: bool = True
    max_error: Optional[float] = None

    def __post_init__(self) -> None:
        for name, low in (("steps", 0), ("batch_size", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"Calibration({name}={value!r}): give an integer >= {low}")
        bound = self.max_error
        if bound is not None and (isinstance(bound, bool) or not isinstance(bound, (int, float))
                                  or not math.isfinite(bound) or bound <= 0):
            raise ValueError(f"Calibration(max_error={bound!r}): give a relative error > 0 (e.g. 0.1), or None to "
                             f"convert every site")


class _Site(NamedTuple):
    fqn: str
    module: LayerAct   # the affine LayerAct to fit
    source: nn.Module  # the activation it replaced
    revert: Optional[Callable[[], None]] = None  # puts `source` back in the model (None: the site cannot be kept)


def as_calibration(calibrate: Any) -> Calibration:
    """`calibrate=` as a Calibration: data alone gets the default fit."""
    return calibrate if isinstance(calibrate, Calibration) else Calibration(calibrate)


def calibration_batches(data: Any) -> List[Tensor]:
    """The calibration data as a list of input batches; one ValueError/TypeError for each bad case.

    `data`: a tensor batch of model inputs, or an iterable (a list, a DataLoader) of such batches or of
    `(input, target, ...)` tuples. Every batch must be a floating-point tensor with a batch dim, finite.
    """
    if isinstance(data, Tensor):
        items: Iterable[Any] = [data]
    elif isinstance(data, (str, bytes)) or not hasattr(data, "__iter__"):
        raise TypeError(f"calibrate= takes a tensor batch of model inputs, or an iterable (a list, a DataLoader) of "
                        f"batches or of (input, target) pairs; got {type(data).__name__}")
    else:
        items = data
    batches = []
    for index, item in enumerate(items):
        batch = item[0] if isinstance(item, (tuple, list)) and item else item
        if not isinstance(batch, Tensor):
            raise TypeError(f"calibrate=: item {index} is {type(batch).__name__}, not a tensor of model inputs; give "
                            f"tensors, or (input, target) pairs as a DataLoader yields them")
        if batch.dim() < 1 or batch.shape[0] == 0:
            raise ValueError(f"calibrate=: batch {index} has shape {tuple(batch.shape)}, with no samples; give "
                             f"batches of model inputs with the batch dim first")
        if not batch.is_floating_point():
            raise TypeError(f"calibrate=: batch {index} has dtype {batch.dtype}; give the model's float inputs (e.g. "
                            f"normalized images), as it receives them in training")
        if not bool(torch.isfinite(batch).all()):
            raise ValueError(f"calibrate=: batch {index} holds NaN or infinite values; calibrate on real inputs")
        batches.append(batch)
    if not batches:
        raise ValueError("calibrate= got no data (an empty iterable); give at least one batch of model inputs "
                         "(a few hundred samples is enough)")
    return batches


def _device_of(model: nn.Module) -> Optional[torch.device]:
    first = next(iter(model.parameters()), next(iter(model.buffers()), None))
    return None if first is None else first.device


def on_model_device(model: nn.Module, batch: Tensor) -> Tensor:
    """`batch` on the device of the model's first parameter (or buffer); as it is for a model without either."""
    device = _device_of(model)
    return batch if device is None else batch.to(device)


def check_model_runs(model: nn.Module, batches: Sequence[Tensor]) -> None:
    """Run the original model on the first batch (eval mode, no grad), so data it cannot take fails before the
    model is converted. Buffers are not written in eval mode."""
    inner = unwrap(model)
    batch = on_model_device(inner, batches[0][:2])
    try:
        with evaluating(inner):
            inner(batch)
    except Exception as error:  # any failure of the user's model on the data: say it is the data
        raise ValueError(f"calibrate=: {type(model).__name__} cannot run on the calibration data (a batch of shape "
                         f"{tuple(batches[0].shape)}, dtype {batches[0].dtype}): {type(error).__name__}: {error}; "
                         f"give batches of the model's own inputs") from error


class _Stop(Exception):
    """Raised by a hook to end a forward once the site being calibrated has seen its input."""


def _forward_order(model: nn.Module, sites: List[_Site], batch: Tensor) -> List[_Site]:
    """The sites in the order a forward calls them first (sites never called are left out, and reported)."""
    order: Dict[int, int] = {}

    def seen(module: nn.Module, args: Any) -> None:  # a pre-hook's return value would replace the input
        order.setdefault(id(module), len(order))

    handles = [site.module.register_forward_pre_hook(seen) for site in sites]
    try:
        model(batch)
    finally:
        for handle in handles:
            handle.remove()
    return sorted((s for s in sites if id(s.module) in order), key=lambda s: order[id(s.module)])


def _site_inputs(model: nn.Module, site: _Site, batches: Sequence[Tensor]) -> Tensor:
    """Every input the site sees over the calibration batches (its first call per forward), stacked."""
    seen: List[Tensor] = []

    def grab(module: nn.Module, args: Tuple[Any, ...]) -> None:
        seen.append(args[0].detach().float())  # float32: the fit's arithmetic, whatever the model's dtype
        raise _Stop

    handle = site.module.register_forward_pre_hook(grab)
    try:
        for batch in batches:
            try:
                model(on_model_device(model, batch))
            except _Stop:
                pass
    finally:
        handle.remove()
    return torch.cat(seen)


def _source_output(source: nn.Module, x: Tensor) -> Tensor:
    # the replaced module itself is the definition of its function; in-place ones must not touch the cache
    return source(x.clone() if getattr(source, "inplace", False) else x).float()


def relative_error(output: Tensor, target: Tensor) -> float:
    """Relative MSE: sum((output - target)^2) / sum(target^2) (0 when both are zero)."""
    scale = float(target.pow(2).sum())
    err = float((output - target).pow(2).sum())
    return err / scale if scale > 0 else (0.0 if err == 0 else math.inf)


def _closed_form(x: Tensor, start_dim: int, channel_dim: int, alpha: float) -> Tuple[Tensor, Tensor]:
    """Per channel, the least-squares line y ~ w * n + b: y = std_s * n + mean_s holds exactly per sample, so
    this is the channel's typical scale and offset (weighted over samples)."""
    mean, rstd = layer_stats(x, start_dim, alpha)
    n = (x - mean) * rstd
    channel_last = x.movedim(channel_dim, -1).reshape(-1, x.shape[channel_dim])
    n_last = n.movedim(channel_dim, -1).reshape(-1, x.shape[channel_dim])
    n_mean, y_mean = n_last.mean(0), channel_last.mean(0)
    n_var = (n_last - n_mean).pow(2).mean(0)
    cov = ((n_last - n_mean) * (channel_last - y_mean)).mean(0)
    weight = torch.where(n_var > 1e-12, cov / n_var.clamp_min(1e-12), torch.ones_like(cov))
    return weight, y_mean - weight * n_mean


def _fit(site: _Site, x: Tensor, target: Tensor, how: Calibration) -> Tuple[float, float]:
    """Set the site's weight and bias to the best of: the plain swap, the scaled closed form, its Adam refinement.
    Returns (plain error, calibrated error)."""
    module = site.module
    kind, alpha, start_dim, affine_dim = module.kind, module.alpha, module.start_dim % x.dim(), module.affine_dim
    channel_dim = affine_dim_of(x.dim(), start_dim, affine_dim)

    def error(weight: Optional[Tensor], bias: Optional[Tensor], rows: slice = slice(None)) -> float:
        return relative_error(layer_act(x[rows], kind, alpha, weight, bias, start_dim, affine_dim), target[rows])

    ones = torch.ones(x.shape[channel_dim])
    plain = error(None, None)
    weight0, bias0 = _closed_form(x, start_dim, channel_dim, alpha)
    probe = slice(0, min(len(x), 256))
    gain = min(GAINS, key=lambda g: error(weight0 * g, bias0 * g, probe)) if how.search_gain else 1.0
    start = (error(weight0 * gain, bias0 * gain), weight0 * gain, bias0 * gain)
    candidates = [(plain, ones, torch.zeros_like(ones)), start]

    weight = (weight0 * gain).clone().requires_grad_(True)
    bias = (bias0 * gain).clone().requires_grad_(True)
    lr = LEARNING_RATE * max(float(weight0.abs().mean() * gain), 1.0)
    optimizer = torch.optim.Adam([weight, bias], lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(how.steps, 1))
    generator = torch.Generator().manual_seed(0)  # the same fit every time for the same data
    with torch.enable_grad():
        for _ in range(how.steps):
            rows = torch.randint(len(x), (min(how.batch_size, len(x)),), generator=generator)
            t = target[rows]
            output = layer_act(x[rows], kind, alpha, weight, bias, start_dim, affine_dim)
            loss = (output - t).pow(2).sum() / t.pow(2).sum().clamp_min(1e-30)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    if how.steps:
        weight, bias = weight.detach(), bias.detach()
        candidates.append((error(weight, bias), weight, bias))
    best, weight, bias = min(candidates, key=lambda c: c[0])
    module.weight.copy_(weight.to(module.weight.dtype))
    module.bias.copy_(bias.to(module.bias.dtype))
    return plain, best


def calibrate_sites(model: nn.Module, sites: List[Tuple[Any, ...]], batches: Sequence[Tensor],
                    how: Calibration, progress: Optional[Callable[[str], None]] = None
                    ) -> Tuple[List[LayerCalibration], List[str]]:
    """Fit every (fqn, affine LayerAct, replaced activation[, revert]) site, in forward order; returns a record per
    site and the names of sites no forward reached (left at weight 1, bias 0). A site above `how.max_error` is
    reverted at once, so the sites after it are fitted to the model as it will be."""
    inner = unwrap(model)
    todo = [_Site(*site) for site in sites]
    records: List[LayerCalibration] = []
    with evaluating(inner):
        ordered = _forward_order(inner, todo, on_model_device(inner, batches[0]))
        for site in ordered:
            x = _site_inputs(inner, site, batches)
            target = torch.cat([_source_output(site.source, chunk) for chunk in x.split(256)])
            plain, calibrated = _fit(site, x, target, how)
            kept = how.max_error is not None and calibrated > how.max_error and site.revert is not None
            if kept:
                site.revert()
            records.append(LayerCalibration(site.fqn, type(site.source).__name__, plain, calibrated, len(x), kept))
            if progress is not None:
                progress(f"calibrated {site.fqn}: relative error {plain:.4f} -> {calibrated:.4f}"
                         + (f", above max_error: kept as {type(site.source).__name__}" if kept else ""))
    reached = {id(s.module) for s in ordered}
    return records, [s.fqn for s in todo if id(s.module) not in reached]
