"""ResNet-18 backbone for facial expression recognition, in USB's network contract.

The trunk is torchvision's ``resnet18`` (conv1 .. layer4 + adaptive average pooling). Its modules are taken over
under torchvision's own names, so a face-recognition checkpoint (``resnet18_msceleb.pth``, ``ijba_res18_naive.pth.tar``)
maps onto the trunk key for key once a ``module.`` prefix (DataParallel) is removed. The head is new:
``Dropout(p) -> Linear(512, num_classes)`` named ``classifier``.

USB calls a builder as ``builder(num_classes=..., pretrained=..., pretrained_path=...)`` and, for the EMA copy,
``builder(num_classes=...)``; see :func:`resnet18_fer`.
"""

import os
import pickle
import re

import torch
import torch.nn as nn
import torchvision

from remop_usb.errors import UserError

__all__ = ["ResNet18FER", "resnet18_fer", "load_face_checkpoint", "add_classwise_bn", "add_depth_features",
           "TRUNK_MODULES", "CLASSWISE_BN_BRANCHES", "DEPTH_STAGES"]

# torchvision resnet18 children that make up the trunk, in forward order (its ``fc`` is not used).
TRUNK_MODULES = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool")

#: the class-wise BatchNorm branches of CPE (Ma et al., AAAI 2024), in this order: ``branch_bn.0`` .. ``.2``
CLASSWISE_BN_BRANCHES = ("head", "medium", "tail")
#: the stages whose pooled outputs ``'depth_feat'`` holds (:func:`add_depth_features`), shallowest first
DEPTH_STAGES = ("layer1", "layer2", "layer3")


class ResNet18FER(nn.Module):
    """torchvision ResNet-18 trunk -> 512-d pooled feature -> ``Dropout(p)`` -> ``Linear(512, num_classes)``.

    As in the ReMoP / Ada-CM authors' backbone, dropout sits between the average pooling and the linear layer. The
    ``'feat'`` this model returns is the encoder's 512-d pooled feature *before* dropout -- USB's network contract
    (its nets return the feature their head reads, without the head's regularisation), and the same tensor in train
    and eval mode. Dropout belongs to the linear head: ``logits = classifier(dropout(feat))``, and ``only_fc=True``
    applies both. ``'classifier_input'`` is the dropped-out feature the classifier saw in this pass (the authors'
    released ReMoP code computes its feature prediction and center loss from that tensor: ``remop_feature: head``).
    ``only_feat=True`` returns ``'feat'``.

    Parameter names of the trunk are torchvision's (``conv1.weight``, ``bn1.running_mean``,
    ``layer1.0.conv1.weight``, ``layer2.0.downsample.0.weight``, ...); the head is ``classifier.weight`` /
    ``classifier.bias``. Pooling is adaptive, so any input of at least 32x32 px works.

    With ``classwise_bn=True`` (or after :func:`add_classwise_bn`) the layer4 feature map goes through three
    parallel ``BatchNorm2d`` branches (``branch_bn.0/1/2``: head, medium, tail; CPE's class-wise BN) before pooling
    and dropout; the output gains ``'branch_feat'`` ``(N, 3, 512)`` (before dropout), ``'feat'`` is the mean of the
    branch features and ``'logits'`` the head of that mean. The default model has no such
    module: its forward pass and state_dict keys are unchanged. After :func:`add_depth_features` the output also
    holds ``'depth_feat'``: the average-pooled outputs of :data:`DEPTH_STAGES` (64, 128 and 256 channels), the
    shallower depths Meta-Expert's feature fusion reads (no parameter added).

    Args:
        num_classes: number of expression classes.
        dropout: dropout probability before the classifier, ``0 <= p < 1`` (default 0.5).
        classwise_bn: add CPE's three class-wise BatchNorm branches (default False).
    """

    def __init__(self, num_classes: int, dropout: float = 0.5, classwise_bn: bool = False):
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise UserError(f"resnet18_fer: num_classes must be a positive integer, got {num_classes!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= float(dropout) < 1.0:
            raise UserError(f"resnet18_fer: dropout must be a number in [0, 1), got {dropout!r}")
        trunk = torchvision.models.resnet18(weights=None)
        for name in TRUNK_MODULES:  # same attribute names => same state_dict keys as torchvision
            setattr(self, name, getattr(trunk, name))
        self.num_features = trunk.fc.in_features  # 512
        self.dropout = nn.Dropout(p=float(dropout))
        self.classifier = nn.Linear(self.num_features, num_classes)
        self.branch_bn = None  # CPE's class-wise BN branches (an nn.ModuleList) when enabled
        self.depth_features = False  # also return the pooled outputs of DEPTH_STAGES (add_depth_features)
        if classwise_bn:
            add_classwise_bn(self)

    def extract(self, x, stages=None):
        """Trunk up to layer4: ``(N, 3, H, W) -> (N, 512, h, w)``; the output of each stage named in ``stages`` is
        appended to that list on the way."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for name in ("layer1", "layer2", "layer3"):
            x = getattr(self, name)(x)
            if stages is not None and name in DEPTH_STAGES:
                stages.append(x)
        return self.layer4(x)

    def forward(self, x, only_fc=False, only_feat=False, **kwargs):
        """
        Args:
            x: images ``(N, 3, H, W)``; with ``only_fc`` a feature ``(N, 512)``.
            only_fc: ``x`` is a feature; return the linear head's output (dropout, then the classifier) only.
            only_feat: return only the 512-d pooled feature (before dropout).
        Returns:
            ``{'logits': (N, num_classes), 'feat': (N, 512), 'classifier_input': (N, 512)}`` unless a flag says
            otherwise; with class-wise BN also ``'branch_feat': (N, 3, 512)``.
        """
        if only_fc:
            return self.linear_head(x)["logits"]
        stages = [] if self.depth_features else None
        fmap = self.extract(x, stages)
        branch_feat = None
        if self.branch_bn is None:
            feat = self._pool(fmap)
        else:
            branch_feat = torch.stack([self._pool(bn(fmap)) for bn in self.branch_bn], dim=1)
            feat = branch_feat.mean(dim=1)
        if only_feat:
            return feat
        out = {**self.linear_head(feat), "feat": feat}
        if branch_feat is not None:
            out["branch_feat"] = branch_feat
        if stages is not None:
            out["depth_feat"] = [self._pool(stage) for stage in stages]
        return out

    def linear_head(self, feat):
        """The linear classifier on ``feat``: ``{'logits': classifier(dropout(feat)), 'classifier_input':
        dropout(feat)}`` (dropout is the identity in eval mode)."""
        dropped = self.dropout(feat)
        return {"logits": self.classifier(dropped), "classifier_input": dropped}

    def _pool(self, fmap):
        return torch.flatten(self.avgpool(fmap), 1)

    def group_matcher(self, coarse=False, prefix=""):
        """Parameter groups for layer-wise lr decay: the stem, then each stage (coarse) or each block."""
        p = re.escape(prefix)
        return dict(
            stem=r"^{p}conv1|^{p}bn1|^{p}maxpool".format(p=p),
            blocks=r"^{}layer(\d+)".format(p) if coarse else r"^{}layer(\d+)\.(\d+)".format(p),
        )

    def no_weight_decay(self):
        """Names of parameters exempt from weight decay: every BatchNorm parameter and every bias."""
        names = []
        for mod_name, mod in self.named_modules():
            for p_name, _ in mod.named_parameters(recurse=False):
                if isinstance(mod, nn.modules.batchnorm._BatchNorm) or p_name == "bias":
                    names.append(f"{mod_name}.{p_name}" if mod_name else p_name)
        return names


def add_classwise_bn(model: ResNet18FER) -> ResNet18FER:
    """Give ``model`` CPE's class-wise BN: three fresh ``BatchNorm2d`` on the layer4 feature map (in place).

    CPE (Ma et al., "Three Heads Are Better Than One: Complementary Experts for Long-Tailed Semi-supervised
    Learning", AAAI 2024) normalises the last feature map with one BatchNorm per class group (head, medium, tail);
    every sample goes through all three, and the algorithm decides which branches learn from which pseudo-labels.
    A model that already has them is returned unchanged.
    """
    if not isinstance(model, ResNet18FER):
        raise UserError(f"class-wise BN is implemented for net resnet18_fer, not {type(model).__name__}")
    if model.branch_bn is None:
        ref = model.classifier.weight
        model.branch_bn = nn.ModuleList(nn.BatchNorm2d(model.num_features) for _ in CLASSWISE_BN_BRANCHES)
        model.branch_bn.to(device=ref.device).train(model.training)
    return model


def add_depth_features(model: ResNet18FER) -> ResNet18FER:
    """Make ``model`` also return ``'depth_feat'``, the pooled outputs of :data:`DEPTH_STAGES` (in place; the
    features Meta-Expert's multi-depth fusion reads). Adds no parameter: state_dict keys are unchanged."""
    if not isinstance(model, ResNet18FER):
        raise UserError(f"multi-depth features are implemented for net resnet18_fer, not {type(model).__name__}")
    model.depth_features = True
    return model


def resnet18_fer(num_classes, pretrained=False, pretrained_path=None, dropout=0.5, **kwargs):
    """USB builder for :class:`ResNet18FER`.

    A non-empty ``pretrained_path`` loads a face-recognition checkpoint into the trunk (see
    :func:`load_face_checkpoint`); the classifier always starts from random init. ``pretrained=True`` without a
    path is an error: no face-pretrained weights ship with this package. Extra keyword arguments are ignored, as
    USB's own builders do.
    """
    model = ResNet18FER(num_classes=num_classes, dropout=dropout)
    if pretrained_path is not None and not isinstance(pretrained_path, (str, os.PathLike)):
        raise UserError(f"resnet18_fer: pretrain_path must be a file path, got {pretrained_path!r}")
    if pretrained_path is not None and str(pretrained_path).strip():
        load_face_checkpoint(model, pretrained_path)
    elif pretrained:
        raise UserError(
            "resnet18_fer: use_pretrain is set but pretrain_path is empty; no face-pretrained weights ship with "
            "remop-usb, so set pretrain_path to the face-recognition checkpoint resnet18_msceleb.pth "
            "(or ijba_res18_naive.pth.tar)"
        )
    return model


def _is_bn_counter(name):
    return name.endswith("num_batches_tracked")


def _strip_module(key):
    while key.startswith("module."):
        key = key[len("module."):]
    return key


def _torch_load(path, log):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass  # an older checkpoint pickling non-tensor objects; retry with the full unpickler below
    except Exception as err:
        raise UserError(f"pretrain_path {path}: cannot read checkpoint ({type(err).__name__}: {err})") from err
    log(f"resnet18_fer: {path} is not loadable with weights_only=True; loading it with the full unpickler "
        "(only do this with checkpoints you trust)")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise UserError(f"pretrain_path {path}: cannot read checkpoint ({type(err).__name__}: {err})") from err


def _extract_state_dict(ckpt, path):
    if isinstance(ckpt, nn.Module):
        return ckpt.state_dict()
    if isinstance(ckpt, dict):
        for key in ("state_dict", "model"):
            inner = ckpt.get(key)
            if isinstance(inner, nn.Module):
                return inner.state_dict()
            if isinstance(inner, dict):
                return inner
        if any(torch.is_tensor(v) for v in ckpt.values()):
            return ckpt  # a bare state_dict
    raise UserError(
        f"pretrain_path {path}: not a recognised checkpoint (expected a state_dict, or a dict with a "
        f"'state_dict' or 'model' entry; got {type(ckpt).__name__})"
    )


def load_face_checkpoint(model, path, log=print) -> dict:
    """Load a face-recognition ResNet-18 checkpoint into ``model``'s trunk (conv1, bn1, layer1..layer4).

    Accepted layouts: ``{'state_dict': sd}`` (``resnet18_msceleb.pth``: torchvision keys plus a 1000-way ``fc``),
    ``{'state_dict': sd}`` with ``module.``-prefixed keys and a 512->256 ``feature`` layer
    (``ijba_res18_naive.pth.tar``), ``{'model': sd}`` and a bare ``sd``. ``module.`` prefixes are stripped; only
    trunk tensors whose names match are loaded, so ``fc`` / ``feature`` / any classifier in the file is never used
    and ``model.classifier`` keeps its initialisation.

    "Trunk tensors" are the trunk's parameters and BatchNorm running statistics. BatchNorm ``num_batches_tracked``
    counters are copied when the file has them but are not counted and not reported missing (old checkpoints
    predate them and they do not affect training with a fixed momentum).

    Logs one line through ``log``. Raises :class:`UserError` for a missing or unreadable file, a file that matches
    no trunk tensor, and a trunk tensor whose shape differs from the model's.

    Returns:
        ``{'loaded': n, 'missing': [trunk names absent from the file], 'unused': [file names not loaded]}``
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"pretrain_path {path}: no such file (expected a face-recognition checkpoint such as "
                        "resnet18_msceleb.pth)")
    raw = _extract_state_dict(_torch_load(path, log), path)

    source = {}
    for key, value in raw.items():
        if not torch.is_tensor(value):
            continue
        source[_strip_module(str(key))] = value

    target = model.state_dict()
    trunk_names = [k for k in target if k.split(".", 1)[0] in TRUNK_MODULES]
    counted = [k for k in trunk_names if not _is_bn_counter(k)]

    to_load = {}
    for name in trunk_names:
        if name not in source:
            continue
        src, dst = source[name], target[name]
        if src.shape != dst.shape:
            raise UserError(
                f"pretrain_path {path}: tensor {name} has shape {tuple(src.shape)} in the checkpoint but "
                f"{tuple(dst.shape)} in resnet18 (is this a ResNet-18 checkpoint?)"
            )
        to_load[name] = src
    loaded = [k for k in counted if k in to_load]
    missing = [k for k in counted if k not in to_load]
    unused = [k for k in source if k not in to_load]

    if not loaded:
        sample = ", ".join(list(source)[:5]) or "none"
        raise UserError(
            f"pretrain_path {path}: no tensor in the checkpoint matches the resnet18 trunk (expected keys such as "
            f"conv1.weight, layer1.0.conv1.weight; the file has {len(source)} tensors, e.g. {sample})"
        )

    model.load_state_dict(to_load, strict=False)
    log(f"resnet18_fer: loaded {len(loaded)}/{len(counted)} trunk tensors from {path}; "
        f"missing from file: {missing if missing else 'none'}; "
        f"{len(unused)} file tensors unused" + (f" ({', '.join(unused)})" if unused else ""))
    return {"loaded": len(loaded), "missing": missing, "unused": unused}
