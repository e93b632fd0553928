"""Timing and memory measurements shared by the benchmarks.

Every comparison is made in one process with the measurements interleaved (each round runs every
case once, in a shuffled order) and summarised by the median, so a busy machine slows all cases
alike and the ratios stay meaningful even when the absolute times do not.
"""
from __future__ import annotations

import contextlib
import ctypes
import platform
import random
import statistics
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch


def interleaved_medians(cases: Dict[str, Callable[[], object]], rounds: int, warmup: int = 2,
                        sync: Optional[Callable[[], None]] = None, seed: int = 0,
                        clock: Callable[[], float] = time.perf_counter) -> Dict[str, float]:
    """Median seconds per call of each case over `rounds` interleaved rounds.

    clock=time.thread_time counts only the CPU time of the calling thread, which ignores the
    time other jobs hold the core; it is a fair clock only when all work runs on this thread
    (torch.set_num_threads(1)).
    """
    sync = sync or (lambda: None)
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    order = list(cases)
    rng = random.Random(seed)
    times = {name: [] for name in cases}
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            sync()
            start = clock()
            cases[name]()
            sync()
            times[name].append(clock() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def repeated_ratios(cases: Dict[str, Callable[[], object]], baseline: str, rounds: int, repeats: int,
                    sync: Optional[Callable[[], None]] = None,
                    clock: Callable[[], float] = time.perf_counter,
                    against: Optional[Dict[str, str]] = None) -> Dict[str, Tuple[float, float, float, float]]:
    """name -> (median ratio to `baseline`, lowest, highest, median seconds) over `repeats` repetitions.

    Each repetition is one `interleaved_medians` measurement (with its own shuffle order), so the
    range says how far one repetition's ratio can stray on this machine. `against` gives cases a
    baseline of their own (case -> baseline case): their ratio is taken within each repetition, as
    the others' are; dividing two cases' median ratios would pair up different repetitions.
    """
    against = against or {}
    unknown = sorted((set(against) | set(against.values()) | {baseline}) - set(cases))
    if unknown:
        raise ValueError(f"repeated_ratios: {unknown} are not among the cases {sorted(cases)}")
    ratios: Dict[str, List[float]] = {name: [] for name in cases}
    seconds: Dict[str, List[float]] = {name: [] for name in cases}
    for repeat in range(repeats):
        times = interleaved_medians(cases, rounds, warmup=1 if repeat == 0 else 0, sync=sync, seed=repeat,
                                    clock=clock)
        for name, value in times.items():
            ratios[name].append(value / times[against.get(name, baseline)])
            seconds[name].append(value)
    return {name: (statistics.median(r), min(r), max(r), statistics.median(seconds[name]))
            for name, r in ratios.items()}


def rounds_for(cases: Dict[str, Callable[[], object]], budget_s: float, lo: int = 5, hi: int = 50,
               sync: Optional[Callable[[], None]] = None) -> int:
    """How many interleaved rounds fit in `budget_s`, judged from one timed round (which also warms up)."""
    sync = sync or (lambda: None)
    sync()
    start = time.perf_counter()
    for fn in cases.values():
        fn()
    sync()
    per_round = time.perf_counter() - start
    return max(lo, min(hi, int(budget_s / max(per_round, 1e-9))))


def sgd_step(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, autocast_dtype=None,
             before: Optional[Callable[[], None]] = None) -> Callable[[], None]:
    """One training step of `model` (SGD, momentum 0.9, cross-entropy), under CPU autocast to `autocast_dtype` when
    given; `before` runs first in every step (e.g. a backend choice that must hold for this case only)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        if before is not None:
            before()
        optimizer.zero_grad(set_to_none=True)
        precision = (torch.autocast("cpu", dtype=autocast_dtype) if autocast_dtype is not None
                     else contextlib.nullcontext())
        with precision:
            loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
    return step


def saved_bytes(fn: Callable[[], torch.Tensor]) -> int:
    """Bytes of the distinct storages autograd keeps for backward while `fn()` builds its graph."""
    storages: Dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(storages.values())


def pin_heap() -> bool:
    """Keep glibc from returning freed tensor memory to the OS (True if done).

    By default glibc trims the heap or unmaps large blocks depending on the exact order of
    earlier allocations, so a case may page-fault its output afresh on every call, or not,
    by luck of layout; those faults can cost more than the kernel. With the heap kept (as
    jemalloc or tcmalloc, which PyTorch recommends for CPU work, would), every case reuses
    memory and the ratios compare computation. Tensors over 32 MiB are still mapped afresh.
    """
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, (1 << 31) - 1))


# the CPU features that decide how the kernels are built and which of ATen's kernels run
_ISA = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile")


def cpu_name() -> str:
    """The CPU's model name, family and model numbers and its wide-vector features, from /proc/cpuinfo:
    'Intel(R) Xeon(R) Processor (family 6 model 167; avx2 avx512f avx512_bf16 avx512_fp16 amx_tile)'.
    (A virtual machine may report a generic name; the numbers and features still tell the CPUs apart.)"""
    fields: Dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                name, _, value = line.partition(":")
                fields.setdefault(name.strip(), value.strip())
    except OSError:
        pass
    cpu = fields.get("model name") or platform.processor() or platform.machine()
    flags = set(fields.get("flags", "").split())
    details = [f"family {fields['cpu family']} model {fields['model']}"] if "cpu family" in fields else []
    details.append(" ".join(isa for isa in _ISA if isa in flags))
    details = [d for d in details if d]
    return f"{cpu} ({'; '.join(details)})" if details else cpu


def kernel_flags() -> str:
    """How the 'cpu' backend's C kernel was built (compiler, version, flags), building it if needed."""
    from layeract_patch._kernels import cpu_kernel
    try:
        return cpu_kernel.build_flags()
    except (RuntimeError, OSError) as err:
        return f"unavailable ({err})"


def machine() -> str:
    """One line naming the CPU, torch (and the vector width of ATen's CPU kernels), the threads in use, the load
    and the C kernel's compiler flags, to print beside the figures."""
    try:
        with open("/proc/loadavg") as loadavg:
            load = f", load average {loadavg.read().split()[0]}"
    except OSError:
        load = ""
    return (f"{cpu_name()}, torch {torch.__version__} (ATen {torch.backends.cpu.get_cpu_capability()}), "
            f"{torch.get_num_threads()} threads{load}; C kernel {kernel_flags()}")
