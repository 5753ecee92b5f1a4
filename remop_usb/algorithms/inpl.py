"""InPL as a USB imbalanced algorithm: ``imb_algorithm: inpl`` on ``algorithm: fixmatch``.

Paper: Yu, Li, Lee, "InPL: Pseudo-labeling the Inliers First for Imbalanced Semi-supervised Learning", ICLR 2023
(authors' code: ZhuoranYu/TorchSSL, ``models/inpl``). Implemented here:

- The energy score of a sample under the classifier (after Liu et al., NeurIPS 2020): E(x) = -T * logsumexp(z(x) / T) of
  the weak view's logits z, T = 1 in the paper (``inpl_temperature``).
- Energy-based pseudo-labelling: an unlabeled sample is pseudo-labeled with argmax softmax(z_w) when its
  energy is at most the cutoff, E(x_w) <= e_cutoff (``inpl_energy_cutoff``) -- an "inlier" of the labeled
  distribution -- instead of FixMatch's max softmax(z_w) >= p_cutoff. FixMatch's step is otherwise unchanged (same
  weak/strong views, hard labels, CE on the strong view, mean over the unlabeled batch, weight ulb_loss_ratio);
  ``p_cutoff`` is not used.
- The adaptive marginal loss (off in the authors' long-tailed configs, ``inpl_marginal_loss``): the strong
  view's logits become z_s + tau * log(q_hat) in the unlabeled CE, q_hat an EMA (momentum ``inpl_qhat_momentum``,
  0.999) of the batch mean of softmax(z_w), updated after each step's loss; tau = ``inpl_marginal_tau`` (0.5).
- Test time: plain argmax of the linear classifier.

The released code keeps q_hat only in memory; here it is saved in the checkpoints, so a resumed run goes on with it.

**The energy cutoff.** The cutoff is on the scale of the logits, which depends on the network, its initialisation,
the data and the length of training: the paper's -9.5 (CIFAR-10-LT) and -11.5 (CIFAR-100-LT) belong to a
WideResNet trained for 250k steps. For FER it is chosen on data (:func:`labeled_energy_cutoff`): train the base
learner (FixMatch, same config) to half its schedule and take the q = 0.05 quantile of the energies of the labeled
training images (their weak view, model in eval mode). Measured on the demo data (config/demo/fixmatch.yaml: 48 px,
ResNet-18 from scratch, Adam 1e-3, 400 steps), that quantile is -4.61 at step 200, -4.63 at step 300 and -6.56 at
step 400; the default :data:`DEFAULT_ENERGY_CUTOFF` is -4.6. On these data the labeled and unlabeled energies have
the same distribution (no overfitting in 400 steps), so q is about the unlabeled mask rate: at -4.6 the mask keeps
4-5 % of the unlabeled images with 92-94 % correct pseudo-labels (FixMatch's 0.95 confidence: 1-2 % at 90-100 %);
q = 0.1 already drops to 80-84 % correct. A model that overfits its labeled images (long runs, a face-pretrained
backbone) gives them lower energies than the unlabeled ones, and the same q a stricter cutoff: measure again for
real data (``remop-usb inpl-cutoff``, :mod:`remop_usb.inpl_cutoff`) and watch ``train/inpl_mask`` and
``train/inpl_energy`` (the mean weak-view energy) in the log.
"""

from __future__ import annotations

import torch
from semilearn.algorithms.hooks import MaskingHook
from semilearn.algorithms.utils import SSL_Argument, str2bool
from semilearn.core import ImbAlgorithmBase
from semilearn.core.criterions import ConsistencyLoss
from semilearn.core.utils import IMB_ALGORITHMS

from ..errors import UserError
from .imb_common import require_base_algorithm

#: e_cutoff for the demo: the 0.05 quantile of the labeled images' energies at step 200 of the FixMatch demo
DEFAULT_ENERGY_CUTOFF = -4.6


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


@torch.no_grad()
def dataset_logits(model, dataset, key="x_lb", batch_size=128, device="cpu") -> torch.Tensor:
    """Logits of ``dataset[i][key]`` for every item, the model in eval mode, in dataset order (float32, on CPU)."""
    from torch.utils.data import DataLoader

    from ..evaluation import eval_mode

    with eval_mode(model):
        logits = [model(batch[key].to(device))["logits"].float().cpu()
                  for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)]
    return torch.cat(logits)


def dataset_energies(model, dataset, key="x_lb", temperature=1.0, batch_size=128, device="cpu") -> torch.Tensor:
    """Energies of ``dataset[i][key]`` for every item, the model in eval mode, in dataset order."""
    return energy_score(dataset_logits(model, dataset, key, batch_size, device), temperature)


def labeled_energies(algorithm, temperature=1.0) -> torch.Tensor:
    """The energies of the labeled training images under ``algorithm``'s EMA model (weak view, i.e. the labeled
    dataset's own transform)."""
    from ..usb_compat import device_of

    return dataset_energies(algorithm.ema_model, algorithm.dataset_dict["train_lb"], "x_lb", temperature,
                            algorithm.args.eval_batch_size, device_of(algorithm))


def labeled_energy_cutoff(algorithm, quantile=0.05, temperature=1.0, return_energies=False):
    """The cutoff procedure: the ``quantile`` of :func:`labeled_energies`, on a base-learner checkpoint loaded
    into ``algorithm`` -- what ``remop-usb inpl-cutoff`` (:mod:`remop_usb.inpl_cutoff`) prints. With
    ``return_energies``: (cutoff, the energies it is the quantile of)."""
    energies = labeled_energies(algorithm, temperature)
    cutoff = quantile_cutoff(energies, quantile)
    return (cutoff, energies) if return_energies else cutoff


def ema_class_marginal(qhat: torch.Tensor, probs: torch.Tensor, momentum: float) -> torch.Tensor:
    """q_hat <- m * q_hat + (1 - m) * mean_i probs_i (the marginal of the adaptive marginal loss)."""
    return momentum * qhat + (1.0 - momentum) * probs.detach().float().mean(dim=0).to(qhat.device)


class EnergyMaskingHook(MaskingHook):
    """FixMatch's ``MaskingHook`` replaced by the energy mask, on the weak-view logits the algorithm recorded."""

    @torch.no_grad()
    def masking(self, algorithm, logits_x_ulb, softmax_x_ulb=True, *args, **kwargs):
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
        self.energy_cutoff = float(args.inpl_energy_cutoff)
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

    def train_step(self, x_lb, y_lb, x_ulb_w, x_ulb_s):
        self._weak_logits = None
        out_dict, log_dict = super().train_step(x_lb=x_lb, y_lb=y_lb, x_ulb_w=x_ulb_w, x_ulb_s=x_ulb_s)
        weak = self.recorded_weak_logits(x_ulb_w.shape[0])
        # q_hat stays on the logits' device (no copy to the host each step; checkpoints keep it on the CPU)
        self.qhat = ema_class_marginal(self.qhat.to(weak.device), torch.softmax(weak.float(), dim=-1),
                                       self.qhat_momentum)
        # the energy mask's rate: FixMatch's util_ratio is the mean of the mask EnergyMaskingHook returned
        log_dict["train/inpl_mask"] = log_dict["train/util_ratio"]
        log_dict["train/inpl_energy"] = energy_score(weak, self.energy_temperature).mean().item()
        self._weak_logits = None
        return out_dict, log_dict

    def get_save_dict(self):
        save_dict = super().get_save_dict()
        save_dict["inpl_qhat"] = self.qhat.cpu()
        return save_dict

    def load_model(self, load_path):
        checkpoint = super().load_model(load_path)
        if "inpl_qhat" in checkpoint:
            self.qhat = checkpoint["inpl_qhat"].float()
        return checkpoint

    @staticmethod
    def get_argument():
        return [
            SSL_Argument("--inpl_energy_cutoff", float, DEFAULT_ENERGY_CUTOFF,
                         "e_cutoff: pseudo-label when the weak view's energy is <= this (scale-dependent; "
                         "see remop_usb.algorithms.inpl for how the FER default was measured)"),
            SSL_Argument("--inpl_temperature", float, 1.0, "T of the energy score -T*logsumexp(z/T) (paper: 1)"),
            SSL_Argument("--inpl_marginal_loss", str2bool, False,
                         "adaptive marginal loss z_s + tau*log(q_hat) (off in the paper's long-tailed setting)"),
            SSL_Argument("--inpl_marginal_tau", float, 0.5, "tau of the adaptive marginal loss"),
            SSL_Argument("--inpl_qhat_momentum", float, 0.999, "EMA momentum of q_hat, the class marginal"),
        ]
