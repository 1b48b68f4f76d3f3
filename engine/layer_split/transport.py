"""What travels between stages: any picklable structure whose tensors are shipped as one raw byte buffer.

Three point-to-point messages per hop (length, pickled skeleton, tensor bytes) over a torch.distributed
process group (gloo on CPU, NCCL on CUDA). Tensors go as bytes so every dtype (bool masks, bfloat16) travels.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

import torch


class _TensorSlot:
    """Stands in for a tensor inside the pickled skeleton."""

    def __init__(self, index: int, dtype: torch.dtype, shape: tuple[int, ...]) -> None:
        self.index, self.dtype, self.shape = index, dtype, shape


def _strip(value: Any, tensors: list[torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        tensors.append(value)
        return _TensorSlot(len(tensors) - 1, value.dtype, tuple(value.shape))
    if isinstance(value, (list, tuple)):
        return type(value)(_strip(v, tensors) for v in value)
    if isinstance(value, dict):
        return {k: _strip(v, tensors) for k, v in value.items()}
    return value


def _fill(value: Any, tensors: list[torch.Tensor]) -> Any:
    if isinstance(value, _TensorSlot):
        return tensors[value.index]
    if isinstance(value, (list, tuple)):
        return type(value)(_fill(v, tensors) for v in value)
    if isinstance(value, dict):
        return {k: _fill(v, tensors) for k, v in value.items()}
    return value


def _as_bytes(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().contiguous().reshape(-1).view(torch.uint8)


Waiter = Callable[[Any], None]


def blocking_wait(work: Any) -> None:
    work.wait()


def checked_wait(check: Callable[[], None]) -> Waiter:
    """Check the peers before each transfer, then block on it.

    Gloo only marks a transfer complete inside `wait()`, so it cannot be polled; a peer that dies mid-transfer
    closes its sockets and the wait raises at once (measured: well under a second), and a peer alive but stuck
    runs into the group's timeout.
    """

    def wait(work: Any) -> None:
        check()
        work.wait()

    return wait


class Channel:
    """Sends and receives structures over a process group, on `device` (the buffers' home)."""

    def __init__(self, group: Any, device: torch.device | str) -> None:
        self.group = group
        self.device = torch.device(device)
        self.bytes_sent = 0

    def send(self, value: Any, dst: int, wait: Waiter | None = blocking_wait) -> list[tuple[Any, torch.Tensor]]:
        """Send `value`; with `wait=None` return the pending transfers (and their buffers) instead of waiting.

        Gloo's send completes only once the receiver takes it: a stage that sends while its next stage is itself
        sending back would deadlock, so stage 0 keeps its sends pending while it receives outputs.
        """
        tensors: list[torch.Tensor] = []
        skeleton = pickle.dumps(_strip(value, tensors))
        meta = torch.frombuffer(bytearray(skeleton), dtype=torch.uint8).to(self.device)
        payload = [_as_bytes(t.to(self.device)) for t in tensors]
        body = torch.cat(payload) if payload else torch.zeros(0, dtype=torch.uint8, device=self.device)
        length = torch.tensor([meta.numel(), body.numel()], dtype=torch.int64, device=self.device)
        pending = [(self.group.send([t], dst, 0), t) for t in (length, meta, body) if t.numel()]
        self.bytes_sent += body.numel()
        if wait is None:
            return pending
        for work, _ in pending:
            wait(work)
        return []

    def recv(self, src: int, wait: Waiter = blocking_wait) -> Any:
        length = torch.zeros(2, dtype=torch.int64, device=self.device)
        wait(self.group.recv([length], src, 0))
        meta_len, body_len = (int(x) for x in length.tolist())
        meta = torch.empty(meta_len, dtype=torch.uint8, device=self.device)
        wait(self.group.recv([meta], src, 0))
        body = torch.empty(body_len, dtype=torch.uint8, device=self.device)
        if body_len:
            wait(self.group.recv([body], src, 0))
        skeleton = pickle.loads(meta.cpu().numpy().tobytes())
        slots: list[_TensorSlot] = []
        _collect(skeleton, slots)
        tensors: list[torch.Tensor] = [None] * len(slots)  # type: ignore[list-item]
        offset = 0
        for slot in sorted(slots, key=lambda s: s.index):
            count = _nbytes(slot)
            # Copied out first: its own storage is aligned for the dtype, and the body buffer is not kept alive.
            tensors[slot.index] = body[offset : offset + count].clone().view(slot.dtype).reshape(slot.shape)
            offset += count
        return _fill(skeleton, tensors)


def _nbytes(slot: _TensorSlot) -> int:
    count = 1
    for size in slot.shape:
        count *= size
    return count * torch.empty(0, dtype=slot.dtype).element_size()


def _collect(value: Any, slots: list[_TensorSlot]) -> None:
    if isinstance(value, _TensorSlot):
        slots.append(value)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _collect(v, slots)
    elif isinstance(value, dict):
        for v in value.values():
            _collect(v, slots)


def make_group(store: Any, rank: int, world: int, device: str, timeout: Any) -> Any:
    """A process group object of its own (not the global default one), so engines and restarts never collide."""
    import torch.distributed as dist

    if torch.device(device).type == "cuda":
        options = dist.ProcessGroupNCCL.Options()
        options._timeout = timeout
        return dist.ProcessGroupNCCL(store, rank, world, options)
    return dist.ProcessGroupGloo(store, rank, world, timeout)
