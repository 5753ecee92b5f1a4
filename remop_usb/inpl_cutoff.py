"""``remop-usb inpl-cutoff``: measure InPL's energy cutoff on your data, from a checkpoint of the base learner.

InPL's ``inpl_energy_cutoff`` is on the scale of the logits, so a value found on one network and dataset does not
carry over (:mod:`remop_usb.algorithms.inpl`). The procedure behind the shipped default, as one command: build the
run a config describes (same data, split and network), load a checkpoint of the base learner trained on it (FixMatch,
typically to half its schedule), and print the ``--quantile`` of the labeled training images' energies under its EMA
model. With the unlabeled images' held-back labels it also prints what that cutoff would keep: the share of unlabeled
images with an energy at or below it and the accuracy of their pseudo-labels.

    remop-usb inpl-cutoff --c config/paper/table3/fixmatch_rafdb_500_150.yaml --data_dir /data/RAF-DB \\
        --load_path saved_models/table3/.../latest_model.pth [--quantile 0.05]

Every other flag is a config key, as for ``train.py``.
"""

from __future__ import annotations

import tempfile

import torch

from .algorithms.inpl import dataset_logits, energy_score, labeled_energy_cutoff
from .errors import OneLineArgumentParser, UserError


def _parser():
    p = OneLineArgumentParser(prog="remop-usb inpl-cutoff", allow_abbrev=False,
                              description="Print InPL's energy cutoff measured on a base-learner checkpoint: the "
                                          "quantile of the labeled training images' energies. Other flags are "
                                          "config keys (as for train.py).")
    p.add_argument("--c", required=True, help="the config of the run the checkpoint comes from")
    p.add_argument("--load_path", required=True, help="its checkpoint (latest_model.pth or model_best.pth)")
    p.add_argument("--quantile", type=float, default=0.05, help="q of the labeled energies (default 0.05)")
    p.add_argument("--temperature", type=float, default=1.0, help="T of the energy -T*logsumexp(z/T) (default 1)")
    return p


def unlabeled_at_cutoff(algorithm, cutoff: float, temperature: float = 1.0):
    """(share of unlabeled images with energy <= cutoff, accuracy of their argmax against the held-back labels or
    None when the pool has no labels) under the EMA model, on the weak view."""
    from .usb_compat import device_of

    dataset = algorithm.dataset_dict["train_ulb"]
    logits = dataset_logits(algorithm.ema_model, dataset, "x_ulb_w", algorithm.args.eval_batch_size,
                            device_of(algorithm))
    kept = energy_score(logits, temperature) <= cutoff
    targets = getattr(dataset, "targets", None)
    labels = torch.as_tensor(targets if targets is not None else [-1] * len(kept))
    known = kept & (labels >= 0)
    accuracy = None if not known.any() else (logits.argmax(1)[known] == labels[known]).float().mean().item()
    return kept.float().mean().item(), accuracy


def main(argv) -> int:
    from .config import parse_args
    from .launch import build_algorithm, resolve_device, seed_everything

    opts, rest = _parser().parse_known_args(argv)
    if not 0.0 <= opts.quantile <= 1.0:
        raise UserError(f"--quantile must be in [0, 1], got {opts.quantile}")
    with tempfile.TemporaryDirectory(prefix="remop-usb-inpl-cutoff-") as scratch:
        args = parse_args(["--c", opts.c, *rest, "--save_dir", scratch, "--save_name", "cutoff",
                           "--diagnostics", "False", "--use_wandb", "False"])
        resolve_device(args)
        algorithm = build_algorithm(args)
        algorithm.load_model(opts.load_path)
        seed_everything(args.seed)  # the weak views' augmentations: the same figures every time
        cutoff, energies = labeled_energy_cutoff(algorithm, opts.quantile, opts.temperature, return_energies=True)
        share, accuracy = unlabeled_at_cutoff(algorithm, cutoff, opts.temperature)
    quality = "no held-back labels" if accuracy is None else f"{100 * accuracy:.1f}% of their pseudo-labels correct"
    print(f"inpl_energy_cutoff: {cutoff:.4f}  (q = {opts.quantile} of {energies.numel()} labeled images' energies, "
          f"median {energies.median().item():.4f}; keeps {100 * share:.1f}% of the unlabeled images, {quality})")
    return 0
