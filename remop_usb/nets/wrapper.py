"""The base of every network an algorithm puts around a USB backbone, keeping USB's network contract.

The contract on features (see ``resnet_fer.py``): ``'feat'`` is the encoder's feature, the same in train and eval
mode; a head's own regularisation (resnet18_fer's dropout) happens inside the head. :meth:`BackboneWrapper.head_of`
runs a backbone's linear head on a feature and also returns the tensor its classifier saw (``classifier_input``).
"""

from __future__ import annotations

import torch.nn as nn


class BackboneWrapper(nn.Module):
    """A module around a USB backbone that keeps USB's network contract (``num_features``, ``group_matcher``,
    ``no_weight_decay``); the backbone's parameters appear under ``backbone.``. Every network wrapper of the
    algorithms derives from it (ReMoP's class centers, Ada-CM's unit features, CPE's expert heads)."""

    #: the wrapper's own parameters exempt from weight decay
    own_no_weight_decay = ()

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.num_features = backbone.num_features

    def head_of(self, feat):
        """The backbone's linear head on ``feat``: ``{'logits', 'classifier_input'}``. A backbone with a regularised
        head (``linear_head``, e.g. resnet18_fer's dropout) says what its classifier saw; for any other USB net the
        classifier reads the feature itself."""
        head = getattr(self.backbone, "linear_head", None)
        if head is not None:
            return head(feat)
        return {"logits": self.backbone(feat, only_fc=True), "classifier_input": feat}

    def head_dropout(self) -> nn.Module:
        """The dropout the backbone's head applies before its classifier (an Identity when it has none), for extra
        heads on the same feature (CPE's experts)."""
        dropout = getattr(self.backbone, "dropout", None)
        return nn.Dropout(dropout.p) if isinstance(dropout, nn.Dropout) else nn.Identity()

    def group_matcher(self, coarse=False, prefix=""):
        return self.backbone.group_matcher(coarse, prefix=prefix + "backbone.")

    def no_weight_decay(self):
        inner = self.backbone.no_weight_decay() if hasattr(self.backbone, "no_weight_decay") else []
        return ["backbone." + n for n in inner] + list(self.own_no_weight_decay)
