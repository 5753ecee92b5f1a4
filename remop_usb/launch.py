"""The training launcher behind ``python train.py --c config.yaml`` (USB ships no train.py in its wheel).

It follows USB's own train.py -- seed, logger, net builder, ``get_algorithm`` / ``get_imb_algorithm``, place the
models, optional resume, ``algorithm.train()`` -- with three differences: CUDA when available and CPU otherwise with
the same config; multi-GPU stays USB's one-process-per-GPU DDP, but nothing is spawned without GPUs; and at the end
``results.json`` is written from the last and the best checkpoints (see :mod:`remop_usb.results`).
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import sys
import warnings

import numpy as np
import torch

from .errors import UserError


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


def prepare_save_dir(args):
    """Rank 0 only: a fresh run replaces an existing save dir (USB's overwrite), a resumed one keeps it."""
    save_path = os.path.join(args.save_dir, args.save_name)
    if not args.resume and os.path.exists(save_path):
        if not args.overwrite:
            raise UserError(f"save dir {save_path} exists and overwrite is False (set resume: True to continue it)")
        shutil.rmtree(save_path)


def main(argv=None):
    """Console entry point: parse, train, report; a UserError ends with one line and exit status 2."""
    from .config import parse_args

    try:
        args = parse_args(argv)
        run(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def run(args):
    device = resolve_device(args)
    if args.resume and args.load_path is None:
        args.load_path = os.path.join(args.save_dir, args.save_name, "latest_model.pth")
    if args.rank == 0:
        prepare_save_dir(args)
    print(f"[remop-usb] {args.algorithm}{'+' + args.imb_algorithm if args.imb_algorithm else ''} on "
          f"{args.dataset}, device {device}")
    if args.multiprocessing_distributed:
        ngpus = torch.cuda.device_count()
        args.world_size = ngpus * args.world_size
        torch.multiprocessing.spawn(main_worker, nprocs=ngpus, args=(ngpus, args))
        return None
    return main_worker(args.gpu, processes_per_node(args), args)


def processes_per_node(args):
    """USB's ``ngpus_per_node``: GPUs on this node, or -- for CPU processes (gloo) -- every process of the run."""
    return torch.cuda.device_count() if args.gpu is not None or args.multiprocessing_distributed \
        else max(1, args.world_size)


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_algorithm(args, tb_log=None, logger=None, ngpus_per_node=None):
    """USB's algorithm object (plain or wrapped by the imbalanced algorithm), models placed on the device."""
    from semilearn.algorithms import get_algorithm
    from semilearn.core.utils import get_net_builder
    from semilearn.imb_algorithms import get_imb_algorithm

    from .usb_compat import place_model

    net_builder = get_net_builder(args.net, args.net_from_name)
    with warnings.catch_warnings():  # USB builds a CUDA GradScaler unconditionally; it disables itself on CPU
        warnings.filterwarnings("ignore", message=".*torch.cuda.amp.GradScaler.*")
        warnings.filterwarnings("ignore", message=".*GradScaler is enabled, but CUDA is not available.*")
        if args.imb_algorithm:
            algorithm = get_imb_algorithm(args, net_builder, tb_log, logger)
        else:
            algorithm = get_algorithm(args, net_builder, tb_log, logger)
    algorithm.model = place_model(args, algorithm.model)
    algorithm.ema_model = place_model(args, algorithm.ema_model, clip_batch=False)
    # USB's hooks pick the saving process with rank % ngpus_per_node (0 on CPU) and multiprocessing_distributed
    algorithm.ngpus_per_node = processes_per_node(args) if ngpus_per_node is None else ngpus_per_node
    return algorithm


def train_worker(gpu, ngpus_per_node, args):
    """One training process: distributed set-up, logger, algorithm, optional resume, ``algorithm.train()``."""
    from semilearn.core.utils import TBLog, get_logger

    args.gpu = gpu
    seed_everything(args.seed)
    torch.backends.cudnn.deterministic = True
    if args.distributed:
        if args.multiprocessing_distributed:
            args.rank = args.rank * ngpus_per_node + gpu
        torch.distributed.init_process_group(backend=args.dist_backend, init_method=args.dist_url,
                                             world_size=args.world_size, rank=args.rank)
        # USB's EvaluationHook saves on every process unless multiprocessing_distributed is set
        args.multiprocessing_distributed = True
    save_path = os.path.join(args.save_dir, args.save_name)
    main_process = args.rank % ngpus_per_node == 0
    tb_log = TBLog(save_path, "tensorboard", use_tensorboard=args.use_tensorboard) if main_process else None
    logger = get_logger(args.save_name, save_path, "INFO" if main_process else "WARNING")
    logger.setLevel(logging.INFO if main_process else logging.WARNING)  # basicConfig may already be taken

    algorithm = build_algorithm(args, tb_log, logger, ngpus_per_node)
    logger.info(f"Arguments: {algorithm.args}")
    if args.resume:
        if not os.path.exists(args.load_path):
            raise UserError(f"resume: no checkpoint at {args.load_path}")
        algorithm.load_model(args.load_path)
    algorithm.train()
    for key, item in algorithm.results_dict.items():
        logger.info(f"Model result - {key} : {item}")
    return algorithm, main_process


def main_worker(gpu, ngpus_per_node, args):
    """Train, then (main process only) write results.json and print the one-line summary."""
    from . import results

    algorithm, main_process = train_worker(gpu, ngpus_per_node, args)
    summary = None
    if main_process:
        save_path = os.path.join(args.save_dir, args.save_name)
        summary = results.write_results(algorithm, save_path)
        print(results.one_line(summary))
    logging.getLogger(args.save_name).handlers.clear()
    return summary
