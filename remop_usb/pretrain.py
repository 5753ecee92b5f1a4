"""The MS-Celeb-1M stand-in: a face-recognition ResNet-18 pretrained on synthetic identities.

The paper's encoder is a ResNet-18 trained to recognise the identities of MS-Celeb-1M; no face-pretrained weights
ship in any package. ``remop-usb pretrain`` builds the closest thing that can be made here: the same
:class:`~remop_usb.nets.resnet_fer.ResNet18FER` trunk trained to tell apart ``identities`` synthetic people
(:func:`datasets_fer.synthetic.render_face` with a per-person ``identity`` generator), each shown under random pose,
scale, lighting, noise and expression. The people are drawn from their own random stream (``pretrain/identity``),
so they are not the people of the demo dataset (every demo image draws a new person from the ``rafdb/...`` streams).

Images are rendered on the fly (0.7 ms each at 48 px), so there is no dataset on disk; image ``i`` of the run
depends only on ``(seed, i)``. Training is deterministic for a given torch build and thread count: AdamW with a
cosine schedule (a short run from random initialisation that must end converged), on a sample stream seeded by
``seed``. The result is written in the MS-Celeb checkpoint layout (``{'state_dict': torchvision keys + fc}``, the
``fc`` being the identity classifier), so ``pretrain_path`` loads it through the same loader as the real weights
(:func:`~remop_usb.nets.resnet_fer.load_face_checkpoint`).

:func:`ensure_pretrained` caches it under ``cache_dir/pretrain/<key>/`` where ``key`` hashes the settings and the
generator's version; the demo configs' ``demo_pretrain: True`` calls it on first use, as ``demo_data`` writes
the demo dataset.

``task: expression`` trains on the expression labels of a disjoint synthetic set instead (the fallback named in the
README, for features on which identity pretraining would not let pseudo-labelling engage).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import OneLineArgumentParser, UserError

CHECKPOINT_NAME = "resnet18_synthetic_faces.pth"
TASKS = ("identity", "expression")
#: bump when the sample stream or the training recipe changes: cached checkpoints then are rebuilt
RECIPE_VERSION = 1
#: expressions shown during identity pretraining: the 7 basic ones, neutral and happy most often (as in photos of
#: celebrities); expression pretraining samples the 7 classes uniformly
IDENTITY_EXPRESSION_WEIGHTS = (0.30, 0.25, 0.09, 0.09, 0.09, 0.09, 0.09)


@dataclass(frozen=True)
class PretrainSettings:
    """What a stand-in checkpoint depends on (its cache key)."""

    task: str = "expression"
    identities: int = 500
    steps: int = 900
    batch_size: int = 64
    img_size: int = 48
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0

    def check(self):
        if self.task not in TASKS:
            raise UserError(f"pretrain: task must be one of {', '.join(TASKS)}, got {self.task!r}")
        for name in ("identities", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"pretrain: {name} must be a positive integer, got {getattr(self, name)}")
        if self.img_size < 32:
            raise UserError(f"pretrain: img_size must be at least 32 (ResNet-18's strides), got {self.img_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)) or not (self.weight_decay >= 0):
            raise UserError(f"pretrain: lr must be a positive number and weight_decay >= 0, got {self.lr}, "
                            f"{self.weight_decay}")
        return self

    @property
    def num_classes(self) -> int:
        return self.identities if self.task == "identity" else len(IDENTITY_EXPRESSION_WEIGHTS)

    def key(self) -> str:
        from datasets_fer import synthetic

        text = json.dumps({**asdict(self), "recipe": RECIPE_VERSION, "generator": synthetic.VERSION},
                          sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class SyntheticFaces(torch.utils.data.Dataset):
    """Sample ``i`` of the pretraining stream: a face and its label (the person's index, or its expression)."""

    def __init__(self, settings: PretrainSettings, length: int, stream: str = "pretrain/sample"):
        from datasets_fer.transforms import MEAN, STD

        self.s, self.length, self.stream = settings, length, stream
        self.mean = torch.tensor(MEAN).view(3, 1, 1)
        self.std = torch.tensor(STD).view(3, 1, 1)

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        from datasets_fer.synthetic import face_rng, render_face

        rng = face_rng(self.s.seed, self.stream, i)
        person = int(rng.integers(self.s.identities))
        if self.s.task == "identity":
            expression = int(rng.choice(len(IDENTITY_EXPRESSION_WEIGHTS), p=IDENTITY_EXPRESSION_WEIGHTS))
            identity, label = face_rng(self.s.seed, "pretrain/identity", person), person
        else:
            expression, identity = int(rng.integers(len(IDENTITY_EXPRESSION_WEIGHTS))), None
            label = expression
        image = np.asarray(render_face(expression, rng, self.s.img_size, identity=identity), dtype=np.float32)
        if rng.random() < 0.5:
            image = image[:, ::-1]
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1) / 255.0
        return (x - self.mean) / self.std, label


def _progress(total, desc):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True, mininterval=2.0)


def train(settings: PretrainSettings, log=print):
    """Train the stand-in; returns ``(state_dict in torchvision's names with a fc, {held-out accuracy, ...})``."""
    from .nets.resnet_fer import ResNet18FER

    settings.check()
    torch.manual_seed(settings.seed)
    model = ResNet18FER(settings.num_classes, dropout=0.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda t: 0.5 * (1.0 + math.cos(math.pi * min(t, settings.steps) / settings.steps)))
    loader = torch.utils.data.DataLoader(SyntheticFaces(settings, settings.steps * settings.batch_size),
                                         batch_size=settings.batch_size, shuffle=False, num_workers=0)
    model.train()
    start, bar = time.time(), _progress(settings.steps, f"pretrain ({settings.task})")
    for x, y in loader:
        loss = F.cross_entropy(model(x)["logits"], y)
        if not torch.isfinite(loss):
            raise UserError(f"pretrain: the loss became {loss.item()} at step {bar.n}; lower lr ({settings.lr})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    info = {"seconds": round(time.time() - start, 1), "heldout_accuracy": held_out_accuracy(model, settings)}
    log(f"[remop-usb] pretrain: {settings.task} accuracy {100 * info['heldout_accuracy']:.1f}% on held-out images "
        f"(chance {100 / settings.num_classes:.1f}%), {info['seconds']:.0f} s")
    return _msceleb_layout(model), info


@torch.no_grad()
def held_out_accuracy(model, settings: PretrainSettings, n: int = 1024) -> float:
    """Accuracy on ``n`` new images of the same people (their own stream), the model in eval mode."""
    model.eval()
    data = SyntheticFaces(settings, n, stream="pretrain/heldout")
    loader = torch.utils.data.DataLoader(data, batch_size=256, shuffle=False, num_workers=0)
    correct = sum((model(x)["logits"].argmax(1) == y).sum().item() for x, y in loader)
    return correct / n


def _msceleb_layout(model) -> dict:
    """torchvision ResNet-18 names; the identity classifier as ``fc`` (as in ``resnet18_msceleb.pth``)."""
    out = {}
    for name, tensor in model.state_dict().items():
        if name.startswith("classifier."):
            name = "fc." + name.split(".", 1)[1]
        out[name] = tensor.clone()
    return out


def save(path, state_dict, settings: PretrainSettings, info: dict) -> str:
    from .fileio import atomic_output

    with atomic_output(path, suffix=".pth") as tmp:
        torch.save({"state_dict": state_dict, "remop_usb_pretrain": {**asdict(settings), **info}}, tmp)
    return os.fspath(path)


def cached_path(settings: PretrainSettings, cache_dir=None) -> str:
    from datasets_fer.common import resolve_cache_dir

    return os.path.join(resolve_cache_dir(cache_dir or None), "pretrain", settings.key(), CHECKPOINT_NAME)


def ensure_pretrained(settings: PretrainSettings = None, cache_dir=None, log=print) -> str:
    """The stand-in checkpoint for ``settings`` (None: :data:`DEMO_SETTINGS`) under ``cache_dir``, trained and
    written on first use."""
    settings = DEMO_SETTINGS if settings is None else settings
    path = cached_path(settings.check(), cache_dir)
    if os.path.isfile(path):
        return path
    log(f"[remop-usb] building the synthetic face-recognition backbone (once; cached as {path})")
    state_dict, info = train(settings, log=log)
    return save(path, state_dict, settings, info)


#: what ``demo_pretrain: True`` loads (the demo's 48 px)
DEMO_SETTINGS = PretrainSettings()
#: the test suite's stand-in: the demo's 48 px, under half the steps (built once per test session, ~2 minutes)
TEST_SETTINGS = PretrainSettings(steps=400)


def main(argv=None):
    defaults = PretrainSettings()
    p = OneLineArgumentParser(prog="remop-usb pretrain",
                              description="Train the MS-Celeb-1M stand-in: ResNet-18 recognising synthetic people "
                                          "(cached under cache_dir; the demo configs build it on first use).")
    p.add_argument("--out", default="", help="also copy the checkpoint here (MS-Celeb layout, for pretrain_path)")
    p.add_argument("--cache_dir", default="", help="'': $REMOP_USB_CACHE, else ~/.cache/remop-usb")
    p.add_argument("--task", default=defaults.task, choices=TASKS,
                   help="identity (the stand-in) or expression (labels of a disjoint synthetic set)")
    for name in ("identities", "steps", "batch_size", "img_size", "seed"):
        p.add_argument(f"--{name}", type=int, default=getattr(defaults, name))
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--weight_decay", type=float, default=defaults.weight_decay)
    p.add_argument("--force", action="store_true", help="retrain even when the cache has it")
    a = p.parse_args(argv)
    settings = PretrainSettings(**{k: getattr(a, k) for k in asdict(defaults)}).check()
    path = cached_path(settings, a.cache_dir)
    if a.force and os.path.isfile(path):
        os.unlink(path)
    path = ensure_pretrained(settings, a.cache_dir)
    if a.out:
        import shutil

        from .fileio import atomic_output

        with atomic_output(a.out, suffix=".pth") as tmp:
            shutil.copyfile(path, tmp)
        path = a.out
    print(path)
    return 0
