"""What every semi-supervised learner trains on, checked against the labels the unlabeled set keeps back.

A learner whose unlabeled path is dead -- its mask never set, or its pseudo-labels wrong -- still trains and still
reports accuracies. :class:`PseudoLabelMonitor` makes the path visible, step by step, for every method:

- It reads the pseudo-labels and the mask (or the per-sample weights) at the unsupervised loss itself: a forward
  hook on the learner's ``consistency_loss`` module (USB's ``ConsistencyLoss``; FixMatch, FlexMatch, FreeMatch,
  SoftMatch, ABC's and Adsh's and InPL's FixMatch part, Ada-CM). Learners with their own loss report through
  :meth:`PseudoLabelMonitor.record` (CPE: its long-tailed expert, which learns every confident pseudo-label; ReMoP:
  the confident unlabeled rows of its center loss, as ``remop``). A learner with an
  ``attach_pseudo_label_sources(monitor)`` method hooks its own losses (USB's TRAS: its auxiliary head's loss, as
  ``tras``; see :mod:`remop_usb.usb_compat.imb_algorithms` for what USB's other imbalanced algorithms train on).
- The rows' true labels come from the unlabeled dataset's kept-back ``targets`` (-1: unknown, left out), indexed by
  the batch's ``idx_ulb``.

Per step it adds to USB's ``log_dict`` (so to log.txt, TensorBoard and W&B), for each source ``s`` (``pl`` for the
unsupervised loss):

- ``train/s_mask``: the mean of the mask (the fraction of rows passing a hard mask; SoftMatch's mean weight);
- ``train/s_acc``: the mask-weighted accuracy of the pseudo-labels (argmax of soft ones) that pass -- what the
  learner actually trains on; absent when no row passes.

``history`` keeps, per source, the last :data:`HISTORY` steps' figures as rows ``[it, mask, n, passed, acc]``
(``n``: rows, ``passed``: the mask's sum); it is saved in checkpoints, so a resumed run summarises the same steps as
an uninterrupted one.
"""

from __future__ import annotations

import numpy as np
import torch
from semilearn.core.hooks import Hook

HISTORY = 10000


class PseudoLabelMonitor(Hook):
    """Records each step's pseudo-labels and mask; adds ``train/<source>_mask`` and ``_acc`` to the log."""

    checkpoint_attrs = ("history",)  # figures of past steps: a resumed run's summary covers the whole run

    def __init__(self, targets):
        self.targets = torch.as_tensor(np.asarray(targets), dtype=torch.long)
        self.idx_ulb = None
        self.step = {}
        self.history = {}

    # -- capture ---------------------------------------------------------------------------------------------------
    def batch(self, kwargs):
        """The unlabeled batch's dataset indices (from the batch dict the learner is handed)."""
        idx = kwargs.get("idx_ulb")
        self.idx_ulb = idx.detach().cpu().long() if isinstance(idx, torch.Tensor) else None

    def consistency_hook(self, module, args, kwargs, output):
        targets = args[1] if len(args) > 1 else kwargs.get("targets")
        mask = args[3] if len(args) > 3 else kwargs.get("mask")
        self.record("pl", targets, mask)

    def record(self, source, pseudo_label, mask=None):
        """The pseudo-labels (N, or N x K soft) and mask (N; None: all) of this step's unlabeled rows."""
        if self.idx_ulb is None or pseudo_label is None or source in self.step:
            return  # the first loss of a source in a step is its learner's
        pseudo = pseudo_label.detach()
        pseudo = pseudo.argmax(dim=-1) if pseudo.dim() > 1 else pseudo
        n = pseudo.shape[0]
        weight = torch.ones(n) if mask is None else mask.detach().float().reshape(-1).cpu()
        if weight.numel() != n or self.idx_ulb.numel() != n:
            return  # not one row per unlabeled image of the batch (e.g. a learner's own extra views)
        truth = self.targets[self.idx_ulb]
        known = (truth >= 0).float()
        correct = (pseudo.cpu() == truth).float()
        passed = float((weight * known).sum())
        self.step[source] = {"mask": float(weight.mean()), "n": n, "passed": passed,
                             "acc": float((weight * known * correct).sum()) / passed if passed > 0 else None}

    # -- per step --------------------------------------------------------------------------------------------------
    def before_train_step(self, algorithm):
        self.step = {}

    def after_train_step(self, algorithm):
        for source, fig in self.step.items():
            algorithm.log_dict[f"train/{source}_mask"] = fig["mask"]
            if fig["acc"] is not None:
                algorithm.log_dict[f"train/{source}_acc"] = fig["acc"]
            rows = self.history.setdefault(source, [])
            rows.append([int(algorithm.it), fig["mask"], fig["n"], fig["passed"], fig["acc"]])
            del rows[:-HISTORY]

    def summary(self, source="pl", last=None):
        """Mean mask and pass-weighted pseudo-label accuracy over the last ``last`` recorded steps (all: None)."""
        rows = self.history.get(source, [])
        rows = rows[-last:] if last else rows
        if not rows:
            return None
        passed = sum(r[3] for r in rows)
        acc = sum(r[4] * r[3] for r in rows if r[4] is not None) / passed if passed else None
        return {"steps": len(rows), "mask": sum(r[1] for r in rows) / len(rows), "acc": acc}


def run_summary(algorithm):
    """results.json's ``pseudo_labels``: per source, the mean mask and pseudo-label accuracy over the final tenth of
    the steps this process trained (``final``) and over all of them (``run``); {} without a monitor."""
    monitor = getattr(algorithm, "pseudo_label_monitor", None)
    if monitor is None:
        return {}
    sources = sorted(monitor.history)
    window = max(1, int(algorithm.args.num_train_iter) // 10)
    return {s: {"final": monitor.summary(s, last=window), "run": monitor.summary(s)} for s in sources}


def attach_pseudo_label_monitor(algorithm):
    """Register the monitor on a learner with an unlabeled set whose labels are kept back (None otherwise)."""
    ulb = (algorithm.dataset_dict or {}).get("train_ulb")
    targets = getattr(ulb, "targets", None)
    if targets is None or len(targets) == 0:
        return None
    monitor = PseudoLabelMonitor(targets)
    loss = getattr(algorithm, "consistency_loss", None)
    if isinstance(loss, torch.nn.Module):
        loss.register_forward_hook(monitor.consistency_hook, with_kwargs=True)
    extra_sources = getattr(algorithm, "attach_pseudo_label_sources", None)
    if extra_sources is not None:  # a learner's own unlabeled loss beside consistency_loss (USB's TRAS)
        extra_sources(monitor)
    process_batch = algorithm.process_batch

    def process_batch_seeing_indices(*args, **kwargs):
        monitor.batch(kwargs)
        return process_batch(*args, **kwargs)

    algorithm.process_batch = process_batch_seeing_indices
    algorithm.pseudo_label_monitor = monitor
    algorithm.register_hook(monitor, "PseudoLabelMonitor", "NORMAL")  # after the step, before LoggingHook
    return monitor


def record(algorithm, source, pseudo_label, mask=None):
    """Report a learner's own pseudo-labels (learners whose unlabeled loss is not ``consistency_loss``)."""
    monitor = getattr(algorithm, "pseudo_label_monitor", None)
    if monitor is not None:
        monitor.record(source, pseudo_label, mask)
