"""Where an algorithm trains: one rule, shared by evaluation, the USB patches (:mod:`remop_usb.usb_compat`, which
re-exports it) and the algorithms."""

import torch


def device_of(algorithm) -> torch.device:
    """The device an algorithm trains on: ``cuda:<gpu>`` when args.gpu is set and CUDA exists, else CPU."""
    gpu = getattr(algorithm, "gpu", None)
    if gpu is not None and torch.cuda.is_available():
        return torch.device("cuda", gpu)
    return torch.device("cpu")
