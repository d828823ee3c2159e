"""Which device a run uses: what the user typed, checked before anything is loaded."""

from __future__ import annotations

from typing import Any

import torch

from sigma_core.errors import SigmaInputError

DEVICE_HELP = "use cpu, cuda, cuda:N or mps"


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The device to load onto: cuda when there is one and nothing is asked, else cpu.

    A name that is not a device, ``meta`` (it holds no data), or a device this machine does not
    have is refused with what there is instead.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise SigmaInputError(
            f"device: {str(device)[:60]!r} is not a device; {DEVICE_HELP}"
        ) from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        return _cuda(dev)
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise SigmaInputError("device: mps is not available on this machine; use cpu")
        return dev
    raise SigmaInputError(f"device: {dev.type!r} cannot run generation; {DEVICE_HELP}")


def process_state() -> Any:
    """accelerate's state of this process (one process alone without ``accelerate launch``).
    ``launch --cpu`` asks for CPU processes over gloo through ACCELERATE_USE_CPU, which
    PartialState does not read itself: without it, each process of a CPU-only machine would run
    alone (every one doing all the work), and a GPU machine's would take a GPU each."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def process_device(state: Any, asked: str | None) -> torch.device:
    """The device a process of ``state`` works on: the one ``asked`` (--device), else, among
    several processes, the one accelerate gave it (its own GPU), else the best one here."""
    return resolve_device(asked or (str(state.device) if state.num_processes > 1 else None))


def _cuda(dev: torch.device) -> torch.device:
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise SigmaInputError(
            f"device: {dev} asked, but no CUDA GPU is available (torch {torch.__version__}, "
            f"{build}); use --device cpu, or install the CUDA build of torch on a machine with "
            "an NVIDIA GPU"
        )
    count = torch.cuda.device_count()
    if dev.index is not None and dev.index >= count:
        raise SigmaInputError(
            f"device: {dev} asked, but this machine has {count} GPU{'s' * (count != 1)} "
            f"(cuda:0{f' .. cuda:{count - 1}' if count > 1 else ''})"
        )
    return dev


def available_memory(device: torch.device) -> int | None:
    """Bytes a run could still allocate on ``device``: free GPU memory plus what this process's
    allocator holds in reserve (CUDA), or the kernel's MemAvailable (CPU); None where unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type == "cpu":
        try:
            with open("/proc/meminfo", encoding="ascii") as fh:
                for line in fh:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError):
            return None
    return None
