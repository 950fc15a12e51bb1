"""Process-group setup from torchrun's environment, and the few collectives the trainer needs.

torchrun (or any launcher) sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; without them the run is
a single process and no process group is created. The backend is nccl on GPU and gloo on CPU.
"""
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ['DistInfo', 'init_distributed', 'all_reduce_sum', 'all_reduce_max', 'all_gather_object',
           'destroy_distributed']


@dataclass(frozen=True, slots=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _pick_device(requested: str, local_rank: int) -> torch.device:
    if requested == 'auto':
        return torch.device('cuda', local_rank) if torch.cuda.is_available() else torch.device('cpu')
    device = torch.device(requested)
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            raise ValueError('--device cuda was requested but CUDA is not available; use --device cpu or auto')
        if device.index is None:
            device = torch.device('cuda', local_rank)
    return device


def init_distributed(requested_device: str = 'auto') -> DistInfo:
    """Read torchrun's env, pick the device, and create the process group when WORLD_SIZE > 1."""
    world_size = int(os.environ.get('WORLD_SIZE', 1))
    rank = int(os.environ.get('RANK', 0))
    local_rank = int(os.environ.get('LOCAL_RANK', rank))
    device = _pick_device(requested_device, local_rank)
    if device.type == 'cuda':
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        backend = 'nccl' if device.type == 'cuda' else 'gloo'
        kwargs = {'device_id': device} if device.type == 'cuda' else {}
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, **kwargs)
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum `t` in place across ranks (no-op in a single process); returns `t`."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    """Element-wise max of `t` in place across ranks (no-op in a single process); returns `t`."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def all_gather_object(obj: Any) -> list:
    """[obj of rank 0, obj of rank 1, ...]; [obj] in a single process."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def destroy_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
