"""Where and how big: quick/full mode, the device, mixed precision, seeding and distributed runs.

Every notebook runs in one of two modes, chosen by one switch, the environment variable
``TL_QUICK``:

* **full** (default): the real sizes, meant for a GPU (or patience).
* **quick** (``TL_QUICK=1``): shrinks data, models and step counts so that every lesson runs in
  seconds on a 2-core CPU. CI and ``make test`` use it. Quick mode changes *numbers only*: the same
  code paths run in both modes.

Notebooks never test the variable themselves; they ask :func:`pick` for a size::

    n_steps = pick(full=3000, quick=40)
"""

from __future__ import annotations

import ctypes
import os
import platform
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

QUICK_ENV = "TL_QUICK"
DEVICE_ENV = "TL_DEVICE"
CHECKPOINT_ENV = "TL_CHECKPOINT_DIR"

T = TypeVar("T")


class DeviceError(RuntimeError):
    """A device was asked for that this machine does not have."""


def is_quick() -> bool:
    """True when ``TL_QUICK`` is set to 1/true/yes/on (read at every call, so it can be changed)."""
    value = os.environ.get(QUICK_ENV, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"{QUICK_ENV}={value!r} is not understood: use 1 (quick) or 0 (full).")


def mode() -> str:
    """``"quick"`` or ``"full"``."""
    return "quick" if is_quick() else "full"


def pick(*, full: T, quick: T) -> T:
    """Return ``quick`` in quick mode and ``full`` otherwise."""
    return quick if is_quick() else full


SIZES = ("quick", "laptop", "full")


def training_size(device: torch.device | str) -> str:
    """How big lessons 02 and 03 train: ``"quick"``, ``"laptop"`` or ``"full"``.

    Quick mode gives ``"quick"``. Full mode gives ``"full"`` (the size of ``docs/results.md``'s
    baselines: minutes on a GPU, about 53 and 83 minutes on a 2-core CPU) on a GPU, and ``"laptop"``
    (a smaller model and fewer steps that still translates recognisably, a few minutes on a CPU)
    on anything else. A notebook may overrule it: ``SIZE = "full"`` trains the full size on a CPU.
    """
    if is_quick():
        return "quick"
    return "full" if torch.device(device).type == "cuda" else "laptop"


def checkpoint_dir() -> Path:
    """Where lessons keep checkpoints and result files: ``$TL_CHECKPOINT_DIR`` or ``checkpoints/``.

    The default is the repository's ``checkpoints/`` folder (git ignores it) in a checkout, and
    ``checkpoints/`` in the current folder when the course is installed as a package, so a notebook
    that is run again resumes from its checkpoint. ``make test`` points the variable at a fresh
    temporary folder, so every test run trains from scratch.
    """
    override = os.environ.get(CHECKPOINT_ENV)
    checkout = Path(__file__).resolve().parent.parent
    if override:
        folder = Path(override).expanduser()
    elif (checkout / "pyproject.toml").is_file():
        folder = checkout / "checkpoints"
    else:  # installed: never inside site-packages
        folder = Path.cwd() / "checkpoints"
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{CHECKPOINT_ENV}={folder} names a file, not a folder: point it at a folder "
                                 f"(it is created if missing), or unset it to use checkpoints/.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OSError(f"Cannot create the checkpoint folder {folder} ({error.strerror}): set {CHECKPOINT_ENV} "
                      f"to a folder you can write to.") from None
    return folder


def get_device(require: str | None = None) -> torch.device:
    """The best available device: CUDA, then Apple's MPS, then the CPU.

    ``require="cuda"`` (or ``"mps"``) raises :class:`DeviceError` with advice when that device is
    missing, instead of silently training for hours on a CPU. The variable ``TL_DEVICE`` overrides
    the automatic choice (for example ``TL_DEVICE=cpu`` on a machine with a GPU). Under
    ``torchrun`` a plain CUDA choice becomes ``cuda:LOCAL_RANK``, one GPU per process.
    """
    wanted = (require or os.environ.get(DEVICE_ENV) or "").strip().lower() or None
    if wanted is not None:
        try:
            device = torch.device(wanted)
        except RuntimeError:
            raise DeviceError(f"Unknown device {wanted!r}: use 'cuda', 'mps' or 'cpu'.") from None
        return _this_process_gpu(check_device_available(device))
    for kind in ("cuda", "mps"):
        if _available(kind):
            return _this_process_gpu(torch.device(kind))
    return torch.device("cpu")


def _available(kind: str) -> bool:
    if kind == "cuda":
        return torch.cuda.is_available()
    if kind == "mps":
        return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    return kind == "cpu"


def check_device_available(device: torch.device) -> torch.device:
    """``device`` if this machine has it; else :class:`DeviceError` saying what to do instead."""
    kind = device.type
    if kind not in ("cuda", "mps", "cpu"):
        raise DeviceError(f"Unknown device {str(device)!r}: use 'cuda', 'mps' or 'cpu'.")
    if not _available(kind):
        hint = (" On Colab: Runtime > Change runtime type > a GPU, then run the setup cell again."
                if kind == "cuda" else "")
        raise DeviceError(
            f"A {kind.upper()} device was asked for, but this machine has none "
            f"(torch {torch.__version__}, {platform.machine()}).{hint} "
            f"To run on the CPU anyway (slowly, or in quick mode with {QUICK_ENV}=1), "
            f"ask for 'cpu'."
        )
    if kind == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceError(f"{str(device)!r} was asked for, but this machine has {torch.cuda.device_count()} GPU(s).")
    return device


def _this_process_gpu(device: torch.device) -> torch.device:
    """Under ``torchrun`` (``LOCAL_RANK`` set) each process takes its own GPU, cuda:LOCAL_RANK."""
    local_rank = os.environ.get("LOCAL_RANK")
    if device.type != "cuda" or device.index is not None or local_rank is None:
        return device
    device = torch.device("cuda", int(local_rank))
    if device.index >= torch.cuda.device_count():
        raise DeviceError(f"LOCAL_RANK={local_rank} needs GPU {device.index}, but this machine has "
                          f"{torch.cuda.device_count()}: start torchrun with --nproc-per-node at most that.")
    torch.cuda.set_device(device)  # so that plain "cuda" tensors and NCCL use this GPU too
    return device


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def is_main_process() -> bool:
    """False in every process but rank 0 of an initialised ``torch.distributed`` run (``torchrun``)."""
    return not _distributed() or dist.get_rank() == 0


def rank_and_world_size() -> tuple[int, int]:
    """(this process's rank, number of processes) of a distributed run; (0, 1) otherwise."""
    return (dist.get_rank(), dist.get_world_size()) if _distributed() else (0, 1)


def wait_for_every_process() -> None:
    """A barrier in a distributed run; nothing otherwise."""
    if _distributed():
        dist.barrier()


def mean_over_processes(value: torch.Tensor) -> float:
    """A scalar tensor's mean over the processes of a distributed run (its value otherwise), as a float.

    One all-reduce of one number: every process then sees the same value.
    """
    if not _distributed():
        return value.item()
    total = value.detach().float().reshape(1).clone()  # on the device: NCCL reduces GPU tensors
    dist.all_reduce(total)
    return total.item() / dist.get_world_size()


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside its wrappers: DistributedDataParallel, DataParallel, ``torch.compile``'s.

    Other models come back as they are. Saving, evaluating and decoding use the inner model, so
    that checkpoints hold the plain parameter names.
    """
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    while True:
        if isinstance(model, wrappers):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


@dataclass(frozen=True)
class AmpSettings:
    """How to run mixed precision on one device.

    ``dtype`` is None when autocast should stay off. ``use_grad_scaler`` is True for float16,
    whose narrow exponent range needs loss scaling; bfloat16 does not.
    """

    dtype: torch.dtype | None
    use_grad_scaler: bool

    @property
    def enabled(self) -> bool:
        return self.dtype is not None


def amp_settings(device: torch.device | str) -> AmpSettings:
    """Mixed-precision settings for ``device``.

    bfloat16 needs real hardware support, which NVIDIA GPUs have from compute capability 8.0
    (Ampere: A100, RTX 30xx, and later). Older GPUs such as Colab's T4 (7.5) get float16 with a
    GradScaler. We test the capability rather than ``torch.cuda.is_bf16_supported()``, which says
    True on a T4 because bfloat16 can be *emulated* there, slowly.
    On CPU and MPS autocast stays off: it rarely speeds up these small models there.
    """
    device = check_device_available(torch.device(device))
    if device.type != "cuda":
        return AmpSettings(dtype=None, use_grad_scaler=False)
    major, _ = torch.cuda.get_device_capability(device)
    if major >= 8:
        return AmpSettings(dtype=torch.bfloat16, use_grad_scaler=False)
    return AmpSettings(dtype=torch.float16, use_grad_scaler=True)


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # mallopt parameters, from glibc's <malloc.h>


def keep_freed_memory() -> bool:
    """Let glibc's ``malloc`` keep freed memory for reuse instead of handing it back to the system.

    Training on a CPU allocates and frees the same large tensors at every step (activations, the
    logits over the vocabulary). By default glibc gives every block over its *mmap threshold* (at
    most 32 MiB) fresh pages from the kernel and returns them when the block is freed, so each step
    page-faults its memory in again and the kernel zeroes it: on lesson 09's ``cpu`` preset about a
    million page faults a second, 14 % of the CPU time spent in the kernel. Turning that off (no
    mmap'd blocks, trim only above 1 GiB) raised training speed by 25-36 % there and the peak
    resident memory from 1.4 to 1.7 GB (``docs/benchmarks.md``); jemalloc or tcmalloc, which PyTorch's CPU
    tuning guide suggests, do the same for a process started with ``LD_PRELOAD``.

    Affects the whole process, for the rest of its life. Returns True when applied (Linux with
    glibc) and False elsewhere (macOS, Windows, musl), where it does nothing.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**30))
    except (OSError, AttributeError):
        return False


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (all devices) so that a run can be repeated.

    On a CPU that makes results identical from run to run. On a GPU some kernels are not
    deterministic, so numbers can differ in the last digits.
    """
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be a whole number in 0 .. 2**32 - 1 (NumPy's range), got {seed!r}.")
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def environment_report() -> dict[str, str]:
    """Versions, device and mode, as a dict of strings (lesson 00 prints it)."""
    import matplotlib
    import sacrebleu
    import sentencepiece

    device = get_device()
    report = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "matplotlib": matplotlib.__version__,
        "sacrebleu": sacrebleu.__version__,
        "sentencepiece": sentencepiece.__version__,
        "device": str(device),
        "mode": mode(),
        "cpu threads": str(torch.get_num_threads()),
    }
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(device)
        amp = amp_settings(device)
        report["mixed precision"] = str(amp.dtype).replace("torch.", "")
    return report


def print_environment() -> None:
    """Print :func:`environment_report` as an aligned table."""
    report = environment_report()
    width = max(map(len, report))
    for key, value in report.items():
        print(f"{key:<{width}}  {value}")
