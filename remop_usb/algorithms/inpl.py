"""InPL as a USB imbalanced algorithm: ``imb_algorithm: inpl`` on ``algorithm: fixmatch``.

Paper: Yu, Li, Lee, "InPL: Pseudo-labeling the Inliers First for Imbalanced Semi-supervised Learning", ICLR 2023
(authors' code: ZhuoranYu/TorchSSL, ``models/inpl``). Implemented here:

- The energy score of a sample under the classifier (after Liu et al., NeurIPS 2020): E(x) = -T * logsumexp(z(x) / T) of
  the weak view's logits z, T = 1 in the paper (``inpl_temperature``).
- Energy-based pseudo-labelling: an unlabeled sample is pseudo-labeled with argmax softmax(z_w) when its
  energy is at most the cutoff, E(x_w) <= e_cutoff (``inpl_energy_cutoff``) -- an "inlier" of the labeled
  distribution -- instead of FixMatch's max softmax(z_w) >= p_cutoff. FixMatch's step is otherwise unchanged (same
  weak/strong views, hard labels, CE on the strong view, mean over the unlabeled batch, weight ulb_loss_ratio);
  ``p_cutoff`` is used only before an ``auto`` cutoff is measured (below).
- The adaptive marginal loss (off in the authors' long-tailed configs, ``inpl_marginal_loss``): the strong
  view's logits become z_s + tau * log(q_hat) in the unlabeled CE, q_hat an EMA (momentum ``inpl_qhat_momentum``,
  0.999) of the batch mean of softmax(z_w), updated after each step's loss; tau = ``inpl_marginal_tau`` (0.5).
- Test time: plain argmax of the linear classifier.

The released code keeps q_hat only in memory; here it is saved in the checkpoints, so a resumed run goes on with it.

**The energy cutoff.** The cutoff is on the scale of the logits, which depends on the network, its initialisation,
the data and the length of training: the paper's -9.5 (CIFAR-10-LT) and -11.5 (CIFAR-100-LT) belong to a
WideResNet trained for 250k steps, and no value carries over to another network or dataset. So
``inpl_energy_cutoff`` has no default: a run without it stops at start with one line naming the calibration
command (:func:`missing_cutoff_message`). The calibration (:func:`labeled_energy_cutoff`): the base learner
(FixMatch, same config) trained to half its schedule; the q = 0.05 quantile (:data:`CUTOFF_QUANTILE`) of the
energies of the labeled training images, measured the way the mask sees the unlabeled ones -- the training model
(not the EMA) in train mode (dropout on, BatchNorm on batch statistics) on their weak view (the labeled dataset's own
transform) -- without changing the model: its BatchNorm running statistics and every other buffer are put back
(:func:`train_mode_logits`), and the augmentations and dropout draw from a seeded RNG that is put back too, so the
same model gives the same number. ``remop-usb inpl-cutoff`` (:mod:`remop_usb.inpl_cutoff`) measures a checkpoint;
``inpl_energy_cutoff: auto`` measures the run itself at step ``num_train_iter // 2``: until then the run *is* the
base learner (FixMatch's own confidence mask, ``p_cutoff``), then the measured cutoff replaces that mask for the rest
of the run (the demo config uses it; see the README, InPL). The difference to the two-command procedure: the second
half continues from the base learner's weights instead of InPL starting again from scratch with the cutoff.
Watch ``train/inpl_mask`` and ``train/inpl_energy`` (the mean weak-view energy) in the log.
"""

from __future__ import annotations

import contextlib
import math
import os

import torch
from semilearn.algorithms.hooks import FixedThresholdingHook, MaskingHook
from semilearn.algorithms.utils import SSL_Argument, str2bool
from semilearn.core import ImbAlgorithmBase
from semilearn.core.criterions import ConsistencyLoss
from semilearn.core.utils import IMB_ALGORITHMS

from ..errors import UserError
from .imb_common import require_base_algorithm

#: q: the share of the labeled images' energies at or below the cutoff (``remop-usb inpl-cutoff``'s default, ``auto``'s)
CUTOFF_QUANTILE = 0.05
#: ``inpl_energy_cutoff: auto``: measured in the run at step num_train_iter // 2
AUTO = "auto"
_UNSET = ("None", "none", "null", "")


class CutoffValue:
    """The type of ``inpl_energy_cutoff``: a finite number, ``auto``, or None (not set; the run stops at start)."""

    def __call__(self, value):
        if value is None or str(value).strip() in _UNSET:
            return None
        if isinstance(value, bool):
            raise ValueError(value)
        if str(value).strip().lower() == AUTO:
            return AUTO
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(value)
        return number

    def __str__(self):
        return "a finite number, auto, or None"


def _unset_cutoff_origin(args):
    """Where the unset ``inpl_energy_cutoff`` comes from: ``file:line`` of the YAML key when it is unset there, the
    command line when the YAML sets it (a flag unset it), the file alone when the YAML does not hold the key."""
    from ..config import read_yaml
    from ..errors import where

    path = getattr(args, "c", "")
    if not path:
        return "command line"
    values, lines = read_yaml(path)
    if "inpl_energy_cutoff" not in values:
        return path
    return where(path, lines["inpl_energy_cutoff"]) if CutoffValue()(values["inpl_energy_cutoff"]) is None \
        else "command line"


def _base_learner_config(path):
    """The FixMatch config beside an InPL config of the generated tables (``inpl_<setting>.yaml`` ->
    ``fixmatch_<setting>.yaml``), or None."""
    folder, name = os.path.split(path or "")
    if not name.startswith("inpl"):
        return None
    sibling = os.path.join(folder, "fixmatch" + name[len("inpl"):])
    return sibling if os.path.isfile(sibling) else None


def missing_cutoff_message(args) -> str:
    """The one line a run without ``inpl_energy_cutoff`` stops with: where, why, the command, the key."""
    config = getattr(args, "c", "") or "<your config>"
    half = args.num_train_iter // 2
    base = _base_learner_config(getattr(args, "c", ""))
    if base:
        train = f"python train.py --c {base} --num_train_iter {half} --save_name fixmatch_half"
        checkpoint = os.path.join(args.save_dir, "fixmatch_half", "latest_model.pth")
    else:
        train = f"FixMatch with this config's data, network and optimiser for {half} iterations"
        checkpoint = "<its latest_model.pth>"
    return (f"{_unset_cutoff_origin(args)}: inpl_energy_cutoff is not set; InPL's energy cutoff is "
            f"on the scale of this network's logits on these data, so measure it: train the base learner to half "
            f"its schedule ({train}, with the flags you give this run), run `remop-usb inpl-cutoff --c {config} "
            f"--load_path {checkpoint}` (same flags) and set inpl_energy_cutoff to the value it prints -- or set "
            f"inpl_energy_cutoff: auto to measure it within this run at iteration {half} (README: InPL)")


def energy_score(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """E(x) = -T * logsumexp(z / T) per row; low energy = confidently in-distribution."""
    return -temperature * torch.logsumexp(logits.float() / temperature, dim=-1)


def energy_mask(logits: torch.Tensor, cutoff: float, temperature: float = 1.0) -> torch.Tensor:
    """InPL's mask: 1.0 where E(x) <= cutoff, else 0.0 (float, as USB's masks)."""
    return (energy_score(logits, temperature) <= cutoff).float()


def quantile_cutoff(energies: torch.Tensor, quantile: float) -> float:
    """The energy below which a fraction ``quantile`` of ``energies`` lies (linear interpolation)."""
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {quantile}")
    energies = torch.as_tensor(energies, dtype=torch.float64).reshape(-1)
    if energies.numel() == 0:
        raise ValueError("no energies to take a quantile of")
    return float(torch.quantile(energies, quantile))


@contextlib.contextmanager
def seeded_rng(seed: int):
    """Python's, NumPy's and torch's (CPU and CUDA) random generators seeded with ``seed``, their states put back on
    leaving: a measurement draws the same augmentations and dropout masks every time without disturbing training."""
    import random

    import numpy as np

    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_initialized() else []):
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


@contextlib.contextmanager
def train_mode_unchanged(model):
    """``model`` in train mode (dropout on, BatchNorm normalising with batch statistics) whose buffers -- BatchNorm's
    running statistics and batch counters -- are put back on leaving, as is its mode: a forward pass here changes
    nothing in the model. Gradients are the caller's business."""
    was_training = model.training
    saved = [(buffer, buffer.detach().clone()) for buffer in model.buffers()]
    model.train()
    try:
        yield model
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)
        model.train(was_training)


def even_batches(n: int, batch_size: int):
    """Indices 0..n-1 in order, cut into ceil(n / batch_size) batches whose sizes differ by at most one -- and never
    a batch of one image when n > 1 (BatchNorm in train mode needs two), so at most n // 2 batches."""
    return [chunk.tolist() for chunk in torch.arange(n).tensor_split(max(1, min(math.ceil(n / batch_size), n // 2)))]


@torch.no_grad()
def train_mode_logits(model, dataset, key="x_lb", batch_size=128, device="cpu", seed=0) -> torch.Tensor:
    """Logits of ``dataset[i][key]`` for every item, in dataset order (float32, on the CPU), as the training step
    sees them: ``model`` in train mode (:func:`train_mode_unchanged`: the model is left as it was), the items'
    own (random) transform and dropout drawn from :func:`seeded_rng` (``seed``)."""
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_sampler=even_batches(len(dataset), batch_size), num_workers=0)
    with seeded_rng(seed), train_mode_unchanged(model):
        logits = [model(batch[key].to(device))["logits"].float().cpu() for batch in loader]
    return torch.cat(logits)


def labeled_energies(algorithm, temperature=1.0) -> torch.Tensor:
    """The energies of the labeled training images under ``algorithm``'s training model, as the mask sees the
    unlabeled ones (:func:`train_mode_logits`: train mode, weak view -- the labeled dataset's own transform)."""
    from ..usb_compat import device_of

    logits = train_mode_logits(algorithm.model, algorithm.dataset_dict["train_lb"], "x_lb",
                               algorithm.args.eval_batch_size, device_of(algorithm), algorithm.args.seed)
    return energy_score(logits, temperature)


def labeled_energy_cutoff(algorithm, quantile=CUTOFF_QUANTILE, temperature=1.0, return_energies=False):
    """The calibration: the ``quantile`` of :func:`labeled_energies`, on a base-learner checkpoint loaded into
    ``algorithm`` (``remop-usb inpl-cutoff``, :mod:`remop_usb.inpl_cutoff`) or on the run itself (``auto``). With
    ``return_energies``: (cutoff, the energies it is the quantile of)."""
    energies = labeled_energies(algorithm, temperature)
    cutoff = quantile_cutoff(energies, quantile)
    return (cutoff, energies) if return_energies else cutoff


def ema_class_marginal(qhat: torch.Tensor, probs: torch.Tensor, momentum: float) -> torch.Tensor:
    """q_hat <- m * q_hat + (1 - m) * mean_i probs_i (the marginal of the adaptive marginal loss)."""
    return momentum * qhat + (1.0 - momentum) * probs.detach().float().mean(dim=0).to(qhat.device)


class EnergyMaskingHook(MaskingHook):
    """FixMatch's ``MaskingHook`` replaced by the energy mask, on the weak-view logits the algorithm recorded; with
    ``auto`` before the cutoff is measured, FixMatch's own confidence mask (the base learner being calibrated)."""

    def __init__(self):
        super().__init__()
        self.base_learner_mask = FixedThresholdingHook()

    @torch.no_grad()
    def masking(self, algorithm, logits_x_ulb, softmax_x_ulb=True, *args, **kwargs):
        if algorithm.energy_cutoff is None:
            return self.base_learner_mask.masking(algorithm, logits_x_ulb, softmax_x_ulb)
        logits = logits_x_ulb if softmax_x_ulb else algorithm.recorded_weak_logits(logits_x_ulb.shape[0])
        return energy_mask(logits, algorithm.energy_cutoff, algorithm.energy_temperature).to(logits_x_ulb.dtype)


class MarginalConsistencyLoss(ConsistencyLoss):
    """USB's consistency loss on z_s + tau * log(q_hat) (InPL's adaptive marginal loss)."""

    def __init__(self, algorithm):
        super().__init__()
        self.algorithm = algorithm

    def forward(self, logits, targets, name="ce", mask=None):
        margin = self.algorithm.marginal_tau * torch.log(self.algorithm.qhat.to(logits.device))
        return super().forward(logits + margin.to(logits.dtype), targets, name, mask)


@IMB_ALGORITHMS.register("inpl")
class InPL(ImbAlgorithmBase):
    """Energy-based pseudo-labelling (InPL) in FixMatch's step; see the module docstring."""

    def __init__(self, args, net_builder, tb_log=None, logger=None, **kwargs):
        require_base_algorithm(args, "inpl", ("fixmatch",))
        self.imb_init(args)
        super().__init__(args, net_builder, tb_log, logger, **kwargs)
        self.qhat = torch.full((self.num_classes,), 1.0 / self.num_classes)  # moved to the logits' device by the step
        if self.use_marginal_loss:
            self.consistency_loss = MarginalConsistencyLoss(self)

    def imb_init(self, args):
        if args.inpl_temperature <= 0:
            raise UserError(f"inpl_temperature must be positive, got {args.inpl_temperature}")
        if not 0.0 <= args.inpl_qhat_momentum < 1.0:
            raise UserError(f"inpl_qhat_momentum must be in [0, 1), got {args.inpl_qhat_momentum}")
        if args.inpl_energy_cutoff is None:
            raise UserError(missing_cutoff_message(args))
        self.auto_cutoff = args.inpl_energy_cutoff == AUTO
        # None until measured (auto): FixMatch's own mask until then
        self.energy_cutoff = None if self.auto_cutoff else float(args.inpl_energy_cutoff)
        self.calibration_iter = args.num_train_iter // 2
        self.energy_temperature = float(args.inpl_temperature)
        self.use_marginal_loss = bool(args.inpl_marginal_loss)
        self.marginal_tau = float(args.inpl_marginal_tau)
        self.qhat_momentum = float(args.inpl_qhat_momentum)
        self._weak_logits = None

    def set_hooks(self):
        super().set_hooks()
        self.register_hook(EnergyMaskingHook(), "MaskingHook")

    # FixMatch turns the weak logits into probabilities with compute_prob right before masking; the energy needs
    # the logits themselves (softmax forgets their scale), so they are kept here for EnergyMaskingHook.
    def compute_prob(self, logits):
        self._weak_logits = logits.detach()
        return super().compute_prob(logits)

    def recorded_weak_logits(self, num_rows):
        if self._weak_logits is None or self._weak_logits.shape[0] != num_rows:
            raise RuntimeError(f"InPL found no weak-view logits for the {num_rows} rows being masked: the base "
                               f"algorithm '{self.args.algorithm}' must call compute_prob before masking")
        return self._weak_logits

    def calibrate_cutoff(self):
        """``auto``: the cutoff measured on this run's model now (:func:`labeled_energy_cutoff`), fixed from here on."""
        cutoff, energies = labeled_energy_cutoff(self, CUTOFF_QUANTILE, self.energy_temperature, return_energies=True)
        self.energy_cutoff = cutoff
        self.print_fn(f"InPL: inpl_energy_cutoff measured at iteration {self.it}: {cutoff:.4f} (q = "
                      f"{CUTOFF_QUANTILE} of {energies.numel()} labeled images' energies, train mode, weak view); "
                      f"the energy mask replaces FixMatch's from here on")

    def train_step(self, x_lb, y_lb, x_ulb_w, x_ulb_s):
        if self.energy_cutoff is None and self.it >= self.calibration_iter:
            self.calibrate_cutoff()
        self._weak_logits = None
        out_dict, log_dict = super().train_step(x_lb=x_lb, y_lb=y_lb, x_ulb_w=x_ulb_w, x_ulb_s=x_ulb_s)
        weak = self.recorded_weak_logits(x_ulb_w.shape[0])
        # q_hat stays on the logits' device (no copy to the host each step; checkpoints keep it on the CPU)
        self.qhat = ema_class_marginal(self.qhat.to(weak.device), torch.softmax(weak.float(), dim=-1),
                                       self.qhat_momentum)
        # the energy mask's rate: FixMatch's util_ratio is the mean of the mask EnergyMaskingHook returned
        log_dict["train/inpl_mask"] = log_dict["train/util_ratio"]
        log_dict["train/inpl_energy"] = energy_score(weak, self.energy_temperature).mean().item()
        if self.energy_cutoff is not None:
            log_dict["train/inpl_energy_cutoff"] = self.energy_cutoff
        self._weak_logits = None
        return out_dict, log_dict

    def get_save_dict(self):
        save_dict = super().get_save_dict()
        save_dict["inpl_qhat"] = self.qhat.cpu()
        if self.auto_cutoff:  # measured in the run (None before): a resumed run keeps it
            save_dict["inpl_energy_cutoff"] = self.energy_cutoff
        return save_dict

    def load_model(self, load_path):
        checkpoint = super().load_model(load_path)
        if "inpl_qhat" in checkpoint:
            self.qhat = checkpoint["inpl_qhat"].float()
        if self.auto_cutoff and "inpl_energy_cutoff" in checkpoint:
            self.energy_cutoff = checkpoint["inpl_energy_cutoff"]
        return checkpoint

    @staticmethod
    def get_argument():
        return [
            SSL_Argument("--inpl_energy_cutoff", CutoffValue(), None,
                         "e_cutoff: pseudo-label when the weak view's energy is <= this; no default (it is on the "
                         "scale of the logits): the value `remop-usb inpl-cutoff` prints, or auto (measured in the "
                         "run at num_train_iter // 2; FixMatch's mask until then)"),
            SSL_Argument("--inpl_temperature", float, 1.0, "T of the energy score -T*logsumexp(z/T) (paper: 1)"),
            SSL_Argument("--inpl_marginal_loss", str2bool, False,
                         "adaptive marginal loss z_s + tau*log(q_hat) (off in the paper's long-tailed setting)"),
            SSL_Argument("--inpl_marginal_tau", float, 0.5, "tau of the adaptive marginal loss"),
            SSL_Argument("--inpl_qhat_momentum", float, 0.999, "EMA momentum of q_hat, the class marginal"),
        ]

    RANGES = {"inpl_temperature": "> 0", "inpl_marginal_tau": ">= 0", "inpl_qhat_momentum": "[0, 1)"}
