"""The training launcher behind ``python train.py --c config.yaml`` (USB ships no train.py in its wheel).

It follows USB's own train.py -- seed, logger, net builder, ``get_algorithm`` / ``get_imb_algorithm``, place the
models, optional resume, ``algorithm.train()`` -- with three differences: CUDA when available and CPU otherwise with
the same config; multi-GPU stays USB's one-process-per-GPU DDP, but nothing is spawned without GPUs; and at the end
``results.json`` is written from the last and the best checkpoints (see :mod:`remop_usb.results`), after the plots
and W&B: it is the last file of a finished run.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import sys

import numpy as np
import torch

from .errors import UserError
from .usb_compat.distributed import main_process_saves, processes_per_node


def resolve_device(args):
    """Set args.gpu / args.distributed for the machine we are on; returns a one-line description."""
    cuda = torch.cuda.is_available()
    if args.device == "cuda" and not cuda:
        raise UserError("device: cuda was asked for but torch sees no CUDA device (use device: auto or cpu)")
    use_cuda = cuda and args.device != "cpu"
    if not use_cuda:
        args.gpu = None
        if args.multiprocessing_distributed:
            print("[remop-usb] multiprocessing_distributed ignored: no GPU, training in one CPU process")
        args.multiprocessing_distributed = False
        if args.amp:
            print("[remop-usb] amp ignored on CPU")
            args.amp = False
    elif not args.multiprocessing_distributed and args.gpu is None:
        args.gpu = 0
    args.distributed = args.world_size > 1 or args.multiprocessing_distributed
    if args.distributed and not use_cuda and args.dist_backend == "nccl":
        args.dist_backend = "gloo"
    return f"cuda ({torch.cuda.device_count()} GPU)" if use_cuda else "cpu"


def resolve_resume(args):
    """The checkpoint a resumed run loads. An explicit ``load_path`` must exist; without one it is the save dir's
    ``latest_model.pth`` (or, where that is missing, its ``.prev``, which ``load_model`` falls back to) -- and when
    neither exists yet (the run was stopped before its first checkpoint) the run starts from scratch, saying so.
    Returns True when it does (``args.resume`` is then False)."""
    if not args.resume:
        return False
    if args.load_path is not None:
        if not os.path.exists(args.load_path):
            raise UserError(f"resume: no checkpoint at {args.load_path}")
        return False
    from .usb_compat.checkpointing import previous_path

    save_path = os.path.join(args.save_dir, args.save_name)
    latest = os.path.join(save_path, "latest_model.pth")
    if os.path.exists(latest) or os.path.exists(previous_path(latest)):
        args.load_path = latest
        return False
    print(f"[remop-usb] resume: no checkpoint in {save_path} yet (latest_model.pth, latest_model.prev.pth); "
          f"training from scratch")
    args.resume = False
    return True


def prepare_save_dir(args, keep=False):
    """Rank 0 only: a fresh run replaces an existing save dir (USB's overwrite), a resumed one keeps it; so does
    (``keep``) a resume with nothing to resume from under ``overwrite: False``."""
    save_path = os.path.join(args.save_dir, args.save_name)
    if not args.resume and os.path.exists(save_path):
        if keep and not args.overwrite:
            return
        if not args.overwrite:
            raise UserError(f"save dir {save_path} exists and overwrite is False (set resume: True to continue it)")
        shutil.rmtree(save_path)


def main(argv=None):
    """Console entry point: parse, train, report; a UserError ends with one line and exit status 2."""
    from .config import parse_args
    from .usb_compat import preemption

    preemption.install_handler()  # first: SIGUSR2 from here on checkpoints at a step's end (see usb_compat.preemption)
    try:
        args = parse_args(argv)
        run(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def run(args):
    from . import runconfig
    from .fileio import write_json_atomic

    config = runconfig.snapshot(args)  # as parsed, before it is adapted to this machine
    device = resolve_device(args)
    resolve_pretrain(args)  # before any worker starts: one process builds the stand-in
    started_over = resolve_resume(args)
    if args.rank == 0:
        prepare_save_dir(args, keep=started_over)
        write_json_atomic(os.path.join(args.save_dir, args.save_name, runconfig.CONFIG_FILE), config, indent=2)
    print(f"[remop-usb] {args.algorithm}{'+' + args.imb_algorithm if args.imb_algorithm else ''} on "
          f"{args.dataset}, device {device}")
    if args.multiprocessing_distributed:
        from .usb_compat import preemption

        preemption.uninstall_handler()  # ranks could stop at different steps: the signal ends them
        ngpus = torch.cuda.device_count()
        args.world_size = ngpus * args.world_size
        torch.multiprocessing.spawn(main_worker, nprocs=ngpus, args=(ngpus, args))
        return None
    return main_worker(args.gpu, processes_per_node(args), args)


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_pretrain(args):
    """``demo_pretrain: True`` with an empty ``pretrain_path``: the synthetic stand-in's checkpoint (built on first
    use), loaded like real weights. A ``pretrain_path`` given is used as it is."""
    if getattr(args, "demo_pretrain", False) and not str(args.pretrain_path or "").strip():
        from .pretrain import ensure_pretrained

        args.pretrain_path = ensure_pretrained(cache_dir=getattr(args, "cache_dir", "") or None)
        args.use_pretrain = True


def build_algorithm(args, tb_log=None, logger=None, ngpus_per_node=None):
    """USB's algorithm object (plain or wrapped by the imbalanced algorithm), models placed on the device."""
    resolve_pretrain(args)
    from semilearn.algorithms import get_algorithm
    from semilearn.core.utils import get_net_builder
    from semilearn.imb_algorithms import get_imb_algorithm

    from . import tracking
    from .usb_compat import place_model
    from .usb_compat.amp import quiet_grad_scaler

    tracking.install()  # use_wandb: USB registers its W&B hook by name while it builds the algorithm
    net_builder = get_net_builder(args.net, args.net_from_name)
    with quiet_grad_scaler():
        if args.imb_algorithm:
            algorithm = get_imb_algorithm(args, net_builder, tb_log, logger)
        else:
            algorithm = get_algorithm(args, net_builder, tb_log, logger)
    algorithm.model = place_model(args, algorithm.model)
    algorithm.ema_model = place_model(args, algorithm.ema_model, clip_batch=False)
    algorithm.ngpus_per_node = processes_per_node(args) if ngpus_per_node is None else ngpus_per_node
    from .diagnostics import attach_diagnostics

    attach_diagnostics(algorithm)  # with diagnostics: True (default); W&B is USB's use_wandb hook (tracking.install)
    from .pseudo_labels import attach_pseudo_label_monitor

    attach_pseudo_label_monitor(algorithm)  # train/pl_mask, train/pl_acc: what the unlabeled loss trains on
    return algorithm


def algorithm_from_run_dir(run_dir, what="plots"):
    """The algorithm of a finished run, rebuilt on this machine from its config.json: one process, no training,
    nothing logged (W&B, TensorBoard); ``what`` names the caller in messages. Weights are the caller's to load."""
    import argparse

    from . import registry, runconfig

    config = runconfig.read_config(run_dir, what)
    if config is None:
        raise UserError(f"{what}: {run_dir} has no {runconfig.CONFIG_FILE} (a run directory written by train.py)")
    args = argparse.Namespace(**config)
    run_dir = os.path.abspath(run_dir)
    args.save_dir, args.save_name = os.path.dirname(run_dir), os.path.basename(run_dir)
    args.resume, args.load_path, args.use_wandb, args.use_tensorboard = False, None, False, False
    args.multiprocessing_distributed, args.world_size, args.rank = False, 1, 0
    registry.load(args.plugins or [])
    resolve_device(args)
    return build_algorithm(args)


def train_worker(gpu, ngpus_per_node, args):
    """One training process: distributed set-up, logger, algorithm, optional resume, ``algorithm.train()``."""
    from semilearn.core.utils import TBLog

    from .usb_compat.run_logger import run_logger

    args.gpu = gpu
    seed_everything(args.seed)
    torch.backends.cudnn.deterministic = True
    if args.distributed:
        if args.multiprocessing_distributed:
            args.rank = args.rank * ngpus_per_node + gpu
        torch.distributed.init_process_group(backend=args.dist_backend, init_method=args.dist_url,
                                             world_size=args.world_size, rank=args.rank)
        main_process_saves(args)
    save_path = os.path.join(args.save_dir, args.save_name)
    main_process = args.rank % ngpus_per_node == 0
    tb_log = TBLog(save_path, "tensorboard", use_tensorboard=args.use_tensorboard) if main_process else None
    logger = run_logger(args.save_name, save_path, "INFO" if main_process else "WARNING")
    logger.setLevel(logging.INFO if main_process else logging.WARNING)  # basicConfig may already be taken
    for line in getattr(args, "preset_conflicts", []):  # printed while parsing, before the run's log.txt existed
        logger.info(line)

    algorithm = build_algorithm(args, tb_log, logger, ngpus_per_node)
    logger.info(f"Arguments: {algorithm.args}")
    if args.resume:
        algorithm.load_model(args.load_path)  # resolve_resume checked it is there
    algorithm.train()
    for key, item in algorithm.results_dict.items():
        logger.info(f"Model result - {key} : {item}")
    return algorithm, main_process


def main_worker(gpu, ngpus_per_node, args):
    """Train, then (main process only) evaluate, print the one-line summary, write the plots, finish W&B and --
    last, so that a run stopped before it is not taken as finished -- write results.json."""
    from . import figures, results, tracking

    algorithm, main_process = train_worker(gpu, ngpus_per_node, args)
    summary = None
    if main_process:
        save_path = os.path.join(args.save_dir, args.save_name)
        summary = results.summarize(algorithm, save_path)
        print(results.one_line(summary))
        figures_written = figures.write_run_plots(algorithm, save_path, summary) if args.plots else {}
        tracking.finish(algorithm, summary, figures_written)
        results.write_results(summary, save_path)
    logging.getLogger(args.save_name).handlers.clear()
    return summary
