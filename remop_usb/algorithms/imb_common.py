"""Small pieces shared by the algorithms (InPL, CPE, Adsh, Ada-CM, ACR, CDMAD).

- :func:`require_base_algorithm`: the base learners an imbalanced algorithm supports, checked before anything is
  built, with a one-line error instead of USB's ``assert``.
- :func:`labeled_class_counts`: per-class counts of the labeled split, the prior of logit adjustment (CPE) and of
  the frequency order of the classes.
- :func:`forward_batches`: the model's outputs for several batches, in one pass over their concatenation
  (``use_cat``) or one pass each (CPE, Ada-CM).
- :func:`adjusted_probs`, :func:`adjusted_prediction`: a prediction shifted in log space (ACR's logit adjustment,
  CDMAD's bias subtraction) -- under ReMoP, of its mixture's linear part.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.distributed as dist

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


def adjusted_probs(probs: torch.Tensor, adjustment: torch.Tensor) -> torch.Tensor:
    """``probs`` shifted by ``-adjustment`` in log space, keeping each row's (positive) mass:
    q_k = p_k^+ exp(-a_k) * S / sum_j p_j^+ exp(-a_j), with p^+ = max(p, 0) and S = sum_j p_j^+.

    For a softmax row p = softmax(z) this is exactly softmax(z - a) -- logit adjustment (ACR) or bias subtraction
    (CDMAD) of the logits p came from. For a row that is no softmax -- ReMoP's mixture (Eq. 6), whose cosine term can
    be negative and whose sum need not be 1 -- the same shift applies to its positive part on the mixture's own scale:
    ``adjustment`` = 0 gives the row back (its negative entries at 0), so ReMoP's threshold reads the same numbers.
    ``adjustment``: K, or one row per row of ``probs``.
    """
    positive = probs.float().clamp_min(0.0)
    adjustment = adjustment.to(positive)
    # exp(-a) with a shifted by its row minimum (exact after the renormalisation, never overflows)
    weights = torch.exp(-(adjustment - adjustment.min(dim=-1, keepdim=True)[0]))
    shifted = positive * weights
    total = shifted.sum(dim=-1, keepdim=True)
    return torch.where(total > 0, shifted * (positive.sum(dim=-1, keepdim=True) / total.clamp_min(1e-30)), positive)


def adjusted_prediction(algorithm, probs: torch.Tensor, logits: torch.Tensor, adjustment: torch.Tensor):
    """The learner's weak-view prediction ``probs`` (``compute_prob`` of ``logits``) with the linear classifier's
    logits shifted by ``-adjustment`` (ACR's logit adjustment, CDMAD's bias): softmax(z - a) for a plain learner; under
    ReMoP its mixture (Eq. 6) of the shifted linear prediction and the unchanged feature prediction s --
    ``remop_mix: prob``: p_m + beta (softmax(z - a) - softmax(z)) = beta softmax(z - a) + (1 - beta) s;
    ``remop_mix: logit``: softmax(beta (z - a) + (1 - beta) s), the mixture shifted by beta * a in log space. The
    feature prediction (cosines to the class centers) is on no log-probability scale, so it is not shifted."""
    from .remop import ReMoP

    adjustment = adjustment.reshape(-1).to(probs.device)
    if not isinstance(algorithm, ReMoP):
        return adjusted_probs(probs, adjustment)
    if algorithm.mix == "logit":
        return adjusted_probs(probs, algorithm.beta * adjustment)
    z = logits.detach().float()
    return probs.float() + algorithm.beta * (torch.softmax(z - adjustment.float(), dim=-1) - torch.softmax(z, dim=-1))


def log_prior(class_counts, who: str = "cpe") -> torch.Tensor:
    """log pi_k with pi the normalised labeled class counts (logit adjustment: CPE, ACR); a class without a labeled
    sample is a :class:`UserError` naming ``who`` (log 0 would be -inf)."""
    counts = torch.as_tensor(class_counts, dtype=torch.float32)
    if (counts <= 0).any():
        missing = (counts <= 0).nonzero().flatten().tolist()
        raise UserError(f"{who}: logit adjustment needs a labeled sample of every class; classes {missing} have none")
    return torch.log(counts / counts.sum())


def sum_over_processes(algorithm, *tensors):
    """``tensors`` summed over the processes of a distributed run, on the algorithm's device (themselves otherwise):
    per-process statistics that an epoch-end update needs whole (Ada-CM's margins, SimPro's priors)."""
    if not (getattr(algorithm, "distributed", False) and dist.is_available() and dist.is_initialized()
            and dist.get_world_size() > 1):
        return tensors
    from ..usb_compat import device_of

    out = []
    for t in tensors:
        t = t.to(device_of(algorithm))
        dist.all_reduce(t)
        out.append(t)
    return tuple(out)


class AdaptedModels:
    """Mixin for a learner whose network is USB's wrapped by ``self._adapt`` (Ada-CM's unit feature, ACR's second
    head, CDMAD's solid-image bias): the model and the EMA model are built the same way, the EMA a copy."""

    def _adapt(self, net):
        raise NotImplementedError

    def set_model(self):
        return self._adapt(super().set_model())

    def set_ema_model(self):
        ema_model = self._adapt(self.net_builder(num_classes=self.num_classes))
        ema_model.load_state_dict(self.model.state_dict())
        return ema_model
