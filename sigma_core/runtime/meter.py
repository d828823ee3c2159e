"""Measuring memory: the peak a block of work reaches, and the bytes modules hold.

The counterpart of :mod:`sigma_core.runtime.memory`'s prediction, kept apart because nothing in
the prediction uses it: tests and benchmarks compare the two, and the VAE's activation table
(:mod:`sigma_core.runtime.vae_memory`) is measured with it. On CUDA the allocator keeps peak
statistics; on the CPU there are none, so a dispatch mode tracks every storage an operator
creates until it is freed.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from types import TracebackType
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class MemoryMeter:
    """Measures the peak memory of a block on ``device``; ``peak`` in bytes after the block.

    On CUDA: the allocator's peak over the block, everything on the device included
    (``modules`` are not needed). On the CPU: the bytes of the tensors of ``modules``
    (parameters, buffers and bitsandbytes' quantization state, each storage once) plus the peak
    of the storages the block's operators create and have not yet freed, tracked through a
    dispatch mode. Tensors made outside torch's operators (``torch.from_numpy``) are not seen.
    """

    def __init__(
        self, device: str | torch.device = "cpu", modules: Iterable[nn.Module] = ()
    ) -> None:
        self.device = torch.device(device)
        self.modules = list(modules)
        self.resident = 0  # bytes alive at entry: the modules' (CPU), all allocated (CUDA)
        self.new_peak = 0  # the most bytes alive at once beyond those
        self.peak = 0
        self._mode: _StorageTracker | None = None

    def __enter__(self) -> MemoryMeter:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.resident = torch.cuda.memory_allocated(self.device)
            return self
        self.resident = module_bytes(self.modules)
        self._mode = _StorageTracker()
        self._mode.__enter__()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
            self.new_peak = self.peak - self.resident
            return
        assert self._mode is not None
        self._mode.__exit__(kind, error, traceback)
        self.new_peak = self._mode.peak
        self.peak = self.resident + self.new_peak


def module_bytes(modules: Iterable[nn.Module], device: torch.device | None = None) -> int:
    """Bytes of the parameters and buffers of ``modules`` (only those on ``device`` when given),
    each storage counted once, with bitsandbytes' quantization state (absmax, code, row scales)
    and the inner tensors of tensor subclasses (torchao's float8 weights)."""
    seen: dict[tuple[str, int], int] = {}
    for module in modules:
        for tensor in (*module.parameters(), *module.buffers()):
            for inner in _inner_tensors(tensor):
                if device is None or inner.device == device:
                    storage = inner.untyped_storage()
                    seen[(str(inner.device), storage.data_ptr())] = storage.nbytes()
    return sum(seen.values())


def _inner_tensors(tensor: torch.Tensor) -> Iterable[torch.Tensor]:
    """``tensor`` and the tensors it carries: a subclass's flattened parts, bitsandbytes'
    ``quant_state`` (with its nested state) and ``SCB``."""
    flatten = getattr(tensor, "__tensor_flatten__", None)
    if flatten is not None and type(tensor) not in (torch.Tensor, nn.Parameter):
        names, _ = flatten()
        for name in names:
            yield from _inner_tensors(getattr(tensor, name))
    else:
        yield tensor
    extras = [getattr(tensor, "SCB", None), getattr(tensor, "quant_state", None)]
    while extras:
        item = extras.pop()
        if isinstance(item, torch.Tensor):
            yield item
        elif item is not None and hasattr(item, "__dict__"):
            extras.extend(vars(item).values())


class _StorageTracker(TorchDispatchMode):
    """Counts the bytes of every storage an operator creates until it is freed; ``peak`` is
    the most alive at once. Outputs that share an input's storage (views, in-place and out=
    operators) are not new."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def _freed(self, ptr: int) -> None:
        self.current -= self.live.pop(ptr, 0)

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = {
            t.untyped_storage().data_ptr()
            for t in tree_flatten((args, kwargs))[0]
            if isinstance(t, torch.Tensor)
        }
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            ptr, nbytes = storage.data_ptr(), storage.nbytes()
            if nbytes == 0 or ptr in inputs or ptr in self.live:
                continue
            self.live[ptr] = nbytes
            self.current += nbytes
            self.peak = max(self.peak, self.current)
            weakref.finalize(storage, self._freed, ptr)
        return out
