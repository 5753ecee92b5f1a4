"""``remop-usb inpl-cutoff``: measure InPL's energy cutoff on your data, from a checkpoint of the base learner.

InPL's ``inpl_energy_cutoff`` is on the scale of the logits, so a value found on one network and dataset does not
carry over, and InPL has no default (:mod:`remop_usb.algorithms.inpl`). The calibration as one command: build the run
a config describes (same data, split and network; an InPL config or its base learner's), load a checkpoint of the
base learner trained on it (FixMatch, to half its schedule), and print the ``--quantile`` of the labeled training
images' energies under its training model as the mask sees the unlabeled ones: train mode (dropout, batch
statistics), weak view, the model left unchanged (:func:`~remop_usb.algorithms.inpl.labeled_energy_cutoff`, the
function ``inpl_energy_cutoff: auto`` uses within a run). With the unlabeled images' held-back labels it also prints
what that cutoff would keep: the share of unlabeled images (weak view, the same train-mode pass) with an energy at or
below it and the accuracy of their pseudo-labels.

    remop-usb inpl-cutoff --c config/paper/table3/inpl_rafdb_500_150.yaml --data_dir /data/RAF-DB \\
        --load_path saved_models/table3/fixmatch_half/latest_model.pth [--quantile 0.05]

Every other flag is a config key, as for ``train.py``.
"""

from __future__ import annotations

import tempfile

import torch

from ..algorithms.inpl import AUTO, CUTOFF_QUANTILE, energy_score, labeled_energy_cutoff, train_mode_logits
from ..errors import OneLineArgumentParser, UserError


def _parser():
    p = OneLineArgumentParser(prog="remop-usb inpl-cutoff", allow_abbrev=False,
                              description="Print InPL's energy cutoff measured on a base-learner checkpoint: the "
                                          "quantile of the labeled training images' energies (train mode, weak "
                                          "view). Other flags are "
                                          "config keys (as for train.py).")
    p.add_argument("--c", required=True, help="the config of the run the checkpoint comes from")
    p.add_argument("--load_path", required=True, help="its checkpoint (latest_model.pth or model_best.pth)")
    p.add_argument("--quantile", type=float, default=CUTOFF_QUANTILE,
                   help=f"q of the labeled energies (default {CUTOFF_QUANTILE})")
    p.add_argument("--temperature", type=float, default=1.0, help="T of the energy -T*logsumexp(z/T) (default 1)")
    return p


def unlabeled_at_cutoff(algorithm, cutoff: float, temperature: float = 1.0):
    """(share of unlabeled images with energy <= cutoff, accuracy of their argmax against the held-back labels or
    None when the pool has no labels), their weak view under the training model in train mode, as the mask sees
    them."""
    from ..usb_compat import device_of

    dataset = algorithm.dataset_dict["train_ulb"]
    logits = train_mode_logits(algorithm.model, dataset, "x_ulb_w", algorithm.args.eval_batch_size,
                               device_of(algorithm), algorithm.args.seed)
    kept = energy_score(logits, temperature) <= cutoff
    targets = getattr(dataset, "targets", None)
    labels = torch.as_tensor(targets if targets is not None else [-1] * len(kept))
    known = kept & (labels >= 0)
    accuracy = None if not known.any() else (logits.argmax(1)[known] == labels[known]).float().mean().item()
    return kept.float().mean().item(), accuracy


def _written_by(path):
    """The run name (``fixmatch``, ``fixmatch+inpl``, ...) a train.py checkpoint records, or None."""
    from ..usb_compat.checkpointing import STATE_KEY

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:  # unreadable: loading it reports that in one line
        return None
    return ((checkpoint.get(STATE_KEY) or {}).get("run") or {}).get("algorithm")


def measure_on_checkpoints_run(args, load_path):
    """An InPL config names the run being calibrated; the checkpoint is usually its base learner's (FixMatch): then
    the base learner is built to load it. An InPL checkpoint is loaded into InPL, whose missing cutoff this command
    is measuring (so ``auto`` stands in for it)."""
    if args.imb_algorithm != "inpl":
        return
    if _written_by(load_path) == args.algorithm:
        args.imb_algorithm = None
    elif args.inpl_energy_cutoff is None:
        args.inpl_energy_cutoff = AUTO


def main(argv) -> int:
    from ..config import parse_args
    from ..launch import build_algorithm, resolve_device, seed_everything

    opts, rest = _parser().parse_known_args(argv)
    if not 0.0 <= opts.quantile <= 1.0:
        raise UserError(f"--quantile must be in [0, 1], got {opts.quantile}")
    with tempfile.TemporaryDirectory(prefix="remop-usb-inpl-cutoff-") as scratch:
        args = parse_args(["--c", opts.c, *rest, "--save_dir", scratch, "--save_name", "cutoff",
                           "--diagnostics", "False", "--use_wandb", "False"])
        measure_on_checkpoints_run(args, opts.load_path)
        # the checkpoint's weights replace the initial ones: no face weights to load, no stand-in to build
        args.use_pretrain, args.demo_pretrain, args.pretrain_path = False, False, ""
        resolve_device(args)
        seed_everything(args.seed)
        algorithm = build_algorithm(args)
        algorithm.load_model(opts.load_path)
        cutoff, energies = labeled_energy_cutoff(algorithm, opts.quantile, opts.temperature, return_energies=True)
        share, accuracy = unlabeled_at_cutoff(algorithm, cutoff, opts.temperature)
    quality = "no held-back labels" if accuracy is None else f"{100 * accuracy:.1f}% of their pseudo-labels correct"
    print(f"inpl_energy_cutoff: {cutoff:.4f}  (q = {opts.quantile} of {energies.numel()} labeled images' energies, "
          f"median {energies.median().item():.4f}; keeps {100 * share:.1f}% of the unlabeled images, {quality})")
    return 0
