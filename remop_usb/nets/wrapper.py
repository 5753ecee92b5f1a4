"""The base of every network an algorithm puts around a USB backbone, keeping USB's network contract."""

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

    def group_matcher(self, coarse=False, prefix=""):
        return self.backbone.group_matcher(coarse, prefix=prefix + "backbone.")

    def no_weight_decay(self):
        inner = self.backbone.no_weight_decay() if hasattr(self.backbone, "no_weight_decay") else []
        return ["backbone." + n for n in inner] + list(self.own_no_weight_decay)
