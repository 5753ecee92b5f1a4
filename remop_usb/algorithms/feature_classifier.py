"""The feature classifier of ReMoP and the pieces of math around it, shared by every learner ReMoP wraps.

Paper: Li, Zhang et al., "Towards Regularized Mixture of Predictions for Class-Imbalanced Semi-Supervised Facial
Expression Recognition" (ReMoP). Equations referenced below are the paper's:

- Eq. 4: the feature classifier is a matrix of class centers H = [h_1, ..., h_K] (here a K x d parameter).
- Eq. 5: the feature prediction p_s^k = cos(f(x), h_k).
- Eq. 6: the mixture p_m = beta * p_l + (1 - beta) * p_s, with p_l = softmax of the linear classifier.
- Center loss (Sec. 4.2): L_c = 1/2 * sum ||x - h_y||^2 over the labeled and confident unlabeled features. The
  paper trains it end to end (Eq. 9): its gradient reaches the features and the centers (``gradient``, the
  default). Not from the paper, as an option: Wen et al.'s center update ("A Discriminative Feature Learning
  Approach for Deep Face Recognition", ECCV 2016, Eq. 4 and Algorithm 1, which the paper cites for the centers):
  L_c's gradient reaches the features only, and after each step every center moves toward the mean of its
  features by its own rate alpha: h_j <- h_j - alpha * sum_i [y_i = j] (h_j - x_i) / (1 + sum_i [y_i = j])
  (:func:`wen_center_update`).
- Eq. 8: L_reg = sum_{k != t} (h~_k . h~_t + 1/(K-1))^2, h~ the globally centered, normalised centers.

Each function also implements the variant found in the authors' released code (hangyu94/ReMoP), selected by name;
see ``remop.py`` for the options and the ``official`` preset.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nets.wrapper import BackboneWrapper

SIMILARITIES = ("cosine", "dot")
#: which feature the feature classifier reads: the encoder's (paper: x = f(x)) or the classifier's dropped-out input
FEATURES = ("encoder", "head")
#: output key of the backbone holding each of :data:`FEATURES`
FEATURE_KEYS = {"encoder": "feat", "head": "classifier_input"}
#: how the centers learn: the gradient of lambda1 L_c + lambda2 L_reg (Eq. 9, end to end; also the released code),
#: or Wen et al.'s update (not from the paper: L_c then sees detached centers)
CENTER_UPDATES = ("gradient", "wen")
#: how the centers start: ``randn`` (the released code; the paper does not say), or the class means of the labeled
#: features before step 0 (this project's choice)
CENTER_INITS = ("class_mean", "randn")
MIXES = ("prob", "logit")
REGULARIZERS = ("paper", "frobenius")
CENTER_REDUCTIONS = ("half_sum", "mean")


def feature_prediction(feat: torch.Tensor, centers: torch.Tensor, similarity: str = "cosine") -> torch.Tensor:
    """Eq. 5: similarity of each feature (N x d) to each center (K x d) -> N x K.

    ``cosine`` is the paper's; ``dot`` is the released code's raw dot product ``feat @ centers.T``.
    """
    if similarity == "cosine":
        return F.normalize(feat, dim=1) @ F.normalize(centers, dim=1).t()
    if similarity == "dot":
        return feat @ centers.t()
    raise ValueError(f"unknown similarity {similarity!r}; expected one of {SIMILARITIES}")


def mix_predictions(logits: torch.Tensor, feat_pred: torch.Tensor, beta: float, mix: str = "prob") -> torch.Tensor:
    """Eq. 6: the mixture of the linear and the feature prediction.

    ``prob`` (paper): beta * softmax(logits) + (1 - beta) * feat_pred.
    ``logit`` (released code): softmax(beta * logits + (1 - beta) * feat_pred).
    """
    feat_pred = feat_pred.to(logits.dtype)
    if mix == "prob":
        return beta * torch.softmax(logits, dim=-1) + (1.0 - beta) * feat_pred
    if mix == "logit":
        return torch.softmax(beta * logits + (1.0 - beta) * feat_pred, dim=-1)
    raise ValueError(f"unknown mix {mix!r}; expected one of {MIXES}")


def center_sq_distances(feat: torch.Tensor, centers: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """||x_i - h_{y_i}||^2 for each row; gradients reach the features, and the centers unless they are detached."""
    return (feat.float() - centers.float()[labels]).pow(2).sum(dim=1)


@torch.no_grad()
def class_sums(centers: torch.Tensor, feat: torch.Tensor, labels: torch.Tensor):
    """(per-class sums of the rows of ``feat``, per-class row counts), shaped like ``centers`` and (K,)."""
    counts = torch.zeros(centers.shape[0], dtype=centers.dtype, device=centers.device)
    counts.index_add_(0, labels, torch.ones_like(labels, dtype=centers.dtype))
    sums = torch.zeros_like(centers).index_add_(0, labels, feat.detach().to(centers.dtype))
    return sums, counts


@torch.no_grad()
def wen_center_update(centers: torch.Tensor, feat: torch.Tensor, labels: torch.Tensor, alpha: float,
                      reduce=None) -> None:
    """Wen et al. (2016), Eq. 4 and Algorithm 1, in place: for each class j with n_j rows in the batch,
    delta_j = sum_{i: y_i = j} (h_j - x_i) / (1 + n_j), then h_j <- h_j - alpha * delta_j (classes without rows
    keep their center). ``reduce`` (e.g. an all-reduce over processes) sums the per-class sums and counts first,
    so that every process applies the update of the whole batch."""
    sums, counts = class_sums(centers, feat, labels)
    if reduce is not None:
        sums, counts = reduce(sums), reduce(counts)
    delta = (counts[:, None] * centers - sums) / (1.0 + counts[:, None])
    centers.sub_(alpha * delta)


@torch.no_grad()
def set_class_means(centers: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """In place: the center of every class with rows becomes the mean of its rows (``sums / counts``, from
    :func:`class_sums`); a class without rows keeps its center. Returns the classes set (bool, K)."""
    has_rows = counts > 0
    centers[has_rows] = (sums[has_rows] / counts[has_rows, None]).to(centers.dtype)
    return has_rows


def center_loss(sq_dist_groups, reduction: str = "half_sum") -> torch.Tensor:
    """The center loss over groups of squared distances (labeled rows, confident unlabeled rows).

    ``half_sum`` (paper): 1/2 * the sum over all rows of all groups.
    ``mean`` (released code): the mean within each non-empty group, summed over groups (an empty group adds 0;
    the released code divides 0 by 0 there and produces NaN).
    """
    if reduction == "half_sum":
        return 0.5 * sum(d.sum() for d in sq_dist_groups)
    if reduction == "mean":
        return sum(d.mean() for d in sq_dist_groups if d.numel() > 0)
    raise ValueError(f"unknown center reduction {reduction!r}; expected one of {CENTER_REDUCTIONS}")


def centered_cosines(centers: torch.Tensor) -> torch.Tensor:
    """K x K cosine matrix of the globally centered class centers (the h~ of Eq. 8)."""
    centered = centers.float() - centers.float().mean(dim=0, keepdim=True)
    unit = F.normalize(centered, dim=1)
    return unit @ unit.t()


def etf_gap(centers: torch.Tensor) -> float:
    """max over k != t of |cos(h_k - h_mean, h_t - h_mean) + 1/(K-1)|: 0 exactly at a simplex ETF (what
    ``train/remop_etf_gap`` logs)."""
    num_classes = centers.shape[0]
    with torch.no_grad():
        cos = centered_cosines(centers.detach())
        off_diag = ~torch.eye(num_classes, dtype=torch.bool, device=centers.device)
        return (cos[off_diag] + 1.0 / (num_classes - 1)).abs().max().item()


def etf_regularizer(centers: torch.Tensor, kind: str = "paper") -> torch.Tensor:
    """Pushes the centered, normalised centers toward a simplex ETF (pairwise cosine -1/(K-1)).

    ``paper`` (Eq. 8): sum over k != t of (cos_kt + 1/(K-1))^2 -- exactly 0 at a simplex ETF.
    ``frobenius`` (released code): the Frobenius norm of the cosine matrix whose diagonal is overwritten with
    -1/(K-1), i.e. sqrt(sum_{k != t} cos_kt^2 + K/(K-1)^2). Same minimiser, other values: K/(K-1) at an ETF.
    """
    num_classes = centers.shape[0]
    target = -1.0 / (num_classes - 1)
    cos = centered_cosines(centers)
    off_diag = ~torch.eye(num_classes, dtype=torch.bool, device=centers.device)
    if kind == "paper":
        return (cos[off_diag] - target).pow(2).sum()
    if kind == "frobenius":
        diag = torch.full((num_classes,), target, dtype=cos.dtype, device=cos.device)
        return torch.sqrt(cos[off_diag].pow(2).sum() + diag.pow(2).sum())
    raise ValueError(f"unknown regularizer {kind!r}; expected one of {REGULARIZERS}")


class FeatureClassifierNet(BackboneWrapper):
    """A backbone plus the K x d class centers H (Eq. 4).

    The forward pass keeps the backbone's outputs and adds ``center_feat`` (the feature the feature classifier
    reads: the encoder's ``feat``, the same tensor in train and eval mode, or with ``feature='head'`` the
    dropped-out feature the linear classifier saw), ``feat_pred`` (Eq. 5) and ``mixture`` (Eq. 6), so the mixture
    is available wherever the model runs -- pseudo-labelling and test time alike. Both are computed in float32,
    also under autocast: a cosine near 1 or a dot product in the hundreds has no room for bf16's 8 bits.
    """

    own_no_weight_decay = ("centers",)

    def __init__(self, backbone: nn.Module, num_classes: int, beta: float = 0.5, similarity: str = "cosine",
                 mix: str = "prob", feature: str = "encoder"):
        super().__init__(backbone)
        if similarity not in SIMILARITIES or mix not in MIXES or feature not in FEATURES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, mix one of {MIXES} and feature one of "
                             f"{FEATURES}")
        self.beta, self.similarity, self.mix, self.feature_key = float(beta), similarity, mix, FEATURE_KEYS[feature]
        self.centers = nn.Parameter(torch.randn(num_classes, self.num_features))

    def forward(self, x, **kwargs):
        out = self.backbone(x, **kwargs)
        if not isinstance(out, dict):  # only_feat / only_fc calls pass straight through
            return out
        # a USB net without a regularised head: its classifier reads the feature itself
        out["center_feat"] = out.get(self.feature_key, out["feat"])
        with torch.autocast(device_type=out["feat"].device.type, enabled=False):
            out["feat_pred"] = feature_prediction(out["center_feat"].float(), self.centers.float(), self.similarity)
            out["mixture"] = mix_predictions(out["logits"].float(), out["feat_pred"], self.beta, self.mix)
        return out
