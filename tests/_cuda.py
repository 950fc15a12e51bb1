"""Shared by the GPU-only tests."""
import contextlib

import torch


@contextlib.contextmanager
def no_host_sync():
    """Inside, any host-device synchronization torch makes raises (its sync debug mode 'error')."""
    torch.cuda.set_sync_debug_mode('error')
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(0)
