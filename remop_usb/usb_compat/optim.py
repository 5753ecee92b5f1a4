"""Optimizers and learning-rate schedules for every algorithm: USB's ``set_optimizer``, replaced.

============================================  ======================================================================
quirk in 0.3.2                                what we do
============================================  ======================================================================
``get_optimizer``: SGD and AdamW only         :func:`build_optimizer`: ``optim: SGD | AdamW | Adam`` (Adam is the
                                              ReMoP paper's: lr 1e-4, no decay)
cosine schedule only                          :func:`build_scheduler`: ``lr_schedule: cosine`` (USB's, with
                                              ``num_warmup_iter`` warm-up) or ``constant``
``ImbAlgorithmBase.set_optimizer`` (beyond    :func:`set_optimizer` on ``AlgorithmBase`` and ``ImbAlgorithmBase``:
  ImageNet / ViT) drops the schedule            the same optimizer and schedule for plain and imbalanced algorithms
  (``scheduler = None``) and decays BN and
  biases (``bn_wd_skip=False``)
============================================  ======================================================================

Parameters named by the net's ``no_weight_decay()`` (biases, BN, ReMoP's centers) get no weight decay.
"""

from __future__ import annotations

import torch
from semilearn.core.utils import get_cosine_schedule_with_warmup
from semilearn.nets.utils import param_groups_layer_decay, param_groups_weight_decay

OPTIMIZERS = ("SGD", "AdamW", "Adam")
SCHEDULES = ("cosine", "constant")


def build_optimizer(net, name, lr, momentum=0.9, weight_decay=0.0, layer_decay=1.0):
    no_decay = net.no_weight_decay() if hasattr(net, "no_weight_decay") else []
    if layer_decay != 1.0:
        groups = param_groups_layer_decay(net, lr, weight_decay, no_weight_decay_list=no_decay,
                                          layer_decay=layer_decay)
    else:
        groups = param_groups_weight_decay(net, weight_decay, no_weight_decay_list=no_decay)
    if name == "SGD":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True)
    if name == "AdamW":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    if name == "Adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; expected one of {OPTIMIZERS}")


def build_scheduler(optimizer, schedule, num_train_iter, num_warmup_iter=0):
    if schedule == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, num_train_iter, num_warmup_steps=num_warmup_iter)
    if schedule == "constant":
        return None
    raise ValueError(f"unknown lr_schedule {schedule!r}; expected one of {SCHEDULES}")


def set_optimizer(self):
    """``AlgorithmBase.set_optimizer`` for every algorithm, plain or imbalanced."""
    args = self.args
    optimizer = build_optimizer(self.model, args.optim, args.lr, args.momentum, args.weight_decay, args.layer_decay)
    scheduler = build_scheduler(optimizer, args.lr_schedule, self.num_train_iter, args.num_warmup_iter)
    return optimizer, scheduler


def install():
    from semilearn.core.algorithmbase import AlgorithmBase, ImbAlgorithmBase

    AlgorithmBase.set_optimizer = set_optimizer
    ImbAlgorithmBase.set_optimizer = set_optimizer
