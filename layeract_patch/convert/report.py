"""ConversionReport: what `convert_activations` swapped, skipped (and why) and which functional calls it found."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import List, NamedTuple

__all__ = ["ConversionReport", "Swap", "Skip", "FunctionalCall", "LayerCalibration"]

MAX_LISTED = 40


class Swap(NamedTuple):
    fqn: str
    old: str
    new: str


class Skip(NamedTuple):
    fqn: str
    type: str
    reason: str


class FunctionalCall(NamedTuple):
    fqn: str  # the module whose forward makes the call, or the module the call became
    function: str
    status: str  # "found ...", "now module ...", "left as is: ..."


class LayerCalibration(NamedTuple):
    """One calibrated site: relative MSE of its output against the replaced activation's, on `samples` inputs."""
    fqn: str
    source: str  # the replaced activation's class
    plain_error: float  # the plain swap (weight 1, bias 0)
    calibrated_error: float
    samples: int
    kept: bool = False  # above Calibration.max_error: the site kept the activation it had


@dataclass
class ConversionReport:
    """What `convert_activations` did: `swapped`, `skipped` (with the reason) and `functional` call sites.

    Names are fully qualified as in the unwrapped model (no `module.` / `_orig_mod.` prefix);
    "" is the root. `notes` says what could not be checked or was given up. With `calibrate=`, `calibration`
    has one LayerCalibration per call site, in forward order.
    """

    model: str
    swapped: List[Swap] = field(default_factory=list)
    skipped: List[Skip] = field(default_factory=list)
    functional: List[FunctionalCall] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    calibration: List[LayerCalibration] = field(default_factory=list)

    def pending_functional(self) -> List[FunctionalCall]:
        """Functional calls found and left unconverted."""
        return [c for c in self.functional if c.status.startswith("found")]

    def __str__(self) -> str:
        kinds = Counter(f"{s.old} -> {s.new.split('(')[0]}" for s in self.swapped)
        lines = [f"convert_activations({self.model}): {len(self.swapped)} swapped"
                 + (f" ({', '.join(f'{k}: {n}' for k, n in kinds.items())})" if kinds else "")
                 + f", {len(self.skipped)} skipped, {len(self.functional)} functional call sites"]
        sections = (("swapped", [f"{s.fqn or '<root>'}: {s.old} -> {s.new}" for s in self.swapped]),
                    ("skipped", [f"{s.fqn or '<root>'}: {s.type} ({s.reason})" for s in self.skipped]),
                    ("functional", [f"{c.fqn or '<root>'}: {c.function} ({c.status})" for c in self.functional]),
                    ("calibration", [f"{c.fqn}: {c.source} relative error {c.plain_error:.4g} (plain swap) -> "
                                     f"{c.calibrated_error:.4g} on {c.samples} samples"
                                     + (f", above max_error: kept as {c.source}" if c.kept else "")
                                     for c in self.calibration]),
                    ("notes", list(self.notes)))
        for title, entries in sections:
            if entries:
                lines.append(f"{title}:")
                lines += [f"  {e}" for e in entries[:MAX_LISTED]]
                if len(entries) > MAX_LISTED:
                    lines.append(f"  ... and {len(entries) - MAX_LISTED} more (see report.{title})")
        return "\n".join(lines)
