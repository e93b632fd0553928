"""LayerAct on CPU: the fused per-sample C kernel of layeract_cpu.c, built at first use.

The C source is compiled by the system C compiler (gcc, clang, or $CC) into a shared library
cached under ~/.cache/layeract_patch (or $LAYERACT_CACHE_DIR), named by a hash of the source,
the flags and the CPU, so a rebuild happens only when one of them changes; it is loaded with
ctypes, which needs no PyTorch headers and builds in about a second. A cached library is loaded only
when it and its folder are the user's own and writable by no one else. Without a compiler,
`available` raises and the dispatch falls back to the eager backend with one warning.

float32, bfloat16 and float16 tensors run in C (contiguous and channels_last ones in place, others
from a contiguous copy), one OpenMP thread team of torch.get_num_threads() threads, shared with
PyTorch's own. Half precision is converted to float32 in the kernel as it is read, so statistics
and arithmetic are float32 as in the eager backend; affine parameters may be float32 (as CPU
autocast keeps them) or the input's dtype, and their gradients come back in their own dtype.
float64 and empty tensors are handed to the eager backend.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..catalogue import kernel_code
from . import torch_ops
from .layout import dense_layout, sample_geometry

NAME = "cpu"
SOURCE = Path(__file__).with_name("layeract_cpu.c")
DTYPE_CODE = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}  # the element types the C code reads
# Fast-math pieces that let the compiler vectorise sums and clamps (the C source handles NaN and
# inf itself), without -ffast-math itself: on gcc < 13 that links crtfastmath.o, which would
# switch the whole process to flush-denormals-to-zero. -funroll-loops: on an Intel Xeon the kernels alone took
# up to 7% less time, in 23 of the 24 kinds, dtypes and shapes measured (docs/results/speed).
_BASE_FLAGS = ["-O3", "-shared", "-fPIC", "-fno-math-errno", "-fno-trapping-math", "-fno-signed-zeros",
               "-fassociative-math", "-ffinite-math-only", "-funroll-loops"]
# Tried in order; the last resorts give a portable or single-threaded build rather than none.
_OPTIONAL_FLAGS = (["-march=native", "-fopenmp"], ["-fopenmp"], ["-march=native"], [])
# gcc and clang tune Intel's AVX-512 cores (Skylake-SP to Sapphire Rapids) to vectorise with 256-bit registers only
# (gcc's avx256_optimal), so -march=native there left the kernel at half the width of ATen's own element-wise
# kernels, which it is compared with and which run at 512 bits there (docs/results/speed has the figures).
# gcc already vectorises at 512 bits for AMD's Zen 4 (12.2's code for it is the same byte for byte with or without
# the flag), and a CPU without AVX-512 cannot use them, where the flag would only override a tuning's own narrower
# choice (Zen 1's 128 bits); so it is asked for only where ATen's kernels run at 512 bits. A compiler that refuses it
# falls back to the plain -march=native build.
_WIDE_FLAGS = ["-march=native", "-mprefer-vector-width=512", "-fopenmp"]


def wide_vectors() -> bool:
    """Whether ATen's own CPU kernels use AVX-512 here: then the kernel is built to prefer 512-bit vectors too."""
    try:
        return torch.backends.cpu.get_cpu_capability().startswith("AVX512")
    except (AttributeError, RuntimeError):  # a torch without the query: keep the compiler's own choice
        return False


def optional_flags() -> Tuple[List[str], ...]:
    """The flag sets tried after the base flags, in order, for this CPU (part of the cache key)."""
    return ((_WIDE_FLAGS,) if wide_vectors() else ()) + _OPTIONAL_FLAGS


def cache_dir() -> Path:
    explicit = os.environ.get("LAYERACT_CACHE_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "layeract_patch"


def find_compiler() -> List[str]:
    """The compiler command: $CC (which may carry a wrapper such as ccache), else gcc, clang or cc."""
    command = shlex.split(os.environ.get("CC", ""))
    if not command:
        command = [shutil.which("gcc") or shutil.which("clang") or shutil.which("cc") or "cc"]
    if not shutil.which(command[0]):
        raise RuntimeError(f"no C compiler found (tried {' '.join(command)!r}) to build the fused kernel; "
                           f"install gcc (e.g. apt-get install gcc) or set CC")
    return command


def _cpu_id() -> str:
    """What -march=native depends on: the CPU model and its feature flags."""
    try:
        with open("/proc/cpuinfo") as info:
            lines = [line for line in info if line.startswith(("model name", "flags", "Features"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return f"{platform.machine()} {platform.processor()}"


def _compiler_version(compiler: List[str]) -> str:
    """The compiler's version as it reports it ('12.2.0'), or '' if it will not say."""
    try:
        run = subprocess.run([*compiler, "-dumpfullversion", "-dumpversion"], capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    return run.stdout.strip() if run.returncode == 0 else ""


def _compile(compiler: List[str], flags: List[str], target: Path) -> Optional[str]:
    """Compile SOURCE to `target` atomically; None on success, else the compiler's complaint.
    The library keeps the compiler and flags it was built with (build_flags() reads them back)."""
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    version = _compiler_version(compiler)
    described = f"{' '.join([os.path.basename(compiler[0]), *compiler[1:], version]).strip()}: {' '.join(flags)}"
    record = f"-DLAYERACT_BUILD_FLAGS={json.dumps(described)}"  # a C string literal (ASCII escapes)
    try:
        run = subprocess.run([*compiler, *flags, record, str(SOURCE), "-o", tmp, "-lm"], capture_output=True,
                             text=True)
        if run.returncode != 0:
            lines = (run.stderr or run.stdout).strip().splitlines()
            return lines[-1] if lines else f"exit status {run.returncode}"
        os.replace(tmp, target)
        return None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _check_private(path: Path) -> None:
    """RuntimeError unless `path` is the current user's and no one else may write it. The library is loaded into
    this process: one that another user could plant or replace, in the file or its folder, would run their code."""
    if not hasattr(os, "getuid"):  # Windows: no POSIX owners or modes to check
        return
    info = path.stat()
    if info.st_uid != os.getuid():
        why = f"owned by uid {info.st_uid}, not by you (uid {os.getuid()})"
    elif info.st_mode & 0o022:
        why = f"writable by group or others (mode {oct(info.st_mode & 0o777)})"
    else:
        return
    raise RuntimeError(f"the kernel cache {'folder' if path.is_dir() else 'file'} {path} is {why}, so the kernel is "
                       f"not loaded from it; set LAYERACT_CACHE_DIR to a folder of your own that only you can write")


def build(extra_flags: Sequence[str] = ()) -> Path:
    """The path of the compiled library, compiling it first if it is not cached yet.

    extra_flags go to the compiler after the usual ones (the tests build with -DLAYERACT_PORTABLE
    to check the conversions that machines without F16C or AVX512-BF16 use; the benchmarks time a build with
    -mprefer-vector-width=256 beside this one), and $LAYERACT_CFLAGS, if set, after those: either can
    override this module's choices.
    """
    compiler = find_compiler()
    base = _BASE_FLAGS + list(extra_flags)
    user = shlex.split(os.environ.get("LAYERACT_CFLAGS", ""))
    tiers = optional_flags()
    key = hashlib.sha256("\0".join([SOURCE.read_text(), " ".join(compiler), " ".join(base), " ".join(user),
                                    repr(tiers), _cpu_id()]).encode()).hexdigest()[:16]
    target = cache_dir() / f"layeract_cpu-{key}.so"
    try:
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as err:
        raise RuntimeError(f"cannot create the kernel cache {target.parent} ({err}); set LAYERACT_CACHE_DIR to a "
                           f"writable folder") from err
    _check_private(target.parent)
    if target.exists():
        _check_private(target)
        return target
    complaint = None
    for extra in tiers:
        complaint = _compile(compiler, _BASE_FLAGS + extra + list(extra_flags) + user, target)
        if complaint is None:
            return target
    raise RuntimeError(f"compiling {SOURCE.name} with {' '.join(compiler)} failed: {complaint}")


@functools.lru_cache(maxsize=None)
def library(extra_flags: Tuple[str, ...] = ()) -> ctypes.CDLL:
    path = build(extra_flags)
    try:
        lib = ctypes.CDLL(str(path))
    except OSError:  # a truncated or corrupt cached library (e.g. a killed copy): rebuild it once
        path.unlink(missing_ok=True)
        lib = ctypes.CDLL(str(build(extra_flags)))
    ptr, i64, f32, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
    lib.layeract_forward.argtypes = [ptr] * 6 + [i64] * 4 + [f32, i32, i32, i32]
    lib.layeract_forward.restype = None
    lib.layeract_backward.argtypes = [ptr] * 9 + [i64] * 4 + [i32, i32, i32]
    lib.layeract_backward.restype = i32
    for convert in (lib.layeract_to_float, lib.layeract_from_float):
        convert.argtypes = [ptr, ptr, i64, i32]
        convert.restype = None
    lib.layeract_build_flags.argtypes = []
    lib.layeract_build_flags.restype = ctypes.c_char_p
    return lib


def build_flags(extra_flags: Tuple[str, ...] = ()) -> str:
    """The compiler, its version and the flags the kernel library was built with, e.g.
    'gcc 12.2.0: -O3 ... -march=native -mprefer-vector-width=512 -fopenmp' (building it first if needed)."""
    return library(extra_flags).layeract_build_flags().decode()


def available(device: torch.device) -> bool:
    if torch.device(device).type != "cpu":
        return False
    library()
    return True


def _ptr(t: Optional[Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


def _param(p: Optional[Tensor]) -> Optional[Tensor]:
    """The parameter as the kernel reads it: float32, contiguous (a no-op for autocast's float32 parameters)."""
    return None if p is None else p.detach().to(torch.float32).contiguous()


def forward(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], kind: str, alpha: float,
            start_dim: int, lib: Optional[ctypes.CDLL] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """lib: a library() built with other flags (the benchmarks compare builds); default, this machine's."""
    dtype = DTYPE_CODE.get(x.dtype)
    if dtype is None or not x.is_cpu or x.numel() == 0:
        return torch_ops.forward(x, weight, bias, kind, alpha, start_dim)
    xd, fmt = dense_layout(x, start_dim)
    rows, length, channels, inner = sample_geometry(xd, start_dim, fmt)
    out = torch.empty_like(xd)
    # two allocations, not views of one: a custom op's outputs may not alias each other
    mean = torch.empty(rows, dtype=torch.float32)
    rstd = torch.empty(rows, dtype=torch.float32)
    weight, bias = _param(weight), _param(bias)
    (lib or library()).layeract_forward(xd.data_ptr(), out.data_ptr(), mean.data_ptr(), rstd.data_ptr(),
                                        _ptr(weight), _ptr(bias), rows, length, channels, inner, alpha,
                                        kernel_code(kind), dtype, torch.get_num_threads())
    return out, mean, rstd


def backward(grad: Tensor, x: Tensor, mean: Tensor, rstd: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
             kind: str, start_dim: int, lib: Optional[ctypes.CDLL] = None
             ) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    dtype = DTYPE_CODE.get(x.dtype)
    if dtype is None or not x.is_cpu or x.numel() == 0:
        return torch_ops.backward(grad, x, mean, rstd, weight, bias, kind, start_dim)
    xd, fmt = dense_layout(x, start_dim)
    g = (grad if grad.dtype == x.dtype else grad.to(x.dtype)).contiguous(memory_format=fmt or torch.contiguous_format)
    rows, length, channels, inner = sample_geometry(xd, start_dim, fmt)
    dx = torch.empty_like(xd)
    w, b = _param(weight), _param(bias)
    dweight = dbias = None
    if weight is not None:
        dweight = torch.empty(channels, dtype=torch.float32)
        dbias = torch.empty(channels, dtype=torch.float32)
    status = (lib or library()).layeract_backward(g.data_ptr(), xd.data_ptr(), mean.data_ptr(), rstd.data_ptr(),
                                                  _ptr(w), _ptr(b), dx.data_ptr(), _ptr(dweight), _ptr(dbias), rows,
                                                  length, channels, inner, kernel_code(kind), dtype,
                                                  torch.get_num_threads())
    if status != 0:
        raise MemoryError("layeract_patch: the CPU kernel could not allocate its gradient buffers")
    if weight is not None:
        dweight, dbias = dweight.to(weight.dtype), dbias.to(bias.dtype)
    return dx, dweight, dbias
