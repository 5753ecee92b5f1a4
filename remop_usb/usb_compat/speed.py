"""Speed options on USB's algorithms: each is a config key, checked against the device before anything is built.

=================================================  ===============================================================
quirk in 0.3.2                                     what we do
=================================================  ===============================================================
no place for model-level speed-ups: the model is   :class:`SpeedHook` (``before_run``, first of all hooks, when the
wrapped (ABC), moved and DDP-wrapped after         model is final): ``channels_last`` converts the training and EMA
``AlgorithmBase.__init__``                         models to NHWC; ``compile`` compiles the training network in place
                                                   (``nn.Module.compile``: state-dict keys, checkpoints, EMA and
                                                   ``.module`` stay as they are)
the launcher sets ``cudnn.deterministic = True``   ``cudnn_benchmark: True`` sets ``cudnn.benchmark`` and clears
                                                   ``cudnn.deterministic`` (autotuned kernels are not deterministic)
options that cannot apply on this device           :func:`resolve` prints one line for each and turns it off:
                                                   ``pin_memory`` and ``cudnn_benchmark`` on CPU, ``persistent_workers``
                                                   and ``prefetch_factor`` with ``num_workers: 0``
``amp`` fp16 only                                  :func:`.amp.configure` (``amp_dtype``)
=================================================  ===============================================================

Everything is installed by wrapping ``AlgorithmBase.__init__``: :func:`resolve` before (the loaders are built
inside), :func:`.amp.configure` and the hook after.
"""

from __future__ import annotations

import functools

import torch
from semilearn.core.hooks import Hook

from ..errors import UserError
from . import amp, device_of, unwrap

CUDA_ONLY = ("pin_memory", "cudnn_benchmark")
WORKER_OPTIONS = ("persistent_workers", "prefetch_factor")
MODEL_OPTIONS = ("channels_last", "compile")  # what apply_model_options applies
OFF = {"prefetch_factor": None}  # the value that turns an option off (False for the others)

_said: set = set()


def _say(line: str):
    """Print ``line`` once per process (the benchmark builds several algorithms from the same options)."""
    if line not in _said:
        _said.add(line)
        print(f"[remop-usb] {line}")


def _is_set(value) -> bool:
    return value is not None and value is not False


def resolve(args, device: torch.device):
    """Turn off, with one printed line each, the speed options that cannot apply on ``device``; check the rest."""
    prefetch = getattr(args, "prefetch_factor", None)
    if prefetch is not None and prefetch < 1:
        raise UserError(f"prefetch_factor must be at least 1, got {prefetch}")
    if getattr(args, "amp", False):
        amp.check_dtype(getattr(args, "amp_dtype", "fp16"), device)
    if device.type != "cuda":
        _turn_off(args, CUDA_ONLY, "on CPU")
    if getattr(args, "num_workers", 0) == 0:
        _turn_off(args, WORKER_OPTIONS, "with num_workers 0")


def _turn_off(args, keys, reason):
    for key in keys:
        if _is_set(getattr(args, key, None)):
            _say(f"{key} ignored {reason}")
            setattr(args, key, OFF.get(key, False))


class SpeedHook(Hook):
    """Applies ``cudnn_benchmark``, ``channels_last`` and ``compile`` once the model is final (``before_run``)."""

    def before_run(self, algorithm):
        args = algorithm.args
        if getattr(args, "cudnn_benchmark", False):
            torch.backends.cudnn.benchmark = True
            torch.backends.cudnn.deterministic = False
        if not any(getattr(args, key, False) for key in MODEL_OPTIONS):
            return
        apply_model_options(algorithm.ema_model, args, compile=False)
        if apply_model_options(unwrap(algorithm.model), args, compile=not getattr(algorithm, "_remop_compiled", False)):
            algorithm._remop_compiled = True


def apply_model_options(net, args, compile=True) -> bool:
    """``channels_last`` and (with ``compile``) ``compile`` of ``args`` applied to ``net`` in place, as the training
    network gets them; True when ``net`` was compiled (``nn.Module.compile``: its state-dict keys stay)."""
    if getattr(args, "channels_last", False):
        net.to(memory_format=torch.channels_last)
    if compile and getattr(args, "compile", False):
        net.compile(mode=getattr(args, "compile_mode", "default"))
        return True
    return False


def _speed_options_around(init):
    @functools.wraps(init)
    def __init__(self, args, *rest, **kwargs):
        device = device_of(args)
        resolve(args, device)
        init(self, args, *rest, **kwargs)
        amp.configure(self, device)
        self.register_hook(SpeedHook(), "SpeedHook", "HIGHEST")

    return __init__


def install():
    from semilearn.core.algorithmbase import AlgorithmBase

    AlgorithmBase.__init__ = _speed_options_around(AlgorithmBase.__init__)
