"""DataLoader options USB's ``get_data_loader`` hard-codes: ``pin_memory``, ``persistent_workers``, ``prefetch_factor``.

=================================================  ===============================================================
quirk in 0.3.2                                     what we do
=================================================  ===============================================================
``get_data_loader`` builds every DataLoader with   the DataLoader it builds takes ``pin_memory``,
``pin_memory=False`` and PyTorch's worker          ``persistent_workers`` and ``prefetch_factor`` from the args it
defaults, whatever the caller wants                was called with (:func:`loader_options`)
``get_data_loader`` is imported by name into       every ``semilearn`` module's ``get_data_loader`` name is pointed
``algorithmbase`` and several imbalanced           at the wrapper, so Adsh's unlabeled evaluation loader (and the
algorithms (Adsh, CReST, CoSSL, ...)               others) get the options too
``DistributedSampler`` shuffles with a generator    the sampler also gets the run's ``seed``
seeded by the epoch only: every ``seed`` of a      (:func:`shuffle_seed`): different seeds see different orders, one
sweep sees the same data order                     seed the same order every time
=================================================  ===============================================================

Worker options apply to loaders with workers only (``persistent_workers`` / ``prefetch_factor`` are errors in
PyTorch with ``num_workers=0``); :mod:`.speed` turns them off, with one printed line, when ``num_workers`` is 0.
"""

from __future__ import annotations

import contextvars
import functools
import sys

from torch.utils.data import DataLoader

_ARGS = contextvars.ContextVar("remop_usb_loader_args", default=None)


def loader_options(args, num_workers: int) -> dict:
    """The DataLoader keyword arguments ``args`` asks for, for a loader with ``num_workers`` workers."""
    options = {"pin_memory": bool(getattr(args, "pin_memory", False))}
    if num_workers > 0:
        if getattr(args, "persistent_workers", False):
            options["persistent_workers"] = True
        if getattr(args, "prefetch_factor", None) is not None:
            options["prefetch_factor"] = args.prefetch_factor
    return options


def _configured_data_loader(*args, **kwargs):
    """Stands for ``DataLoader`` inside USB's ``build`` module: adds the options (and seed) of the call in progress."""
    from semilearn.datasets import DistributedSampler

    usb_args = _ARGS.get()
    if usb_args is not None:
        kwargs.update(loader_options(usb_args, kwargs.get("num_workers", 0)))
    loader = DataLoader(*args, **kwargs)
    if usb_args is not None and isinstance(loader.sampler, DistributedSampler):  # the samplers that shuffle by it
        loader.sampler.seed = int(getattr(usb_args, "seed", 0) or 0)
    return loader


def shuffle_seed(seed: int, epoch: int) -> int:
    """The generator seed of (run seed, epoch), a 32-bit value (torch's CPU generator keeps only 32 bits of a seed)
    mixed by numpy's SeedSequence, so neighbouring seeds and epochs give unrelated orders."""
    import numpy as np

    return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1)[0])


def _seeded_iter(original_iter):
    """USB's ``DistributedSampler.__iter__`` with its generator seeded by (seed, epoch) instead of the epoch alone."""

    @functools.wraps(original_iter)
    def __iter__(self):
        epoch = self.epoch
        self.epoch = shuffle_seed(getattr(self, "seed", 0), epoch)
        try:
            return original_iter(self)  # builds the whole index list before returning
        finally:
            self.epoch = epoch

    __iter__.usb_original = original_iter
    return __iter__


def _with_options(get_data_loader):
    @functools.wraps(get_data_loader)
    def wrapped(args, *rest, **kwargs):
        token = _ARGS.set(args)
        try:
            return get_data_loader(args, *rest, **kwargs)
        finally:
            _ARGS.reset(token)

    wrapped.usb_original = get_data_loader
    return wrapped


def install():
    from semilearn.core.utils import build
    from semilearn.datasets import DistributedSampler

    if not hasattr(DistributedSampler.__iter__, "usb_original"):
        DistributedSampler.__iter__ = _seeded_iter(DistributedSampler.__iter__)

    original = build.get_data_loader
    wrapped = _with_options(original)
    build.DataLoader = _configured_data_loader
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] == "semilearn" and getattr(module, "get_data_loader", None) is original:
            module.get_data_loader = wrapped
