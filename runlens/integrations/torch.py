"""Helpers for a plain PyTorch loop that uses ``runlens.Monitor`` directly (examples/plain_pytorch.py).

Most of what a loop records needs no helper: the gradient norm is ``clip_grad_norm_``'s return value (a
tensor, the norm before clipping) and data wait comes from ``mon.loader(loader)``. The one value that does is
the mixed-precision loss scale: ``GradScaler.get_scale()`` returns a float, which on CUDA waits for the device
every step. ``loss_scale`` hands runlens the scale as a device tensor instead, read on runlens's writer
thread.
"""

from __future__ import annotations

from typing import Any

__all__ = ["loss_scale"]


def loss_scale(scaler: Any) -> Any:
    """The GradScaler's current scale for ``mon.step(..., loss_scale=loss_scale(scaler))``, without a sync.

    Args:
        scaler: a ``torch.amp.GradScaler`` (or ``torch.cuda.amp.GradScaler``).

    Returns:
        A 0-d tensor copy of the scale (a copy, because ``scaler.update()`` changes the scale in place and the
        Monitor reads step values later, on its own thread); 1.0 when the scaler is disabled; the float from
        ``get_scale()`` for scalers without the tensor (other implementations).
    """
    if not scaler.is_enabled():
        return 1.0
    scale = getattr(scaler, "_scale", None)  # torch keeps the scale as a device tensor; get_scale() reads it
    if scale is None:
        return scaler.get_scale()
    return scale.detach().clone().reshape(())
