"""USB's distributed path on CPU: two processes (gloo) train ReMoP+FixMatch from the same initial weights and end
with identical weights, every one of them moved by training."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from conftest import train_argv


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_parameters(algorithm):
    from remop_usb.usb_compat import unwrap

    return {k: v.detach().cpu().clone() for k, v in unwrap(algorithm.model).named_parameters()}


def ddp_worker(rank, argv, out_dir):
    """Process ``rank`` of a two-process run of ``argv`` (torch.multiprocessing.spawn's target): train it through the
    launcher, keeping the weights right after DDP's wrap (which broadcasts rank 0's), and write ``rank<r>.pt`` with
    them, the final weights, whether it was the main process, the wrapper's type, the backend and the device. On
    CUDA, process ``rank`` runs on GPU ``rank``."""
    from remop_usb import launch
    from remop_usb.config import parse_args
    from remop_usb.usb_compat.distributed import processes_per_node

    initial = {}
    build = launch.build_algorithm

    def build_and_keep_initial_weights(*args, **kwargs):  # after DDP's wrap, which broadcasts rank 0's weights
        algorithm = build(*args, **kwargs)
        initial.update(cpu_parameters(algorithm))
        return algorithm

    launch.build_algorithm = build_and_keep_initial_weights
    args = parse_args(argv + ["--rank", str(rank)])
    launch.resolve_device(args)
    gpu = rank if args.device == "cuda" else None
    # one node: on GPUs one process per GPU (the test makes exactly world_size visible), on CPU USB's count
    per_node = args.world_size if gpu is not None else processes_per_node(args)
    algorithm, main_process = launch.train_worker(gpu, per_node, args)
    torch.save({"initial": initial, "params": cpu_parameters(algorithm), "main": main_process,
                "ddp": type(algorithm.model).__name__, "backend": torch.distributed.get_backend(),
                "device": str(next(algorithm.model.parameters()).device)}, os.path.join(out_dir, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


@pytest.mark.slow  # two training processes under gloo (about 20 s on 2 cores)
def test_two_cpu_processes_agree_on_the_final_weights(tiny_rafdb, tmp_path):
    argv = train_argv(tiny_rafdb, tmp_path / "runs", save_name="ddp", num_train_iter=3, num_eval_iter=3,
                      world_size=2, dist_url=f"tcp://127.0.0.1:{free_port()}")
    mp.spawn(ddp_worker, args=(argv, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert (r0["ddp"], r1["ddp"]) == ("DistributedDataParallel", "DistributedDataParallel")
    assert r0["backend"] == "gloo" and (r0["main"], r1["main"]) == (True, False)
    assert r0["params"].keys() == r1["params"].keys() and "centers" in r0["params"]
    for name in r0["params"]:
        assert torch.equal(r0["initial"][name], r1["initial"][name]), name
        assert torch.equal(r0["params"][name], r1["params"][name]), name
    # both started from rank 0's initialisation (DDP broadcasts it) and 3 Adam steps moved every parameter
    assert [n for n in r0["params"] if torch.equal(r0["initial"][n], r0["params"][n])] == []
    # only the main process wrote checkpoints
    assert os.path.exists(tmp_path / "runs" / "ddp" / "latest_model.pth")
    first = torch.load(tmp_path / "runs" / "ddp" / "latest_model.pth", weights_only=False)
    assert first["it"] >= 3
