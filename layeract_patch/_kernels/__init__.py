"""Choosing the LayerAct implementation that runs: one dispatch for every fast path.

Backends, each checked against `_math.la_reference` in the tests:
  "torch"  eager PyTorch ops; any device (the fallback)
  "cpu"    a fused per-sample C kernel, compiled at first use and cached (CPU tensors)
  "triton" Triton kernels (CUDA tensors)
"auto" (the default) takes the fast path of the tensor's device when it can be had and
falls back to "torch" with one warning when it cannot. Force one with `set_backend(name)`
or the environment variable LAYERACT_BACKEND. Every backend runs behind the op of `op.py`.
"""
from __future__ import annotations

import importlib
import os
import warnings
from types import ModuleType
from typing import Dict, Optional, Tuple, Union

import torch

BACKENDS = ("auto", "torch", "cpu", "triton")
ENV_VAR = "LAYERACT_BACKEND"
_FAST_PATH = {"cpu": "cpu", "cuda": "triton"}
_MODULE_OF = {"torch": "torch_ops", "cpu": "cpu_kernel", "triton": "triton_kernel"}
_forced: Optional[str] = None
_modules: Dict[str, Optional[ModuleType]] = {}  # "name:device" -> the backend, or None where it cannot run
_chosen: Dict[Tuple[Optional[str], Optional[str], str], ModuleType] = {}  # (forced, env, device) -> backend


def _check_name(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown LayerAct backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return name


def set_backend(name: str = "auto") -> None:
    """Force a backend for all LayerAct calls ("auto" restores the default: LAYERACT_BACKEND, else auto)."""
    global _forced
    _forced = None if _check_name(name) == "auto" else name


def _requested(env: Optional[str]) -> str:
    if _forced is not None:
        return _forced
    name = (env or "").strip().lower() or "auto"
    if name not in BACKENDS:
        raise ValueError(f"the environment variable {ENV_VAR}={env!r} names no LayerAct backend; set it to one of "
                         f"{', '.join(BACKENDS)} (or unset it for 'auto')")
    return name


def _load(name: str, device: torch.device) -> Optional[ModuleType]:
    """The backend module if it works on this device, else None (with one warning saying why)."""
    key = f"{name}:{device.type}"
    if key not in _modules:
        module, why = None, None
        try:
            module = importlib.import_module(f".{_MODULE_OF[name]}", __name__)
            if not module.available(device):
                module, why = None, f"it does not run on {device.type} tensors"
        except Exception as err:  # a missing compiler or Triton: fall back, say why once
            module, why = None, f"{type(err).__name__}: {err}"
        if module is None and name != "torch":
            warnings.warn(f"layeract_patch: the {name!r} backend is unavailable ({why}); "
                          f"using the slower eager 'torch' backend", RuntimeWarning, stacklevel=3)
        _modules[key] = module
    return _modules[key]


# select() runs on every LayerAct call. os.environ.get costs microseconds there (it encodes the key and,
# when the variable is unset, raises and catches a KeyError), more than a small activation's kernel, so
# the variable is read from os.environ's own dict, which os.environ[...] = and monkeypatch.setenv update.
_ENVIRON = getattr(os.environ, "_data", None)
_ENV_KEY = os.environ.encodekey(ENV_VAR) if _ENVIRON is not None and hasattr(os.environ, "encodekey") else None


def _env_value() -> Optional[str]:
    if _ENV_KEY is None:
        return os.environ.get(ENV_VAR)
    value = _ENVIRON.get(_ENV_KEY)
    return value if value is None or isinstance(value, str) else os.environ.decodevalue(value)


def select(x: torch.Tensor) -> ModuleType:
    # one dict lookup once the choice for this setting and device is made
    env = _env_value()
    key = (_forced, env, "cpu" if x.is_cpu else x.device.type)  # is_cpu: no torch.device object made
    backend_module = _chosen.get(key)
    if backend_module is None:
        requested = _requested(env)
        name = _FAST_PATH.get(x.device.type, "torch") if requested == "auto" else requested
        backend_module = _chosen[key] = _load(name, x.device) or _load("torch", x.device)
    return backend_module


def backend(device: Union[str, torch.device] = "cpu") -> str:
    """The name of the backend that LayerAct calls on `device` use now."""
    return select(torch.empty(0, device=device)).NAME
