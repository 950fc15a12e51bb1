"""Host-to-device copies of per-batch data that never make the host wait for the GPU.

torch's blocking `.to('cuda')` of a host tensor synchronizes the stream once the copy is queued, and CUDA may do
the same for an asynchronous copy from pageable memory (it stages it through a pinned buffer). In a train step
that wait drains the GPU's queue, the previous step, before the batch's augmentation is even launched, and
leaves the GPU idle while the host launches it. So the augmentation's drawn choices and the loaders' labels go
through pinned memory with `non_blocking=True`: torch's caching host allocator holds the pinned block until the
copy has run, so the source may be dropped at once.
"""
import torch

__all__ = ["to_device"]


def to_device(tensor: torch.Tensor, device) -> torch.Tensor:
    """`tensor` on `device`, queued without a host-device synchronization (`tensor` itself on its own device)."""
    device = torch.device(device)
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device, non_blocking=device.type == "cuda")
    return tensor.pin_memory().to(device, non_blocking=True)
