"""The feature classifier of ReMoP and the pieces of math around it, shared by every learner ReMoP wraps.

Paper: Li, Zhang et al., "Towards Regularized Mixture of Predictions for Class-Imbalanced Semi-Supervised Facial
Expression Recognition" (ReMoP). Equations referenced below are the paper's:

- Eq. 4: the feature classifier is a matrix of class centers H = [h_1, ..., h_K] (here a K x d parameter).
- Eq. 5: the feature prediction p_s^k = cos(f(x), h_k).
- Eq. 6: the mixture p_m = beta * p_l + (1 - beta) * p_s, with p_l = softmax of the linear classifier.
- Center loss (Sec. 4.2): L_c = 1/2 * sum ||x - h_y||^2.
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
    """||x_i - h_{y_i}||^2 for each row; gradients reach both the features and the centers."""
    return (feat.float() - centers.float()[labels]).pow(2).sum(dim=1)


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

    The forward pass keeps the backbone's ``{'logits', 'feat'}`` and adds ``feat_pred`` (Eq. 5) and ``mixture``
    (Eq. 6), so the mixture is available wherever the model runs -- pseudo-labelling and test time alike.
    """

    own_no_weight_decay = ("centers",)

    def __init__(self, backbone: nn.Module, num_classes: int, beta: float = 0.5, similarity: str = "cosine",
                 mix: str = "prob"):
        super().__init__(backbone)
        if similarity not in SIMILARITIES or mix not in MIXES:
            raise ValueError(f"similarity must be one of {SIMILARITIES} and mix one of {MIXES}")
        self.beta, self.similarity, self.mix = float(beta), similarity, mix
        self.centers = nn.Parameter(torch.randn(num_classes, self.num_features))

    def forward(self, x, **kwargs):
        out = self.backbone(x, **kwargs)
        if not isinstance(out, dict):  # only_feat / only_fc calls pass straight through
            return out
        out["feat_pred"] = feature_prediction(out["feat"], self.centers, self.similarity)
        out["mixture"] = mix_predictions(out["logits"], out["feat_pred"], self.beta, self.mix)
        return out
