"""Small pieces shared by the imbalanced algorithms (InPL, CPE, Adsh).

- :func:`require_base_algorithm`: the base learners an imbalanced algorithm supports, checked before anything is
  built, with a one-line error instead of USB's ``assert``.
- :func:`labeled_class_counts`: per-class counts of the labeled split, the prior of logit adjustment (CPE) and of
  the frequency order of the classes.
"""

from __future__ import annotations

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
