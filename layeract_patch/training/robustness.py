"""Robustness to corruptions (the LayerAct AAAI-2025 paper's main claim): accuracy under the 19 CIFAR-C
corruptions, per severity, grouped as the paper's appendix tables group them.

    results = evaluate_corruptions(model, images, labels, mean, std)   # CIFAR test set, uint8 NCHW
    print(format_corruption_table(results))

The corrupted images are generated on the device (`layeract_patch.corruptions.corrupt`) or read from
the official CIFAR-10-C / CIFAR-100-C files (`corruptions_dir`). The model sees what it saw in
training: images / 255, then (x - mean) / std per channel, in eval mode without gradients.

Group means (Total / Noise / Blur / Digital / Weather / Extra) average top-1 over the group's
corruptions and the evaluated severities (1-5 in the paper); a group is reported only when all of its
corruptions were evaluated. With `baseline` (another result of this function, e.g. the ReLU model), the
corruption error of corruption c is CE_c = 100 * sum_s err(c, s) / sum_s err_baseline(c, s) (err = 100 -
top-1, summed over the evaluated severities) and mCE is the mean CE over the evaluated corruptions:
Hendrycks & Dietterich's mCE with the baseline model in AlexNet's place, so below 100 = more robust.
"""
from __future__ import annotations

import time
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from ..corruptions import CORRUPTIONS, GROUPS, SEVERITIES, check_images, check_name_and_severity, corrupt
from ..corruptions.files import check_labels, cifar_c_paths, load_cifar_c
from .metrics import evaluate
from .progress import duration

__all__ = ["evaluate_corruptions", "format_corruption_table", "corruption_errors", "check_baseline"]

# Corruptions are generated this many images at a time, chunk k seeded with seed * 2**20 + k, so the
# images do not depend on batch_size (only on seed, the image order and the device).
CORRUPTION_CHUNK = 1000


def _check_inputs(images, labels, mean, std, corruptions, severities, batch_size, seed, corruptions_dir,
                  baseline):
    check_images(images)
    if not isinstance(labels, Tensor) or labels.dim() != 1 or len(labels) != len(images) \
            or labels.dtype.is_floating_point:
        raise ValueError(f"labels must be a 1-D integer tensor with one label per image ({len(images)}), got "
                         f"{type(labels).__name__} {getattr(labels, 'shape', '')}")
    for what, values in (("mean", mean), ("std", std)):
        if len(values) != 3:
            raise ValueError(f"{what} must hold 3 per-channel values (RGB), got {values!r}")
    if min(float(s) for s in std) <= 0:
        raise ValueError(f"std must be positive, got {std!r}")
    if isinstance(corruptions, str) or not corruptions:
        raise ValueError(f"corruptions must be a non-empty list of names from {CORRUPTIONS}, got {corruptions!r}")
    if isinstance(severities, int) or not severities:
        raise ValueError(f"severities must be a non-empty list from {SEVERITIES}, got {severities!r}")
    for name in corruptions:
        for severity in severities:
            check_name_and_severity(name, severity)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 44:  # chunk seeds < 2**64
        raise ValueError(f"seed must be an int from 0 to 2**44 - 1, got {seed!r}")
    if corruptions_dir is not None:
        for name in corruptions:
            cifar_c_paths(corruptions_dir, name)
        check_labels(corruptions_dir)
    if baseline is not None:
        check_baseline(baseline, corruptions, severities)


def check_baseline(baseline, corruptions, severities):
    table = baseline.get("corruptions", {}) if isinstance(baseline, dict) else {}
    missing = [f"{n}/{s}" for n in corruptions for s in severities if str(s) not in table.get(n, {})]
    if missing:
        raise ValueError(f"baseline lacks results for {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}; "
                         f"pass a result of evaluate_corruptions over the same corruptions and severities")
    for n in corruptions:
        if sum(100.0 - table[n][str(s)]["top1"] for s in severities) <= 0:
            raise ValueError(f"baseline makes no errors on {n}, so a corruption error relative to it is undefined")


def _score(model, images, labels, mean, std, batch_size, device, amp, channels_last) -> dict:
    """top-1, loss and per-sample loss spread of uint8 `images` (any device), scored as the training's
    test evaluation scores (`metrics.evaluate`)."""
    found = evaluate(model, images.to(device), labels.to(device), mean, std, batch_size=batch_size, amp=amp,
                     channels_last=channels_last)
    return {"top1": found["top1"], "loss": found["loss"], "loss_std": found["loss_std"]}


def corruption_errors(results: dict, baseline: dict) -> dict:
    """CE per corruption (percent of the baseline's summed error) and their mean, 'mCE'."""
    table, base = results["corruptions"], baseline["corruptions"]
    out = {}
    for name, per_severity in table.items():
        err = sum(100.0 - r["top1"] for r in per_severity.values())
        base_err = sum(100.0 - base[name][s]["top1"] for s in per_severity)
        out[name] = 100.0 * err / base_err
    out["mCE"] = sum(out.values()) / len(table)
    return out


def evaluate_corruptions(model: nn.Module, images: Tensor, labels: Tensor, mean: Sequence[float],
                         std: Sequence[float], *, corruptions: Sequence[str] = CORRUPTIONS,
                         severities: Sequence[int] = SEVERITIES, corruptions_dir=None, batch_size: int = 1000,
                         device=None, seed: int = 0, baseline: Optional[dict] = None, amp: bool = False,
                         channels_last: bool = False, progress: Optional[Callable[[str], None]] = None) -> dict:
    """Top-1 (percent), mean cross-entropy and per-sample loss spread of `model` on the clean `images`
    (uint8 (N, 3, H, W)) and on every (corruption, severity); group means; CE and mCE against `baseline`
    when given. `amp` (bfloat16 autocast) and `channels_last` score as the training's evaluation does with
    the same flags. `progress`, when given, gets a line after each corruption (a full evaluation takes
    minutes). Returns a JSON-ready dict (severities are string keys, as JSON would make them)."""
    corruptions = tuple(dict.fromkeys(corruptions)) if not isinstance(corruptions, str) else corruptions
    severities = tuple(sorted(set(severities))) if not isinstance(severities, int) else severities
    _check_inputs(images, labels, mean, std, corruptions, severities, batch_size, seed, corruptions_dir, baseline)
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else images.device
    device = torch.device(device)
    mean, std = [float(m) for m in mean], [float(s) for s in std]
    labels = labels.long()

    def score(bad: Tensor, bad_labels: Tensor) -> dict:  # in eval mode without gradients, mode restored after
        return _score(model, bad, bad_labels, mean, std, batch_size, device, amp, channels_last)

    results = {
        "clean": score(images, labels),
        "corruptions": {},
        "source": str(corruptions_dir) if corruptions_dir is not None else "generated",
        "seed": seed,
        "severities": list(severities),
        "amp": bool(amp),
    }
    source_images = images.to(device) if corruptions_dir is None else None
    start = time.perf_counter()
    for number, name in enumerate(corruptions, 1):
        results["corruptions"][name] = {}
        for severity in severities:
            if corruptions_dir is not None:
                bad, bad_labels = load_cifar_c(corruptions_dir, name, severity)
            else:
                bad_labels = labels
                bad = torch.cat([corrupt(source_images[start:start + CORRUPTION_CHUNK], name, severity,
                                         seed=seed * 2 ** 20 + k)
                                 for k, start in enumerate(range(0, len(images), CORRUPTION_CHUNK))])
            results["corruptions"][name][str(severity)] = score(bad, bad_labels)
        if progress is not None:
            cells = " ".join(f"{r['top1']:.1f}" for r in results["corruptions"][name].values())
            elapsed = time.perf_counter() - start
            left = f", ETA {duration(elapsed / number * (len(corruptions) - number))}" if number < len(corruptions) \
                else ""
            progress(f"corruption {number}/{len(corruptions)} {name}: top-1 {cells} (severities "
                     f"{' '.join(map(str, severities))}; {duration(elapsed)} elapsed{left})")

    table = results["corruptions"]
    results["corruption_mean"] = {n: sum(r["top1"] for r in table[n].values()) / len(table[n]) for n in table}
    results["groups"] = {g: sum(results["corruption_mean"][n] for n in members) / len(members)
                         for g, members in GROUPS.items() if all(n in table for n in members)}
    if baseline is not None:
        results["mce"] = corruption_errors(results, baseline)
    return results


def format_corruption_table(results: dict) -> str:
    """Markdown tables: top-1 per corruption and severity (with CE when a baseline was given), then
    clean accuracy, the group means and mCE."""
    severities = [str(s) for s in results["severities"]]
    has_ce = "mce" in results
    head = "| corruption | " + " | ".join(f"s{s}" for s in severities) + " | mean |" + (" CE |" if has_ce else "")
    rule = "|---|" + "---:|" * (len(severities) + 1) + ("---:|" if has_ce else "")
    lines = [head, rule]
    for name, per in results["corruptions"].items():
        cells = " | ".join(f"{per[s]['top1']:.2f}" for s in severities)
        ce = f" {results['mce'][name]:.1f} |" if has_ce else ""
        lines.append(f"| {name} | {cells} | {results['corruption_mean'][name]:.2f} |{ce}")
    # With no complete group (a subset of the corruptions) the summary shows their plain mean instead.
    means = results["corruption_mean"]
    groups = results["groups"] or {f"mean of {len(means)}": sum(means.values()) / len(means)}
    lines += ["", "| clean | " + " | ".join(groups) + " |" + (" mCE |" if has_ce else ""),
              "|---:|" + "---:|" * len(groups) + ("---:|" if has_ce else ""),
              f"| {results['clean']['top1']:.2f} | " + " | ".join(f"{v:.2f}" for v in groups.values()) + " |"
              + (f" {results['mce']['mCE']:.1f} |" if has_ce else "")]
    return "\n".join(lines)
