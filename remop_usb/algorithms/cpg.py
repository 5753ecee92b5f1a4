"""CPG as a USB base learner: ``algorithm: cpg`` (FixMatch's batches; the labeled set grows by filtered
pseudo-labels); ReMoP wraps it as ``algorithm: cpg, imb_algorithm: remop``.

Paper: Hou, Han, Jia, Liu, Hou, "Keep It on a Leash: Controllable Pseudo-label Generation Towards Realistic
Long-Tailed Semi-Supervised Learning", NeurIPS 2025 (arXiv 2510.03993; authors' code: YaxinHou/CPG,
``semilearn/imb_algorithms/cpg/cpg.py``, a USB plugin). The unlabeled class distribution is unknown and arbitrary, so
CPG never estimates it: reliable pseudo-labels join the labeled set, whose class distribution stays known (labeled
counts plus the counts of the pseudo-labels admitted), and the classifier is made Bayes-optimal for it by logit
adjustment. Implemented here, with t = ``p_cutoff`` (0.95), L the labeled split, S the admitted unlabeled images and
n_c the class counts of L + S:

- Labeled set L + S: each labeled batch is drawn from L and the admitted images of S (with the labeled set's weak
  view and their pseudo-labels; :class:`GrowingLabeledSet`). S changes at the end of an epoch only
  (:class:`ControlledLabeledSet`), so that an epoch's data order and prior are fixed.
- Bayes-optimal classifier by logit adjustment: the classifier's labeled loss is CE(z + log pi_(L+S), y),
  pi_(L+S) = n / sum(n) (:func:`logit_adjusted_ce`), so z itself is the balanced score; test time: argmax z.
- Dynamic controllable filtering (:func:`filter_mask`): an unlabeled image's weak and strong views are each
  classified by softmax(z + log pi_S) -- z shifted to the class distribution of the admitted pseudo-labels
  (:func:`refined_accepted_prior`; uniform while S is empty) -- and it passes when both confidences are >= t and
  both views predict the same class. The images passing during an epoch make the next epoch's S, each with the
  pseudo-label of its latest pass; an image whose latest view fails leaves S; an image not drawn keeps its status
  (``cpg_admission: step``).
- Class-aware adaptive augmentation (CAA, :func:`caa_copies`, :func:`caa_radii`, :func:`caa_augment`): each labeled
  feature f of class c joins the classifier's labeled loss with m_c noisy copies f + eps * r_c * f / ||f||,
  eps ~ N(0, I), m_c = floor(``cpg_caa_copies`` * n_(ref) / n_c) (n_(ref) the count of rank K // 3 from the rarest:
  rarer classes get more copies), and radius r_c proportional to 1 / s_c, normalised to sum 1, s_c the mean over
  class c of (cos(f, mu_c) + 1) / 2, mu_c its mean feature (a class spread wider gets a larger radius). The radii
  are measured over L + S at the end of each epoch (and before the first one) with the evaluation transform.
- Auxiliary branch (to use every sample): a second linear head (ACR's :class:`~.acr.TwoHeadNet`, ``logits_b``)
  learns CE(z_b + log pi_(L+S), y) on the labeled batch and, on every unlabeled image, its own hard pseudo-label
  argmax z_b(weak) on the strong view -- no threshold.
- Loss: CE_CAA(main) + CE(aux, labeled) + ulb_loss_ratio * CE(aux, unlabeled). Before epoch ``cpg_warmup_epochs``
  (0-based) nothing is filtered and CAA is off (the labeled loss is CE(z + log pi_L, y) on the labeled batch).

The paper's text was not at hand when this was written (its abstract and summaries were: the filter admitting
reliable pseudo-labels "at each training step" into a labeled set of known distribution, the logit-adjusted
Bayes-optimal classifier, CAA and the auxiliary branch); where they are silent, the authors' code set the choice.
Where the authors' code differs, each an option with the reading above the default:

- ``cpg_admission: vote``: the authors admit pseudo-labels once every ``cpg_memory_epochs`` (5) epochs, an image
  when it passed more than ``cpg_vote_min`` (12) times in that window with at least ``cpg_vote_agreement`` (0.8) of
  its passes on one class (its label); S is rebuilt from each window. With the demo's epochs (an image drawn once or
  twice each) no image would ever pass 12 times; the default admits at each epoch's end;
- ``cpg_label_smoothing`` (authors: 0.1): labels smoothed to 1 - s on the class and s / (K - 1) elsewhere (also the
  auxiliary head's pseudo-labels before the warm-up ends), and the filter's threshold scaled to t (1 - s);
- ``cpg_warmup_epochs`` (authors: 30 of 256 epochs).

Also differing, without an option: the authors keep, for an image admitted by vote, the distribution of its votes as
a soft label (here its majority label); they measure the radii with the weak view in train mode (BatchNorm's
running statistics move), here in eval mode on the evaluation transform; their first window after the warm-up gives
every class 10 copies (here m_c throughout); the filter's prior pi_S is their refined distribution of the
admitted pseudo-labels (:func:`refined_accepted_prior`), kept; their DDP processes would each grow their own set,
here a distributed run is refused. A USB epoch is ``num_train_iter / epoch`` steps (the authors': 1,024).

Checkpoints keep S, the epoch's pending filter outcomes (and votes) and the radii (:class:`ControlledLabeledSet`'s
``checkpoint_attrs``), so a resumed run draws the same labeled batches.

With ReMoP on top (``imb_algorithm: remop``): ReMoP's mixture of each view takes the place of softmax(z) in the
filter, its linear part shifted by log pi_S as the linear classifier is: beta softmax(z + log pi_S) + (1 - beta) s
(:func:`~.imb_common.adjusted_prediction`; the cosines s are on no log-probability scale), thresholded at t on the
mixture's own scale, as ReMoP's Eq. 7 thresholds p_m. The labeled loss (with CAA) and the auxiliary head are CPG's;
the admitted images are labeled rows of ReMoP's center loss. Test time: ReMoP's mixture; results.json reports the
linear classifier (``linear``: CPG's own test-time prediction) and the auxiliary head beside it.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from semilearn.algorithms.fixmatch import FixMatch
from semilearn.algorithms.utils import SSL_Argument
from semilearn.core.hooks import Hook
from semilearn.core.utils import ALGORITHMS
from torch.utils.data import Dataset

from .. import pseudo_labels
from ..errors import UserError
from ..evaluation import eval_mode
from .acr import TwoHeadNet
from .imb_common import AdaptedModels, adjusted_prediction, forward_batches, labeled_class_counts, log_prior

ADMISSIONS = ("step", "vote")


# -- the math ------------------------------------------------------------------------------------------------------

def smoothed_targets(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """N x K targets: 1 - s on each label, s / (K - 1) on every other class (s = 0: one-hot)."""
    targets = torch.full((labels.shape[0], num_classes), smoothing / (num_classes - 1), device=labels.device)
    return targets.scatter_(1, labels.reshape(-1, 1), 1.0 - smoothing)


def logit_adjusted_ce(logits: torch.Tensor, targets: torch.Tensor, log_prior_: torch.Tensor) -> torch.Tensor:
    """Mean CE(z + log pi, targets): hard (N) or soft (N x K) targets."""
    adjusted = logits.float() + log_prior_.to(logits.device, torch.float32)
    if targets.dim() == 2:
        return -(targets * F.log_softmax(adjusted, dim=-1)).sum(dim=-1).mean()
    return F.cross_entropy(adjusted, targets)


def refined_accepted_prior(accepted_counts, labeled_counts) -> torch.Tensor:
    """pi_S of the filter: the admitted pseudo-labels' class counts, where a count <= the rarest labeled class's
    count is raised to the smallest count above it; all of them at or below it (S empty): uniform. Normalised."""
    accepted = torch.as_tensor(accepted_counts, dtype=torch.float64)
    kept = torch.where(accepted <= float(torch.as_tensor(labeled_counts).min()), torch.zeros_like(accepted), accepted)
    above = kept[kept > 0]
    refined = torch.ones_like(kept) if above.numel() == 0 else torch.where(kept == 0, above.min(), kept)
    return refined / refined.sum()


def filter_mask(probs_w: torch.Tensor, probs_s: torch.Tensor, threshold: float):
    """(mask, pseudo-labels): a row passes when the weak and the strong view are both >= ``threshold`` confident and
    agree on the class; the pseudo-label is the weak view's argmax."""
    conf_w, pseudo_w = probs_w.max(dim=-1)
    conf_s, pseudo_s = probs_s.max(dim=-1)
    return (conf_w >= threshold) & (conf_s >= threshold) & (pseudo_w == pseudo_s), pseudo_w


def caa_copies(counts, copies: float) -> torch.Tensor:
    """m_c = floor(copies * n_(ref) / n_c), n_(ref) the count of rank K // 3 among the counts sorted ascending."""
    counts = torch.as_tensor(counts, dtype=torch.float64)
    reference = torch.sort(counts)[0][counts.numel() // 3]
    return torch.floor(copies * reference / counts).long()


def class_means(feat: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """K x d: the mean feature of each class (zeros for a class without rows)."""
    sums = torch.zeros(num_classes, feat.shape[1], dtype=torch.float64).index_add_(0, labels, feat.double())
    counts = torch.bincount(labels, minlength=num_classes).double().clamp_min(1.0)
    return sums / counts[:, None]


def caa_radii(feat: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """r_c = (1 / s_c) / sum_k (1 / s_k), s_c the mean over class c's rows of (cos(f, mu_c) + 1) / 2 (every class
    has rows: the labeled split has each)."""
    feat, labels = feat.double().cpu(), labels.long().cpu()
    cos = F.cosine_similarity(feat, class_means(feat, labels, num_classes)[labels], dim=1)
    sums = torch.zeros(num_classes, dtype=torch.float64).index_add_(0, labels, (cos + 1.0) / 2.0)
    inverse = 1.0 / (sums / torch.bincount(labels, minlength=num_classes).double())
    return (inverse / inverse.sum()).float()


def caa_augment(feat: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor, copies: torch.Tensor,
                radii: torch.Tensor):
    """The rows of ``feat`` followed by copies[labels_i] noisy copies of each row i, f + eps * r_y * f / ||f||
    (eps ~ N(0, I), torch's global RNG); ``targets`` (N, or N x K) repeated alike."""
    repeats = copies.to(labels.device)[labels]
    rows = torch.repeat_interleave(torch.arange(feat.shape[0], device=feat.device), repeats)
    base = feat[rows]
    noise = torch.randn(base.shape, device=feat.device, dtype=base.dtype)
    scale = radii.to(device=feat.device, dtype=base.dtype)[labels[rows]].unsqueeze(1)
    augmented = base + noise * scale * F.normalize(base, dim=1)
    return torch.cat([feat, augmented]), torch.cat([targets, targets[rows]])


def admitted_by_vote(votes: torch.Tensor, passes: torch.Tensor, minimum: int, agreement: float) -> torch.Tensor:
    """M: the label of each image passed more than ``minimum`` times with >= ``agreement`` of its passes on its most
    voted class, else -1 (``cpg_admission: vote``, the authors' window)."""
    top, label = votes.max(dim=1)
    admitted = (passes > minimum) & (top.double() >= agreement * passes.double())
    return torch.where(admitted, label, torch.full_like(label, -1))


# -- the labeled set and its state ---------------------------------------------------------------------------------

class ControlledLabeledSet(Hook):
    """CPG's labeled set L + S: per unlabeled image its label in S (``status``, -1: not in it), this epoch's filter
    outcomes (``pending``; with ``vote``: the window's votes), and the CAA radii. At the end of each epoch the
    learner commits the outcomes (:meth:`CPG.end_epoch`)."""

    checkpoint_attrs = ("status", "pending", "votes", "passes", "radii")

    def __init__(self, labeled_counts, num_unlabeled: int, admission: str = "step"):
        self.labeled_counts = torch.as_tensor(labeled_counts, dtype=torch.float64)
        self.num_classes, self.admission = self.labeled_counts.numel(), admission
        self.status = torch.full((num_unlabeled,), -1, dtype=torch.long)
        self.pending = self.status.clone()
        self.votes = torch.zeros(num_unlabeled, self.num_classes, dtype=torch.long)
        self.passes = torch.zeros(num_unlabeled, dtype=torch.long)
        self.radii = None

    def accepted_counts(self) -> torch.Tensor:
        admitted = self.status[self.status >= 0]
        return torch.bincount(admitted, minlength=self.num_classes).double()

    def counts(self) -> torch.Tensor:
        """n: class counts of L + S."""
        return self.labeled_counts + self.accepted_counts()

    def members(self):
        """(unlabeled indices in S, their labels), in index order."""
        index = (self.status >= 0).nonzero().flatten()
        return index, self.status[index]

    @torch.no_grad()
    def observe(self, idx_ulb: torch.Tensor, pseudo: torch.Tensor, mask: torch.Tensor):
        """One step's filter outcomes: ``step`` keeps each image's latest (its label, or -1 when it failed);
        ``vote`` counts the passes."""
        idx, pseudo, mask = idx_ulb.long().cpu(), pseudo.long().cpu(), mask.bool().cpu()
        if self.admission == "vote":
            self.votes.index_put_((idx[mask], pseudo[mask]), torch.ones(int(mask.sum()), dtype=torch.long),
                                  accumulate=True)
            self.passes.index_add_(0, idx[mask], torch.ones(int(mask.sum()), dtype=torch.long))
            return
        pending = self.pending.clone()
        for j, label in zip(idx.tolist(), torch.where(mask, pseudo, torch.full_like(pseudo, -1)).tolist()):
            pending[j] = label  # in batch order: a later row of the same image wins
        self.pending = pending

    def commit(self, minimum: int = 12, agreement: float = 0.8):
        """S becomes the outcomes gathered since the last commit (``vote``: the images its rule admits; the votes
        start again)."""
        if self.admission == "vote":
            self.status = admitted_by_vote(self.votes, self.passes, minimum, agreement)
            self.votes, self.passes = torch.zeros_like(self.votes), torch.zeros_like(self.passes)
        else:
            self.status = self.pending.clone()
        self.pending = self.status.clone()

    def after_train_epoch(self, algorithm):
        algorithm.end_epoch()


class GrowingLabeledSet(Dataset):
    """The labeled dataset followed by the unlabeled images in S (``state.members()``), each as a labeled item --
    ``{'idx_lb', 'x_lb', 'y_lb'}`` under ``transform`` (the labeled set's weak view) -- with its pseudo-label. Its
    length is read by USB's sampler at the start of each epoch, when S may have changed."""

    def __init__(self, labeled, unlabeled, state: ControlledLabeledSet):
        self.labeled, self.unlabeled, self.state = labeled, unlabeled, state
        self.transform, self.strong_transform = labeled.transform, None
        self.num_classes = labeled.num_classes

    @property
    def targets(self):
        return np.concatenate([np.asarray(self.labeled.targets), self.state.members()[1].numpy()])

    def __len__(self):
        return len(self.labeled) + int((self.state.status >= 0).sum())

    def __getitem__(self, i):
        if i < len(self.labeled):
            img, target = self.labeled.__sample__(i)
        else:
            index, labels = self.state.members()
            j = i - len(self.labeled)
            img, target = self.unlabeled.__sample__(int(index[j]))[0], int(labels[j])
        if isinstance(img, np.ndarray):
            img = Image.fromarray(img)
        return {"idx_lb": i, "x_lb": self.transform(img), "y_lb": target}


# -- the learner -----------------------------------------------------------------------------------------------------

@ALGORITHMS.register("cpg")
class CPG(AdaptedModels, FixMatch):
    """CPG (Hou et al., NeurIPS 2025) in FixMatch's batches; see the module docstring."""

    prediction_heads = (("balanced", "logits"), ("auxiliary", "logits_b"))

    def __init__(self, args, net_builder, tb_log=None, logger=None, **kwargs):
        if not args.hard_label:
            raise UserError("cpg uses hard pseudo-labels; set hard_label: True")
        if int(getattr(args, "world_size", 1) or 1) > 1:
            raise UserError("cpg grows its labeled set from the filter outcomes of one process; run it on one process")
        if getattr(args, "persistent_workers", False):
            raise UserError("cpg's labeled set changes between epochs, which persistent_workers' copies of it would "
                            "not see; set persistent_workers: False")
        self.warmup_epochs, self.admission = int(args.cpg_warmup_epochs), args.cpg_admission
        self.smoothing, self.caa_copies = float(args.cpg_label_smoothing), float(args.cpg_caa_copies)
        self.memory_epochs, self.vote_min = int(args.cpg_memory_epochs), int(args.cpg_vote_min)
        self.vote_agreement = float(args.cpg_vote_agreement)
        super().__init__(args, net_builder, tb_log, logger, **kwargs)

    # -- building ----------------------------------------------------------------------------------------------------
    def _adapt(self, net):
        return TwoHeadNet(net, self.num_classes)

    def set_dataset(self):
        datasets = super().set_dataset()
        if datasets is None or datasets.get("train_ulb") is None:
            return datasets
        counts = labeled_class_counts(datasets["train_lb"].targets, self.num_classes)
        log_prior(counts, "cpg")  # every class needs a labeled image (log 0)
        self.labeled_set = ControlledLabeledSet(counts, len(datasets["train_ulb"]), self.admission)
        datasets["train_lb"] = GrowingLabeledSet(datasets["train_lb"], datasets["train_ulb"], self.labeled_set)
        return datasets

    def set_hooks(self):
        self.register_hook(self.labeled_set, "CPGLabeledSetHook")
        super().set_hooks()
        self.register_hook(CPGRadiiHook(), "CPGRadiiHook")

    # -- the labeled set between epochs ----------------------------------------------------------------------------
    def filtering(self) -> bool:
        return getattr(self, "epoch", 0) >= self.warmup_epochs

    def end_epoch(self):
        """After epoch e: commit the filter outcomes (every epoch; ``vote``: every ``cpg_memory_epochs``-th epoch
        after the warm-up), then measure the radii of the next epoch's L + S once it filters."""
        epoch = getattr(self, "epoch", 0)
        if epoch >= self.warmup_epochs and (self.admission == "step"
                                            or (epoch + 1 - self.warmup_epochs) % self.memory_epochs == 0):
            self.labeled_set.commit(self.vote_min, self.vote_agreement)
            counts = self.labeled_set.accepted_counts()
            self.print_fn(f"cpg: {int(counts.sum())} unlabeled images in the labeled set, per class "
                          + ", ".join(str(int(c)) for c in counts.tolist()))
        if epoch + 1 >= self.warmup_epochs:
            self.measure_radii()

    @torch.no_grad()
    def measure_radii(self):
        """CAA's radii over L + S: features of the training model in eval mode, images under the evaluation
        transform (no random draw)."""
        shown = copy.copy(self.dataset_dict["train_lb"])
        shown.transform = self.dataset_dict["eval"].transform
        feats, labels = [], []
        device = next(self.model.parameters()).device
        with eval_mode(self.model):
            for start in range(0, len(shown), self.args.eval_batch_size):
                items = [shown[i] for i in range(start, min(start + self.args.eval_batch_size, len(shown)))]
                x = torch.stack([item["x_lb"] for item in items]).to(device)
                feats.append(self.model(x)["feat"].float().cpu())
                labels.append(torch.as_tensor([int(item["y_lb"]) for item in items]))
        self.labeled_set.radii = caa_radii(torch.cat(feats), torch.cat(labels), self.num_classes)

    # -- one step ----------------------------------------------------------------------------------------------------
    def filter_probs(self, logits: torch.Tensor, log_prior_s: torch.Tensor) -> torch.Tensor:
        """softmax(z + log pi_S) of a view (under ReMoP: its mixture, the linear part shifted alike)."""
        logits = logits.detach()
        return adjusted_prediction(self, self.compute_prob(logits), logits, -log_prior_s)

    def labeled_loss(self, feat_lb, logits_lb, y_lb, log_prior_all):
        """The classifier's logit-adjusted CE on the labeled batch, with CAA's noisy copies once filtering."""
        targets = y_lb if self.smoothing == 0 else smoothed_targets(y_lb, self.num_classes, self.smoothing)
        radii = self.labeled_set.radii
        if not self.filtering() or radii is None:
            return logit_adjusted_ce(logits_lb, targets, log_prior_all)
        copies = caa_copies(self.labeled_set.counts(), self.caa_copies)
        feats, targets = caa_augment(feat_lb, targets, y_lb, copies, radii)
        return logit_adjusted_ce(self.model(feats, only_fc=True), targets, log_prior_all)

    def auxiliary_losses(self, out_lb, y_lb, out_w, out_s, log_prior_all):
        """(CE(z_b + log pi_(L+S), y), CE of the strong view against argmax z_b(weak) on every unlabeled image)."""
        targets = y_lb if self.smoothing == 0 else smoothed_targets(y_lb, self.num_classes, self.smoothing)
        sup = logit_adjusted_ce(out_lb["logits_b"], targets, log_prior_all)
        pseudo = out_w["logits_b"].detach().argmax(dim=-1)
        pseudo_labels.record(self, "cpg_aux", pseudo)
        soft = self.smoothing > 0 and not self.filtering()  # the authors smooth them during the warm-up only
        target = smoothed_targets(pseudo, self.num_classes, self.smoothing) if soft else pseudo
        return sup, logit_adjusted_ce(out_s["logits_b"], target, torch.zeros(self.num_classes))

    def train_step(self, x_lb, y_lb, x_ulb_w, x_ulb_s, idx_ulb):
        state = self.labeled_set
        log_prior_all = torch.log(state.counts() / state.counts().sum()).float()
        log_prior_s = torch.log(refined_accepted_prior(state.accepted_counts(), state.labeled_counts)).float()
        with self.amp_cm():
            # without use_cat, FixMatch's order: labeled, strong, then the weak view without gradient
            out_lb, out_w, out_s = forward_batches(self.model, (x_lb, x_ulb_w, x_ulb_s), self.use_cat,
                                                   ("logits", "logits_b", "feat"), order=(0, 2, 1), no_grad=(1,))
            device = out_lb["logits"].device
            probs_w = self.filter_probs(out_w["logits"], log_prior_s.to(device))
            probs_s = self.filter_probs(out_s["logits"], log_prior_s.to(device))
            mask, pseudo = filter_mask(probs_w, probs_s, self.p_cutoff * (1.0 - self.smoothing))
            mask = mask & self.filtering()
            pseudo_labels.record(self, "pl", pseudo, mask)  # what joins the labeled set
            sup_loss = self.labeled_loss(out_lb["feat"], out_lb["logits"], y_lb, log_prior_all.to(device))
            aux_sup, aux_unsup = self.auxiliary_losses(out_lb, y_lb, out_w, out_s, log_prior_all.to(device))
            total_loss = sup_loss + aux_sup + self.lambda_u * aux_unsup
        if self.filtering():
            state.observe(idx_ulb, pseudo, mask)
        feat = {"x_lb": out_lb["feat"], "x_ulb_w": out_w["feat"], "x_ulb_s": out_s["feat"]}
        out_dict = self.process_out_dict(loss=total_loss, feat=feat)
        sup, a_sup, a_unsup, total, rate = torch.stack(
            [t.detach().double() for t in (sup_loss, aux_sup, aux_unsup, total_loss, mask.float().mean())]).tolist()
        log_dict = self.process_log_dict(sup_loss=sup, unsup_loss=a_unsup, total_loss=total, util_ratio=rate,
                                         cpg_aux_sup_loss=a_sup, cpg_labeled_set=len(self.dataset_dict["train_lb"]))
        return out_dict, log_dict

    @staticmethod
    def get_argument():
        return FixMatch.get_argument() + [
            SSL_Argument("--cpg_warmup_epochs", int, 0, "epochs (0-based) before the filter and CAA start "
                                                        "(authors: 30 of 256)"),
            SSL_Argument("--cpg_admission", str, "step",
                         f"{' | '.join(ADMISSIONS)}: each epoch's latest filter outcomes make the next epoch's S "
                         f"(step) or the authors' vote over a window of cpg_memory_epochs (vote)"),
            SSL_Argument("--cpg_memory_epochs", int, 5, "vote: epochs of a window"),
            SSL_Argument("--cpg_vote_min", int, 12, "vote: an image is admitted after more passes than this"),
            SSL_Argument("--cpg_vote_agreement", float, 0.8, "vote: ... with this share of them on one class"),
            SSL_Argument("--cpg_label_smoothing", float, 0.0, "label smoothing s of the targets (authors: 0.1)"),
            SSL_Argument("--cpg_caa_copies", float, 10.0, "CAA: copies m_c = floor(this * n_(ref) / n_c); 0: no CAA"),
        ]

    CHOICES = {"cpg_admission": ADMISSIONS}
    RANGES = {
        "cpg_warmup_epochs": ">= 0",
        "cpg_memory_epochs": ">= 1",
        "cpg_vote_min": ">= 0",
        "cpg_vote_agreement": "[0, 1]",
        "cpg_label_smoothing": "[0, 1)",
        "cpg_caa_copies": ">= 0",
    }


class CPGRadiiHook(Hook):
    """Before the first step of a run that filters from epoch 0 (not on resume: the radii come from the
    checkpoint), CAA's radii of the labeled split."""

    checkpoint_attrs = ()

    def before_run(self, algorithm):
        if algorithm.warmup_epochs == 0 and not algorithm.resume and algorithm.it == 0:
            algorithm.measure_radii()
