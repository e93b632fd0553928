"""The corruptions' names, groups and severities, and the check of a (name, severity): what both the
generator (`corrupt`) and the reader of the official files (`files.load_cifar_c`) agree on."""
from __future__ import annotations

import numbers
from typing import Dict, Tuple

STANDARD = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
            "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
            "jpeg_compression")
EXTRA = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
CORRUPTIONS = STANDARD + EXTRA
GROUPS: Dict[str, Tuple[str, ...]] = {
    "Total": CORRUPTIONS,
    "Noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "Blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
    "Digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression"),
    "Weather": ("snow", "frost", "fog", "brightness"),
    "Extra": EXTRA,
}
SEVERITIES = (1, 2, 3, 4, 5)


def check_name_and_severity(name, severity) -> None:
    if not isinstance(name, str) or name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; valid names: {', '.join(CORRUPTIONS)}")
    if isinstance(severity, bool) or not isinstance(severity, numbers.Integral) or severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES} (an int), got {severity!r}")
