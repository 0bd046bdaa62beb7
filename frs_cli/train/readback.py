"""Reading small results of queued GPU work back to the host without waiting for the work queued after them."""

from __future__ import annotations

import torch
from torch import Tensor


class HostCopy:
    """``tensor`` on its way to the host, copied into pinned memory as the stream reaches this point.

    Making one does not wait for the device; ``tolist()`` waits for this point of the stream alone, not for the
    work launched after it. The copy is taken at once, so the values stay those of this point even when the
    device tensor is overwritten later (a replayed CUDA graph's outputs are, by its next replay). On the CPU the
    tensor is kept as it is: pass one that nothing writes to afterwards.
    """

    def __init__(self, tensor: Tensor):
        self._event = None
        if tensor.is_cuda:
            self._host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            self._host.copy_(tensor, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._host = tensor

    def ready(self) -> bool:
        """Whether the values are there already, so that ``tolist()`` would not wait (always, on the CPU)."""
        return self._event is None or self._event.query()

    def tolist(self):
        if self._event is not None:
            self._event.synchronize()
        return self._host.tolist()
