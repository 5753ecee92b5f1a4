"""The allowed values of numeric keys, declared as tables: :data:`KEY_RANGES` for the keys every run shares (USB's
train.py and this plugin's) and for the options of USB's own algorithms and imbalanced algorithms, and a ``RANGES``
class attribute (beside ``CHOICES``) for an algorithm of this plugin -- or of a third-party plugin.

A range is a string, written as in the docs::

    "[0, 1]"   "(0, 1]"   "[0, 1)"   ">= 0"   "> 0"   "<= -1"   "== -1"

alternatives joined by ``" or "``, and optionally ``"; "`` and a note naming what a special value means, e.g.
``">= 1 or == -1; -1: every training image labeled"``. ``remop_usb.config`` checks every key of a run against the
ranges of its algorithms (theirs override :data:`KEY_RANGES`) and refuses a value outside in one line, naming the
key, where it was set, the value and the range (``c.yaml:12: remop_beta 1.5 is out of range: expected 0 <=
remop_beta <= 1``). Keys left out on purpose are listed in :data:`NO_RANGE`, with the reason.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import Optional

PROBABILITY = "[0, 1]"      # a confidence threshold, a mixing weight
MOMENTUM = "[0, 1)"         # an EMA rate: m * old + (1 - m) * new
NON_NEGATIVE = ">= 0"       # a loss weight, a logit-adjustment strength
POSITIVE = "> 0"            # a temperature, a learning rate
AT_LEAST_ONE = ">= 1"       # a count, a batch size, an interval in iterations

#: key -> range, for keys every run has (USB's train.py, this plugin's) and for USB's algorithms' own options
KEY_RANGES = {
    # USB's train.py
    "num_warmup_iter": NON_NEGATIVE,
    "num_eval_iter": AT_LEAST_ONE,
    "num_log_iter": AT_LEAST_ONE,
    "num_labels": ">= 1 or == -1; -1: every training image labeled",
    "batch_size": AT_LEAST_ONE,
    "uratio": AT_LEAST_ONE,
    "eval_batch_size": AT_LEAST_ONE,
    "ema_m": MOMENTUM,
    "ulb_loss_ratio": NON_NEGATIVE,
    "lr": POSITIVE,
    "momentum": MOMENTUM,
    "weight_decay": NON_NEGATIVE,
    "layer_decay": "(0, 1]",  # 1: no layer-wise decay
    "clip_grad": NON_NEGATIVE,  # 0: no clipping
    "num_classes": ">= 2",
    "num_workers": NON_NEGATIVE,
    "lb_imb_ratio": ">= 1",  # gamma = N1 / NK
    "ulb_imb_ratio": ">= 1 or <= -1; negative: the same ratio, classes in reversed order",
    "ulb_num_labels": AT_LEAST_ONE,  # None: every image not labeled (not checked)
    "img_size": AT_LEAST_ONE,
    "crop_ratio": "(0, 1]",
    "max_length": AT_LEAST_ONE,
    "max_length_seconds": POSITIVE,
    "sample_rate": AT_LEAST_ONE,
    "world_size": AT_LEAST_ONE,
    "rank": NON_NEGATIVE,
    "seed": "[0, 4294967295]",  # NumPy's seeds
    "gpu": NON_NEGATIVE,  # None: chosen by the launcher (not checked)
    # this plugin's
    "ema_weight_decay": NON_NEGATIVE,
    "diag_every": ">= 0; 0: num_eval_iter",
    "diag_max_samples": ">= 0; 0: every unlabeled image",
    "plot_tsne_max": NON_NEGATIVE,
    "crop_prob": PROBABILITY,
    # USB's algorithms (fixmatch, flexmatch, freematch, softmatch, ...)
    "p_cutoff": PROBABILITY,
    "T": POSITIVE,
    "ema_p": MOMENTUM,
    "ent_loss_ratio": NON_NEGATIVE,
    "contrast_p_cutoff": PROBABILITY,
    "contrast_loss_ratio": NON_NEGATIVE,
    "proj_size": AT_LEAST_ONE,
    "queue_batch": AT_LEAST_ONE,
    "smoothing_alpha": PROBABILITY,
    "da_len": AT_LEAST_ONE,
    "rot_loss_ratio": NON_NEGATIVE,
    "kl_loss_ratio": NON_NEGATIVE,
    "in_loss_ratio": NON_NEGATIVE,
    "K": AT_LEAST_ONE,
    "gamma": POSITIVE,
    "C": POSITIVE,
    "rho_min": PROBABILITY,
    "num_wu_iter": NON_NEGATIVE,
    "num_wu_eval_iter": AT_LEAST_ONE,
    "unsup_warm_up": "(0, 1]",  # a fraction of num_train_iter
    "mixup_alpha": POSITIVE,
    "n_sigma": POSITIVE,
    "vat_eps": POSITIVE,
    # USB's imbalanced algorithms
    "abc_p_cutoff": PROBABILITY,
    "abc_loss_ratio": NON_NEGATIVE,
    "crest_num_gens": AT_LEAST_ONE,
    "crest_dist_align_t": PROBABILITY,
    "crest_alpha": POSITIVE,
    "darp_warmup_epochs": NON_NEGATIVE,
    "darp_alpha": POSITIVE,
    "darp_iter_T": AT_LEAST_ONE,
    "darp_num_refine_iter": AT_LEAST_ONE,
    "daso_queue_len": AT_LEAST_ONE,
    "daso_T_proto": POSITIVE,
    "daso_T_dist": POSITIVE,
    "daso_interp_alpha": PROBABILITY,
    "daso_assign_loss_ratio": NON_NEGATIVE,
    "daso_num_pretrain_iter": NON_NEGATIVE,
    "debiaspl_tau": NON_NEGATIVE,
    "debiaspl_ema_p": MOMENTUM,
    "tras_warmup_epochs": NON_NEGATIVE,
    "tras_A": NON_NEGATIVE,  # the aux head's per-class temperature A * softmax(-log pi^tro) + B stays > 0
    "tras_B": POSITIVE,
    "tras_tro": NON_NEGATIVE,
}

#: numeric keys with no range here, and why
NO_RANGE = {
    "epoch": "checked with num_train_iter and num_iter_per_epoch (config._check_schedule)",
    "num_train_iter": "checked with epoch (config._check_schedule)",
    "num_iter_per_epoch": "checked with epoch (config._check_schedule)",
    "prefetch_factor": "checked where the loaders are built (usb_compat.speed), where it applies",
    "daso_num_pl_dist_iter": "checked with daso_num_pretrain_iter (usb_compat.imb_algorithms.schedule_problem)",
    "cdmad_fill": "any value of the network's input space",
}


@dataclass(frozen=True)
class Interval:
    """``low (<|<=) x (<|<=) high``; a missing bound is ``None``. Bounds are ``(number, as written, inclusive)``."""

    low: Optional[tuple] = None
    high: Optional[tuple] = None

    def __contains__(self, x) -> bool:
        if self.low and not (x >= self.low[0] if self.low[2] else x > self.low[0]):
            return False
        return not self.high or (x <= self.high[0] if self.high[2] else x < self.high[0])

    def text(self, key) -> str:
        if self.low and self.high and self.low == self.high:
            return f"{key} == {self.low[1]}"
        if not self.high:
            return f"{key} {'>=' if self.low[2] else '>'} {self.low[1]}"
        if not self.low:
            return f"{key} {'<=' if self.high[2] else '<'} {self.high[1]}"
        return f"{self.low[1]} {'<=' if self.low[2] else '<'} {key} {'<=' if self.high[2] else '<'} {self.high[1]}"


@dataclass(frozen=True)
class Range:
    """The values one of whose intervals holds, with an optional note on special values."""

    intervals: tuple
    note: str = ""

    def __contains__(self, x) -> bool:
        return any(x in interval for interval in self.intervals)

    def text(self, key) -> str:
        text = " or ".join(interval.text(key) for interval in self.intervals)
        return f"{text} ({self.note})" if self.note else text


_NUMBER = r"[-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?"
_INTERVAL = re.compile(rf"([\[(])\s*({_NUMBER})\s*,\s*({_NUMBER})\s*([\])])")
_COMPARISON = re.compile(rf"(>=|>|<=|<|==)\s*({_NUMBER})")


def _bound(text, inclusive) -> tuple:
    return float(text), text, inclusive


def _interval(spec) -> Interval:
    """One alternative of a range string: ``[a, b]`` (any brackets) or a comparison with a number."""
    match = _INTERVAL.fullmatch(spec)
    if match:
        opening, low, high, closing = match.groups()
        return Interval(_bound(low, opening == "["), _bound(high, closing == "]"))
    match = _COMPARISON.fullmatch(spec)
    if not match:
        raise ValueError(f"not a range: {spec!r} (expected e.g. '[0, 1]', '(0, 1]', '>= 0', '== -1')")
    op, number = match.groups()
    bound = _bound(number, op in (">=", "<=", "=="))
    return Interval(low=bound if op in (">", ">=", "==") else None, high=bound if op in ("<", "<=", "==") else None)


@functools.lru_cache(maxsize=None)
def parse(spec: str) -> Range:
    """The :class:`Range` a range string declares; a malformed one is a ValueError (a bug in a table)."""
    body, _, note = spec.partition(";")
    return Range(tuple(_interval(part.strip()) for part in body.split(" or ")), note.strip())


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def violations(values: dict, table: dict):
    """``(key, value, Range)`` for each key of ``table`` whose number in ``values`` is outside its range, in the
    table's order (a value that is not a number -- None, a string -- is not checked)."""
    for key, spec in table.items():
        value = values.get(key)
        if is_number(value) and value not in parse(spec):
            yield key, value, parse(spec)
