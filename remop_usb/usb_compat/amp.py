"""Mixed precision: ``amp: True`` with ``amp_dtype: fp16`` (USB's) or ``bf16``.

==============================================  ===================================================================
quirk in 0.3.2                                  what we do
==============================================  ===================================================================
``amp_cm`` is ``torch.cuda.amp.autocast``:      :func:`configure`: ``torch.autocast`` on the training device with
fp16 only, deprecated (a warning per step)      the ``amp_dtype`` asked for
a ``torch.cuda.amp.GradScaler`` scales every    a ``torch.amp.GradScaler`` for fp16 only; bf16 has fp32's range
amp loss                                        and steps unscaled (the scaler is built disabled: ParamUpdateHook's
                                                amp path then does plain backward / step)
ABC's auxiliary head runs after FixMatch's      ABC's ``train_step`` runs inside ``amp_cm`` (otherwise half-precision
autocast block, on half-precision features      features meet fp32 weights: "mat1 and mat2 must have the same dtype")
``AlgorithmBase.__init__`` builds a CUDA        :func:`quiet_grad_scaler` around building the algorithm: its
GradScaler whatever the device: a deprecation   deprecation and "CUDA is not available" warnings are dropped (the
warning, and "CUDA is not available" on CPU     scaler disables itself; :func:`configure` replaces it under amp)
==============================================  ===================================================================

``amp`` stays CUDA-only for training (the launcher prints ``amp ignored on CPU``); :func:`configure` itself works
on any device, which is how the CPU tests observe the bf16 path.
"""

from __future__ import annotations

import contextlib
import functools
import warnings

import torch

from ..errors import UserError

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def check_dtype(name: str, device: torch.device):
    """A UserError when ``amp_dtype: name`` cannot run on ``device`` (bf16 needs compute capability 8.0+)."""
    if name not in DTYPES:
        raise UserError(f"amp_dtype must be one of {', '.join(DTYPES)}; got {name!r}")
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError(f"amp_dtype: bf16 needs a GPU with bfloat16 support ({torch.cuda.get_device_name(device)} "
                        f"has none); use amp_dtype: fp16")


def configure(algorithm, device: torch.device):
    """Set ``algorithm.amp_cm`` and ``algorithm.loss_scaler`` for ``args.amp_dtype`` (nothing without amp)."""
    if not algorithm.use_amp:
        return
    name = getattr(algorithm.args, "amp_dtype", "fp16")
    check_dtype(name, device)
    dtype = DTYPES[name]
    algorithm.amp_cm = functools.partial(torch.autocast, device_type=device.type, dtype=dtype)
    algorithm.loss_scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)


@contextlib.contextmanager
def quiet_grad_scaler():
    """Inside, the warnings of USB's unconditional ``torch.cuda.amp.GradScaler()`` are not shown."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.cuda.amp.GradScaler.*")
        warnings.filterwarnings("ignore", message=".*GradScaler is enabled, but CUDA is not available.*")
        yield


def _under_autocast(train_step):
    @functools.wraps(train_step)
    def wrapped(self, *args, **kwargs):
        with self.amp_cm():
            return train_step(self, *args, **kwargs)

    return wrapped


def install():
    from semilearn.imb_algorithms.abc.abc import ABC

    ABC.train_step = _under_autocast(ABC.train_step)
