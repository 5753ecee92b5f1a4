"""Every adaptation to semilearn 0.3.2's quirks, in one place: this package.

The general patches live in this module; larger topics have their own submodule here (each with a docstring table
of the quirks it answers); those that patch USB have an ``install()``, called by :func:`install` in the order of
:data:`TOPIC_MODULES`.

USB 0.3.2 assumes CUDA everywhere, a fixed list of datasets and optimizers, and DDP-wrapped models. Rather than
forking it, :func:`install` patches the few functions that carry those assumptions, once, before any algorithm is
built. Each patch names the quirk it answers (see ``../shared/reference/usb-semilearn-0.3.2.md``):

===============================  ==========================================================================
quirk in 0.3.2                   what we do
===============================  ==========================================================================
TimerHook uses CUDA events       wall-clock timer (CUDA-synchronised when on GPU)
process_batch / evaluate .cuda   move tensors with ``.to(device)``; evaluation in :mod:`.evaluation`
process_batch drops every key    keys from the first ``train_step`` in the MRO that names them
  under train_step(*a, **kw)     (:func:`batch_keys`), so a wrapper needs no process_batch of its own
send_model_cuda raises on CPU    :func:`place_model`: CPU, one GPU or DDP (gloo on CPU, nccl on GPU)
ABC & co. expect ``.module``     :class:`ModuleWrapper` gives every non-DDP model a ``.module``
get_dataset is a fixed if/elif   FER datasets dispatched first, USB's names fall through
get_logger adds a file handler   :mod:`.run_logger`: a run's logger drops the file handlers an earlier run of the
  per call, never removes one    same name left in this process (they wrote into, and reopened, its log.txt)
optimizers SGD/AdamW only        :mod:`.optim` adds Adam and a constant schedule (its own table)
supervised omits features        USB's ``supervised``/``fullysupervised`` re-registered returning ``feat``
ABC evaluates logits_aux only    ABC declares its heads (aux first, linear beside it) for results.json
ABC's rates min(N)/N_c: a class  :func:`abc_keep_rates`: N_min over the classes that have labeled images;
  without labeled images makes   a class without any keeps rate 1 (the limit of a probability
  them 0 and NaN (bernoulli      min(1, N_min / N_c) as N_c -> 0: kept always, like the rarest class)
  raises "p_in >= 0 && <= 1")
NaN losses are stepped on        ParamUpdateHook stops training on a non-finite loss, naming step and terms
checkpoints, resume              :mod:`.checkpointing`: atomic, checked, exact resume (its own table)
a signal kills a run mid-step    :mod:`.preemption`: SIGUSR2 checkpoints at the step's end and exits (table)
ruamel.yaml >= 0.18 load()       configs are read by :mod:`remop_usb.config`, never by USB
USB's CReST, SAW, DARP, DASO,    :mod:`.imb_algorithms` (its own table); CoSSL refused in one line
  DebiasPL, TRAS, CoSSL
ngpus_per_node, saving on every  :mod:`.distributed` (its own table)
  DDP process
===============================  ==========================================================================
"""

from __future__ import annotations

import functools
import importlib
import math
import time
from inspect import Parameter, signature

import numpy as np
import torch
import torch.nn as nn

from ..devices import device_of  # noqa: F401  (here for the algorithms and the topic modules)
from ..errors import UserError

_INSTALLED = False
#: the submodules that patch USB, installed in this order by :func:`install` (``distributed`` and
#: ``unlabeled_views`` patch nothing: the launcher and the algorithms call their functions; ``wandb`` is installed
#: by :func:`remop_usb.tracking.install`, which the launcher calls before it builds an algorithm)
TOPIC_MODULES = ("amp", "checkpointing", "ema", "evaluation", "imb_algorithms", "learner_checkpoints", "loaders",
                 "optim", "speed", "preemption")


class ModuleWrapper(nn.Module):
    """A transparent wrapper exposing ``.module`` (and DDP's ``module.`` state-dict prefix) without DDP."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a ModuleWrapper / DDP / DataParallel."""
    return model.module if hasattr(model, "module") else model


def place_model(args, model: nn.Module, clip_batch: bool = True) -> nn.Module:
    """Replacement for USB's ``send_model_cuda``: CPU, one GPU, or DDP, always with a ``.module``."""
    if getattr(args, "distributed", False):
        if torch.cuda.is_available() and args.gpu is not None:
            torch.cuda.set_device(args.gpu)
            if clip_batch:
                args.batch_size = int(args.batch_size / torch.cuda.device_count())
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model.cuda(args.gpu))
            return nn.parallel.DistributedDataParallel(model, device_ids=[args.gpu], broadcast_buffers=False,
                                                       find_unused_parameters=True)
        return nn.parallel.DistributedDataParallel(model, broadcast_buffers=False, find_unused_parameters=True)
    if args.gpu is not None and torch.cuda.is_available():
        torch.cuda.set_device(args.gpu)
        model = model.cuda(args.gpu)
    return ModuleWrapper(model)


# -- patched methods ------------------------------------------------------------------------------------------------

def _to_device(value, device):
    if isinstance(value, dict):
        return {k: v.to(device, non_blocking=True) for k, v in value.items()}
    return value.to(device, non_blocking=True)


def batch_keys(algorithm) -> list:
    """The batch keys ``train_step`` takes: the parameter names of the first ``train_step`` along the MRO that
    names them. A wrapper's ``train_step(*args, **kwargs)`` (ABC's, ReMoP's, a plugin's) names none; USB 0.3.2 then
    drops every batch tensor unless the wrapper also overrides ``process_batch``."""
    return list(_batch_keys_of(type(algorithm)))


@functools.lru_cache(maxsize=None)
def _batch_keys_of(cls) -> tuple:
    variadic = (Parameter.VAR_POSITIONAL, Parameter.VAR_KEYWORD)
    for klass in cls.__mro__:
        step = klass.__dict__.get("train_step")
        if step is None:
            continue
        names = tuple(n for n, p in signature(step).parameters.items() if n != "self" and p.kind not in variadic)
        if names:
            return names
    return ()


def process_batch(self, input_args=None, **kwargs):
    """AlgorithmBase.process_batch without ``.cuda``: keep the train_step's arguments (:func:`batch_keys`), move
    them to the device."""
    if input_args is None:
        input_args = batch_keys(self)
    device = device_of(self)
    return {k: _to_device(v, device) for k, v in kwargs.items() if k in input_args and v is not None}


def _timer_before_run(self, algorithm):
    algorithm._remop_batch_start = time.perf_counter()


def _timer_before_train_step(self, algorithm):
    algorithm._remop_prefetch_end = time.perf_counter()


def _timer_after_train_step(self, algorithm):
    algorithm.log_dict["lr"] = algorithm.optimizer.param_groups[-1]["lr"]
    start = getattr(algorithm, "_remop_batch_start", None)
    end = getattr(algorithm, "_remop_prefetch_end", None)
    if start is not None and end is not None:
        algorithm.log_dict["train/prefetch_time"] = end - start
    algorithm._remop_batch_start = time.perf_counter()


class NonFiniteLoss(UserError):
    """Training stopped because a loss was NaN or infinite, before that step touched the weights."""


def _stop_on_non_finite_loss(original):
    """Wrap ParamUpdateHook.after_train_step: a NaN/inf loss stops training before backward() and the step."""

    def after_train_step(self, algorithm):
        loss = algorithm.out_dict["loss"]
        if not torch.isfinite(loss.detach()).all():
            terms = [f"{k}={v}" for k, v in algorithm.log_dict.items()
                     if isinstance(v, (int, float)) and not math.isfinite(v)]
            raise NonFiniteLoss(
                f"the loss is not finite at iteration {algorithm.it + 1} "
                f"({', '.join(terms) if terms else 'loss=' + str(loss.item())}); training stopped before this step "
                f"updated the weights (the last checkpoint is in {algorithm.save_dir}/{algorithm.save_name})")
        return original(self, algorithm)

    return after_train_step


def train_epochs(algorithm, batches):
    """USB's epoch loop (``AlgorithmBase.train`` between ``before_run`` and ``after_run``): from ``start_epoch``, the
    epoch hooks around steps on ``batches()`` (an iterable of batch dicts per epoch), each step between its hooks,
    until ``num_train_iter`` steps. For learners whose loop differs only in what a batch is (Vanilla: labeled
    batches alone; CReST: around it, its generations)."""
    for epoch in range(algorithm.start_epoch, algorithm.epochs):
        algorithm.epoch = epoch
        if algorithm.it >= algorithm.num_train_iter:
            break
        algorithm.call_hook("before_train_epoch")
        for batch in batches():
            if algorithm.it >= algorithm.num_train_iter:
                break
            algorithm.call_hook("before_train_step")
            algorithm.out_dict, algorithm.log_dict = algorithm.train_step(**algorithm.process_batch(**batch))
            algorithm.call_hook("after_train_step")
            algorithm.it += 1
        algorithm.call_hook("after_train_epoch")


def _supervised_with_features():
    """USB's supervised learner returns no features (ReMoP and ABC read them) and trains one step too many."""
    from semilearn.algorithms.fullysupervised.fullysupervised import FullySupervised
    from semilearn.core.utils import ALGORITHMS

    class Supervised(FullySupervised):
        """Supervised-only learner ("Vanilla") on the labeled split; same loss as USB's, plus its features."""

        def train_step(self, x_lb, y_lb):
            with self.amp_cm():
                outputs = self.model(x_lb)
                sup_loss = self.ce_loss(outputs["logits"], y_lb, reduction="mean")
            out_dict = self.process_out_dict(loss=sup_loss, feat={"x_lb": outputs["feat"]})
            return out_dict, self.process_log_dict(sup_loss=sup_loss.item())

        def train(self):
            self.model.train()
            self.call_hook("before_run")
            train_epochs(self, lambda: self.loader_dict["train_lb"])
            self.call_hook("after_run")

    # Register quietly: USB's Register prints a line for every overwritten key.
    ALGORITHMS._dict["fullysupervised"] = Supervised
    ALGORITHMS._dict["supervised"] = Supervised
    return Supervised


def _declare_abc_heads():
    """ABC predicts with its auxiliary balanced head; report it first and the linear head beside it."""
    from semilearn.imb_algorithms.abc.abc import ABC

    ABC.prediction_heads = (("aux", "logits_aux"), ("linear", "logits"))


def abc_keep_rates(class_counts) -> torch.Tensor:
    """ABC's Bernoulli rates per class, ``N_min / N_c`` with ``N_min`` the smallest non-zero labeled count, and 1
    for a class with no labeled image (float64, as USB's).

    The rate is the probability that a sample labeled (or, increasingly over training, pseudo-labeled) ``c`` enters
    the balanced head's loss, so that every class contributes ``N_min`` labeled samples in expectation. USB takes
    ``N_min`` over all classes: one empty class makes it 0, every other rate 0 (the balanced head sees no label) and
    its own 0/0 = NaN. Balance can only be struck among the classes that have samples; a class with none is rarer
    than the rarest of them, whose rate is 1, and its rate is a probability -- so 1: its pseudo-labels are always
    kept. No labeled sample ever reads it."""
    counts = torch.as_tensor(np.asarray(class_counts), dtype=torch.float64)
    present = counts > 0
    if not present.any():
        return torch.ones_like(counts)
    return torch.where(present, counts[present].min() / counts.clamp(min=1), torch.ones_like(counts))


def _abc_rates_without_empty_classes():
    """ABC.__init__ with :func:`abc_keep_rates` in place of USB's ``min(dist) / dist``."""
    from semilearn.imb_algorithms.abc.abc import ABC

    original = ABC.__init__

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        with np.errstate(invalid="ignore", divide="ignore"):  # USB's 0/0, replaced right below
            original(self, *args, **kwargs)
        counts = np.bincount(np.asarray(self.dataset_dict["train_lb"].targets, dtype=np.int64),
                             minlength=self.num_classes)
        self.lb_class_dist = abc_keep_rates(counts)

    ABC.__init__ = __init__


def install():
    """Apply every patch (idempotent). Called by ``remop_usb.registry.load()`` before anything is built."""
    global _INSTALLED
    if _INSTALLED:
        return
    import semilearn.core.algorithmbase as algorithmbase
    from semilearn.core.hooks import TimerHook

    from datasets_fer import usb as fer_usb

    from semilearn.core.hooks import ParamUpdateHook

    ParamUpdateHook.after_train_step = _stop_on_non_finite_loss(ParamUpdateHook.after_train_step)
    TimerHook.before_run = _timer_before_run
    TimerHook.before_train_step = _timer_before_train_step
    TimerHook.after_train_step = _timer_after_train_step

    algorithmbase.AlgorithmBase.process_batch = process_batch
    algorithmbase.get_dataset = fer_usb.dispatching_get_dataset(algorithmbase.get_dataset)
    _supervised_with_features()
    _declare_abc_heads()
    _abc_rates_without_empty_classes()
    for name in TOPIC_MODULES:
        importlib.import_module(f"{__name__}.{name}").install()
    _INSTALLED = True
