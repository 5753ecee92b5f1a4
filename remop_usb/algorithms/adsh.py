"""Adsh -- Guo & Li, "Class-Imbalanced Semi-Supervised Learning with Adaptive Thresholding", ICML 2022 -- as
``imb_algorithm: adsh`` (FixMatch only), re-registered over USB's with its known bugs corrected by default.

What Adsh computes. A FixMatch pseudo-label ``yhat = argmax p(x_w)`` is kept when its score ``-log p_max`` is within
the class's threshold, i.e.

    mask(x) = [ p_max(x) >= exp(-s_yhat) ]                                   (per-class thresholds on -log p)

After every epoch the thresholds are refitted on the whole unlabeled set, predicted by the EMA model:

    C_k   = confidences p_max of the samples predicted as k, sorted in decreasing order
    rho   = |{c in C_h : c >= tau_1}| / |C_h|       (h: the head class, tau_1 = adsh_tau_1 = 0.95)
    n_k   = floor(rho * |C_k|)                        (keep the same proportion of every class)
    s_k   = -log C_k[n_k]                             (1-based: the n_k-th largest confidence)

so the head class keeps exactly its samples above tau_1 and every other class the same top fraction of its own
predictions, however low their confidence (minority classes get lower thresholds). Before the first refit,
s_k = -log tau_1: FixMatch's threshold.

Corrected behaviour (default, ``adsh_usb_bugs: False``) against USB 0.3.2's (``adsh_usb_bugs: True``, which runs
USB's own ``AdaptiveThresholdingHook`` unchanged):

===========================  ===================================  ==============================================
                             USB 0.3.2                            here
===========================  ===================================  ==============================================
initial s_k                  0.95 (threshold exp(-0.95) = 0.387:  -log tau_1 (threshold tau_1 = 0.95)
                             first epoch keeps almost everything)
head class h                 class 0                              the most frequent labeled class (FER label
                                                                  order does not start with the head: RAF-DB's
                                                                  class 0 is neutral, its head is happy)
rho                          (m - 1) / |C_h| with m the count     m / |C_h|
                             >= tau_1 (one head sample too few);
                             1.0 when m = 0 (every sample kept)
n_k = 0 (rho * |C_k| < 1)    index -1: the smallest confidence,   s_k = -log tau_1 (no proportion to keep: the
                             every sample of class k kept         fixed threshold)
class never predicted        s_k left as it was (initially 0.95)  s_k = -log tau_1
no sample predicted as h     rho = 1.0, every sample kept         s_k = -log tau_1 for every class
===========================  ===================================  ==============================================

Masks compare probabilities with the stored probability thresholds ``exp(-s_k)`` (kept exactly, not recomputed
from the scores), so a refit keeps exactly ``n_k`` samples of class k (ties at the threshold aside).
Not changed: as in USB, the pseudo-label is argmax p (the authors' code rectifies p by the thresholds before the
argmax) and the thresholds are not stored in checkpoints (a resumed run starts again from -log tau_1).
"""

from __future__ import annotations

import numpy as np
import torch
from semilearn.algorithms.hooks import MaskingHook
from semilearn.algorithms.utils import SSL_Argument, str2bool
from semilearn.core.utils import IMB_ALGORITHMS
from semilearn.imb_algorithms.adsh.adsh import Adsh as USBAdsh

from .imb_common import labeled_class_counts, require_base_algorithm


def head_class(labels, num_classes: int) -> int:
    """The most frequent class of ``labels`` (the lowest index among ties: ``np.argmax``'s first maximum)."""
    return int(np.argmax(labeled_class_counts(labels, num_classes).numpy()))


def adaptive_thresholds(conf, pred, num_classes: int, tau_1: float, head: int) -> torch.Tensor:
    """Per-class probability thresholds exp(-s_k) refitted on unlabeled confidences ``conf`` and predictions
    ``pred`` (module docstring; corrected rule). Always finite and in (0, 1]."""
    conf, pred = torch.as_tensor(conf, dtype=torch.float64), torch.as_tensor(pred)
    thresholds = torch.full((num_classes,), float(tau_1), dtype=torch.float64)
    head_conf = conf[pred == head]
    if head_conf.numel() == 0:
        return thresholds
    kept_in_head = int((head_conf >= tau_1).sum())
    for k in range(num_classes):
        c_k = torch.sort(conf[pred == k], descending=True)[0]
        n_k = kept_in_head * c_k.numel() // head_conf.numel()  # floor(rho * |C_k|), exactly
        if n_k >= 1:
            thresholds[k] = c_k[n_k - 1]
    return thresholds


class AdaptiveThresholds(MaskingHook):
    """Adsh's masking with the corrected refit: thresholds start at tau_1 and are refitted after every epoch."""

    #: what a checkpoint keeps of this hook (the rest comes from the config)
    checkpoint_attrs = ("thresholds",)

    def __init__(self, num_classes: int, tau_1: float, head: int):
        super().__init__()
        self.num_classes, self.tau_1, self.head = num_classes, tau_1, head
        self.thresholds = torch.full((num_classes,), float(tau_1), dtype=torch.float64)

    @property
    def adsh_s(self) -> torch.Tensor:
        """The scores s_k = -log threshold_k (USB's attribute name)."""
        return -torch.log(self.thresholds)

    @torch.no_grad()
    def masking(self, algorithm, logits_x_ulb, softmax_x_ulb=True, *args, **kwargs):
        probs = algorithm.compute_prob(logits_x_ulb.detach()) if softmax_x_ulb else logits_x_ulb.detach()
        max_probs, pred = torch.max(probs, dim=-1)
        thresholds = self.thresholds.to(max_probs.device)[pred]
        return (max_probs.double() >= thresholds).to(max_probs.dtype)

    def refit(self, conf, pred):
        self.thresholds = adaptive_thresholds(conf, pred, self.num_classes, self.tau_1, self.head)

    def after_train_epoch(self, algorithm):
        logits = torch.from_numpy(algorithm.evaluate("eval_ulb", return_logits=True)["eval_ulb/logits"])
        conf, pred = torch.max(algorithm.compute_prob(logits.double()), dim=-1)
        self.refit(conf, pred)
        algorithm.print_fn("adsh thresholds: " + ", ".join(f"{t:.4f}" for t in self.thresholds.tolist()))


class Adsh(USBAdsh):
    """USB's Adsh (its unlabeled evaluation loader and hook slot) with the corrected threshold refit by default."""

    def __init__(self, args, **kwargs):
        require_base_algorithm(args, "adsh", ("fixmatch",))
        self.adsh_usb_bugs = args.adsh_usb_bugs
        super().__init__(args, **kwargs)

    def set_hooks(self):
        super().set_hooks()  # USB's AdaptiveThresholdingHook as "MaskingHook"
        if not self.adsh_usb_bugs:
            head = head_class(self.dataset_dict["train_lb"].targets, self.num_classes)
            self.register_hook(AdaptiveThresholds(self.num_classes, self.tau_1, head), "MaskingHook")

    @staticmethod
    def get_argument():
        return USBAdsh.get_argument() + [
            SSL_Argument("--adsh_usb_bugs", str2bool, False,
                         "True: USB 0.3.2's threshold refit (initial score 0.95, class 0 as head, off-by-one rho, "
                         "index -1); False: the corrected one"),
        ]

    RANGES = {"adsh_tau_1": "(0, 1]"}  # the head class's confidence threshold; s_k = -log tau_1


# Register quietly over USB's class (USB's Register prints a line for every overwritten key).
IMB_ALGORITHMS._dict["adsh"] = Adsh
