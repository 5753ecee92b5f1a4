"""Several processes: which one saves, as USB's hooks decide it.

=====================================================  ===========================================================
quirk in 0.3.2                                         what we do
=====================================================  ===========================================================
``AlgorithmBase`` sets ``ngpus_per_node`` to           :func:`processes_per_node`: the GPUs of this node, or -- for
  ``torch.cuda.device_count()``, 0 on CPU, and the       CPU processes (gloo) -- every process of the run; the
  hooks pick the saving process by                       launcher sets it on the algorithm once it is built
  ``rank % ngpus_per_node`` (a CPU DDP run divides
  by zero)
``EvaluationHook.after_run`` saves on every process    :func:`main_process_saves`: once a process has joined the
  unless ``args.multiprocessing_distributed`` is set     process group, ``multiprocessing_distributed`` is set, so
  (processes started by hand all write)                  only the main process saves
which process saves and logs                           :func:`is_main_process` (USB's rule, for the plugin's hooks)
``mp.spawn`` with zero GPUs                            the launcher never spawns without GPUs (:mod:`remop_usb.launch`)
=====================================================  ===========================================================
"""

from __future__ import annotations

import torch


def processes_per_node(args) -> int:
    """USB's ``ngpus_per_node``: GPUs on this node, or -- for CPU processes (gloo) -- every process of the run."""
    return torch.cuda.device_count() if args.gpu is not None or args.multiprocessing_distributed \
        else max(1, args.world_size)


def is_main_process(algorithm) -> bool:
    """Whether ``algorithm`` runs in the process that saves and logs: not distributed, or rank 0 of its node
    (USB's hooks' ``rank % ngpus_per_node == 0``)."""
    return not algorithm.distributed or algorithm.rank % algorithm.ngpus_per_node == 0


def main_process_saves(args):
    """After ``init_process_group``: USB's EvaluationHook then saves on the main process only."""
    args.multiprocessing_distributed = True
