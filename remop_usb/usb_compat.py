"""Every adaptation to semilearn 0.3.2's quirks, in one place.

USB 0.3.2 assumes CUDA everywhere, a fixed list of datasets and optimizers, and DDP-wrapped models. Rather than
forking it, :func:`install` patches the few functions that carry those assumptions, once, before any algorithm is
built. Each patch names the quirk it answers (see ``../shared/reference/usb-semilearn-0.3.2.md``):

===============================  ==========================================================================
quirk in 0.3.2                   what we do
===============================  ==========================================================================
TimerHook uses CUDA events       wall-clock timer (CUDA-synchronised when on GPU)
process_batch / evaluate .cuda   move tensors with ``.to(device)``; evaluation in :mod:`remop_usb.evaluation`
send_model_cuda raises on CPU    :func:`place_model`: CPU, one GPU or DDP (gloo on CPU, nccl on GPU)
ABC & co. expect ``.module``     :class:`ModuleWrapper` gives every non-DDP model a ``.module``
torch.load weights_only=True     USB's own checkpoints are loaded with weights_only=False
get_dataset is a fixed if/elif   FER datasets dispatched first, USB's names fall through
optimizers SGD/AdamW only        :mod:`remop_usb.optim` adds Adam and a constant schedule
supervised omits features        USB's ``supervised``/``fullysupervised`` re-registered returning ``feat``
ABC evaluates logits_aux only    ABC declares its heads (aux first, linear beside it) for results.json
NaN losses are stepped on         ParamUpdateHook stops training on a non-finite loss, naming step and terms
checkpoints store it+1, epoch+1   completed iterations and their epoch, so a resumed run finishes every step
ruamel.yaml >= 0.18 load()       configs are read by :mod:`remop_usb.config`, never by USB
mp.spawn with zero GPUs          the launcher never spawns without GPUs (:mod:`remop_usb.launch`)
===============================  ==========================================================================
"""

from __future__ import annotations

import math
import time
from inspect import signature

import torch
import torch.nn as nn

from .errors import UserError

_INSTALLED = False


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


def device_of(algorithm) -> torch.device:
    """The device an algorithm trains on: ``cuda:<gpu>`` when args.gpu is set and CUDA exists, else CPU."""
    gpu = getattr(algorithm, "gpu", None)
    if gpu is not None and torch.cuda.is_available():
        return torch.device("cuda", gpu)
    return torch.device("cpu")


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


def process_batch(self, input_args=None, **kwargs):
    """AlgorithmBase.process_batch without ``.cuda``: keep the train_step's arguments, move them to the device."""
    if input_args is None:
        input_args = list(signature(self.train_step).parameters.keys())
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


def _load_model_trusting_own_checkpoints(original):
    """USB's load_model calls torch.load with torch>=2.6's weights_only=True default; its checkpoints hold numpy."""

    def load_model(self, load_path):
        real_load = torch.load

        def trusting_load(*args, **kwargs):
            kwargs.setdefault("weights_only", False)
            return real_load(*args, **kwargs)

        torch.load = trusting_load
        try:
            return original(self, load_path)
        finally:
            torch.load = real_load

    return load_model


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


def _save_progress_exactly(original):
    """USB stores ``it + 1`` and ``epoch + 1`` in every checkpoint. Mid-epoch that makes a resumed run skip to the
    next epoch and finish short of num_train_iter; after the last step (``it`` already incremented) it is one too
    many. Store the number of completed iterations and the epoch they fall in instead."""

    def get_save_dict(self):
        save_dict = original(self)
        completed = min(self.it + 1, self.num_train_iter)
        save_dict["it"] = completed
        save_dict["epoch"] = completed // max(1, self.num_iter_per_epoch)
        return save_dict

    return get_save_dict


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
            for epoch in range(self.start_epoch, self.epochs):
                self.epoch = epoch
                if self.it >= self.num_train_iter:
                    break
                self.call_hook("before_train_epoch")
                for data_lb in self.loader_dict["train_lb"]:
                    if self.it >= self.num_train_iter:
                        break
                    self.call_hook("before_train_step")
                    self.out_dict, self.log_dict = self.train_step(**self.process_batch(**data_lb))
                    self.call_hook("after_train_step")
                    self.it += 1
                self.call_hook("after_train_epoch")
            self.call_hook("after_run")

    # Register quietly: USB's Register prints a line for every overwritten key.
    ALGORITHMS._dict["fullysupervised"] = Supervised
    ALGORITHMS._dict["supervised"] = Supervised
    return Supervised


def _declare_abc_heads():
    """ABC predicts with its auxiliary balanced head; report it first and the linear head beside it."""
    from semilearn.imb_algorithms.abc.abc import ABC

    ABC.prediction_heads = (("aux", "logits_aux"), ("linear", "logits"))


def install():
    """Apply every patch (idempotent). Called by ``remop_usb.registry.load()`` before anything is built."""
    global _INSTALLED
    if _INSTALLED:
        return
    import semilearn.core.algorithmbase as algorithmbase
    from semilearn.core.hooks import TimerHook

    from . import evaluation, optim
    from datasets_fer import usb as fer_usb

    from semilearn.core.hooks import ParamUpdateHook

    ParamUpdateHook.after_train_step = _stop_on_non_finite_loss(ParamUpdateHook.after_train_step)
    TimerHook.before_run = _timer_before_run
    TimerHook.before_train_step = _timer_before_train_step
    TimerHook.after_train_step = _timer_after_train_step

    algorithmbase.AlgorithmBase.process_batch = process_batch
    algorithmbase.AlgorithmBase.evaluate = evaluation.evaluate
    algorithmbase.AlgorithmBase.load_model = _load_model_trusting_own_checkpoints(
        algorithmbase.AlgorithmBase.load_model)
    algorithmbase.AlgorithmBase.get_save_dict = _save_progress_exactly(algorithmbase.AlgorithmBase.get_save_dict)
    algorithmbase.AlgorithmBase.set_optimizer = optim.set_optimizer
    algorithmbase.ImbAlgorithmBase.set_optimizer = optim.set_optimizer
    algorithmbase.get_dataset = fer_usb.dispatching_get_dataset(algorithmbase.get_dataset)
    _supervised_with_features()
    _declare_abc_heads()
    _INSTALLED = True
