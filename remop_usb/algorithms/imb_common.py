"""Small pieces shared by the algorithms (InPL, CPE, Adsh, Ada-CM).

- :func:`require_base_algorithm`: the base learners an imbalanced algorithm supports, checked before anything is
  built, with a one-line error instead of USB's ``assert``.
- :func:`labeled_class_counts`: per-class counts of the labeled split, the prior of logit adjustment (CPE) and of
  the frequency order of the classes.
- :func:`forward_batches`: the model's outputs for several batches, in one pass over their concatenation
  (``use_cat``) or one pass each (CPE, Ada-CM).
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from ..errors import UserError


def require_base_algorithm(args, imb_algorithm: str, supported=("fixmatch",)):
    """Raise a :class:`UserError` unless ``args.algorithm`` is one of ``supported``."""
    if args.algorithm not in supported:
        raise UserError(f"imb_algorithm '{imb_algorithm}' runs on algorithm {' | '.join(supported)}, "
                        f"not '{args.algorithm}'")


def labeled_class_counts(targets, num_classes: int) -> torch.Tensor:
    """Number of labeled samples of each class, a float tensor of length ``num_classes``."""
    counts = np.bincount(np.asarray(targets, dtype=np.int64).reshape(-1), minlength=num_classes)
    if counts.size != num_classes:
        raise ValueError(f"labels outside 0..{num_classes - 1}")
    return torch.as_tensor(counts, dtype=torch.float32)


def forward_batches(model, batches, use_cat: bool, keys, order=None, no_grad=()):
    """``model``'s outputs for each of ``batches``, as dicts with (at least) ``keys``.

    With ``use_cat``: one forward pass over their concatenation, each output a view of the rows of its batch (what
    USB's learners slice). Otherwise one pass per batch, in the order of the indices ``order`` (default: as given),
    those in ``no_grad`` without gradient; each output is the model's whole dict.
    """
    if use_cat:
        out = model(torch.cat(batches))
        sizes = [b.shape[0] for b in batches]
        parts = {k: out[k].split(sizes) for k in keys}
        return [{k: parts[k][i] for k in keys} for i in range(len(batches))]
    outs = [None] * len(batches)
    for i in (range(len(batches)) if order is None else order):
        with torch.no_grad() if i in no_grad else contextlib.nullcontext():
            outs[i] = model(batches[i])
    return outs
