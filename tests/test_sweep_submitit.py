"""Sweeps beyond one process: per-run locks shared by two sweep processes, submitit's local executor running the
SLURM launcher's tasks (a pre-timeout signal mid-run: checkpoint, requeue, bit-identical result), the sbatch
submission the SLURM launcher makes (through submitit, with a stand-in sbatch), ``--status``.

Real processes throughout. What submitit's local executor cannot show, and how it is tested instead:

* SLURM delivers ``--signal=USR2@90`` to every process of the task; the local executor sends USR2 only when its
  own time limit is near, to the task process. The test sends USR2 to the task process itself (the pid its run lock
  records) mid-run, as SLURM would; the task forwards it to train.py (:meth:`RunTask.checkpoint`).
* ``scontrol requeue``: the local executor restarts the task in place (exit status 144); the test checks that the
  requeued task resumed the run.
* Job arrays and ``--array_parallelism``: the local executor starts one process per task; the array itself is
  checked in the sbatch file submitit writes, submitted to a stand-in ``sbatch`` that records it.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "config", "demo")
ITERS, EVAL_EVERY = 8, 3  # checkpoints after 3 and 6: a stop after 4 or 5 is off USB's schedule

GRID = """
name: tiny
config: {demo}/{{method}}.yaml
overrides: {{data_dir: {data}, img_size: 32, num_train_iter: {iters}, epoch: 2, num_eval_iter: {every},
             num_log_iter: 1, batch_size: 4, eval_batch_size: 64, num_workers: 0, device: cpu, diagnostics: False,
             plots: False, use_pretrain: False, demo_pretrain: False, num_labels: 20, lb_imb_ratio: 10}}
methods:
  fixmatch: {{label: FixMatch}}
settings:
  s: {{}}
seeds: [0, 1]
"""
RUNS = [os.path.join("s", "fixmatch", f"seed{k}") for k in (0, 1)]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": REPO}


def _sweep(*argv, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "remop_usb.cli", "sweep", *argv], cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


@pytest.fixture(scope="module")
def grid(tiny_rafdb, tmp_path_factory):
    path = tmp_path_factory.mktemp("grid") / "grid.yaml"
    path.write_text(GRID.format(demo=DEMO, data=tiny_rafdb, iters=ITERS, every=EVAL_EVERY))
    return str(path)


@pytest.fixture(scope="module")
def two_workers(grid, tmp_path_factory):
    """Two sweep processes (``--launcher local``) started together on one folder: (folder, their outputs)."""
    out = str(tmp_path_factory.mktemp("shared") / "out")
    procs = [_sweep("--grid", grid, "--out", out) for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    yield out, outputs
    shutil.rmtree(os.path.dirname(out), ignore_errors=True)  # ~1 GB of checkpoints, not kept to the session's end


def _attempts(log_path):
    """The attempt lines (``# <time> <state> on <host> pid ...``) of a run's log."""
    with open(log_path) as f:
        return [line for line in f if line.startswith("# ") and " on " in line and ": " in line
                and "exit status" not in line]


def test_two_sweep_processes_on_one_folder_train_each_run_exactly_once(two_workers):
    out, outputs = two_workers
    for run in RUNS:
        attempts = _attempts(os.path.join(out, run + ".log"))
        assert len(attempts) == 1 and " new on " in attempts[0], attempts  # one train.py ever started
        assert json.load(open(os.path.join(out, run, "results.json")))["last"]["it"] == ITERS
        assert not os.path.exists(os.path.join(out, run + ".lock"))  # let go
    done = [line for text in outputs for line in text.splitlines() if " done " in line]
    assert len(done) == 2, outputs  # each run reported done by exactly one of the two
    passed_over = [line for text in outputs for line in text.splitlines()
                   if " busy " in line or "finished by another worker" in line]
    assert len(passed_over) == 2, outputs  # ... and passed over (held, or finished meanwhile) by the other


def test_status_reads_a_finished_sweep_without_torch(two_workers):
    """``sweep --status`` (and the result line it shows) reads JSON files only: torch and USB stay unimported (it was
    ~11 s on 2 cores when results.py imported the pseudo-label monitor at module level)."""
    out, _ = two_workers
    code = ("import sys; from remop_usb.cli import main; status = main(['sweep', '--status', sys.argv[1]]); "
            "print('imported:', sorted(m for m in ('torch', 'semilearn') if m in sys.modules)); sys.exit(status)")
    done = subprocess.run([sys.executable, "-c", code, out], cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == "imported: []", done.stdout
    assert sum(line.split()[1] == "done" for line in lines[1:-2]) == len(RUNS), done.stdout


def _wait_for_first_checkpoint(run_dir, proc, seconds=400):
    deadline = time.monotonic() + seconds
    while True:
        try:
            with open(os.path.join(run_dir, "log.txt")) as f:
                if "latest_model.pth" in f.read():
                    return
        except FileNotFoundError:
            pass
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.02)


def test_submitit_tasks_survive_a_pre_timeout_signal_and_finish_bit_identical(grid, two_workers, tmp_path, capsys):
    reference, _ = two_workers
    out = str(tmp_path / "out")
    sweep = _sweep("--grid", grid, "--out", out, "--launcher", "submitit_local")
    try:
        run_dir = os.path.join(out, RUNS[0])
        _wait_for_first_checkpoint(run_dir, sweep)
        task = json.load(open(run_dir + ".lock"))["pid"]  # the submitit task process training this run
        assert task != sweep.pid
        os.kill(task, signal.SIGUSR2)  # what SLURM sends signal_delay_s before the time limit
        output = sweep.communicate(timeout=600)[0]
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 0, output
    assert "2/2 submitted runs finished" in output

    log = open(run_dir + ".log").read()
    attempts = _attempts(run_dir + ".log")
    assert [a.split()[3] for a in attempts] == ["new", "resume"], log  # requeued, resumed
    stopped = [line for line in log.splitlines() if line.startswith("[remop-usb] SIGUSR2: stopped after iteration")]
    assert len(stopped) == 1, log
    at = int(stopped[0].split("iteration ")[1].split()[0])
    assert EVAL_EVERY < at < ITERS and at % EVAL_EVERY, stopped  # mid-run, off the checkpoint schedule
    resumed = log[log.index(attempts[1]):]
    steps = [int(line.split("] ")[1].split()[0]) for line in resumed.splitlines()
             if re.search(r"INFO\] \d+ iteration,? USE_EMA", line)]
    assert steps == list(range(at + 1, ITERS + 1)), steps  # continued from the checkpoint the stop wrote
    assert "# " in log and "requeued" in log and log.splitlines()[-1].endswith("exit status 0")
    job_log = open(run_dir + ".job.out").read()  # the task's submitit log, linked beside the run
    assert "Requeued job" in job_log and "Calling checkpoint method" in job_log, job_log

    for run in RUNS:  # both runs equal the uninterrupted runs of the two workers, to the last bit
        ref, got = (torch.load(os.path.join(d, run, "latest_model.pth"), map_location="cpu", weights_only=False)
                    for d in (reference, out))
        assert ref["it"] == got["it"] == ITERS
        for part in ("model", "ema_model"):
            assert all(torch.equal(ref[part][k], got[part][k]) for k in ref[part]), (run, part)
        assert json.load(open(os.path.join(out, run, "results.json"))) == \
            json.load(open(os.path.join(reference, run, "results.json")))

    plan = json.load(open(os.path.join(out, "sweep.json")))
    assert sorted(j["run"] for j in plan["jobs"]) == RUNS and all(j["launcher"] == "submitit_local"
                                                                  for j in plan["jobs"])
    from remop_usb.cli import main

    assert main(["sweep", "--status", out]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].split() == ["run", "state", "job", "detail"]
    for run, job in zip(RUNS, sorted(plan["jobs"], key=lambda j: j["run"])):
        row = next(r for r in rows if r.startswith(run.replace(os.sep, "/")))
        assert row.split()[1:3] == ["done", job["job_id"]], rows


FAKE_SBATCH = """#!/bin/sh
cp "$1" "{record}"
echo "Submitted batch job 4242"
"""


def _slurm_flags():
    return ["--launcher", "slurm", "--slurm_partition", "gpu", "--slurm_time", "1-02:00:00",
            "--slurm_gpus_per_task", "1", "--slurm_cpus_per_task", "6", "--slurm_mem", "32G",
            "--array_parallelism", "1", "--slurm_extra", "account=remop", "--slurm_extra", "qos=high"]


def test_slurm_launcher_submits_one_array_task_per_pending_run(grid, tmp_path, capsys, monkeypatch):
    """--dry_run prints the sbatch file; the real submission (submitit's SlurmExecutor, sbatch and srun stood in
    by scripts) writes that same file, records the array's job ids and pickles one RunTask per run."""
    import pickle

    from remop_usb.cli import main
    from remop_usb.experiments.launchers import RunTask

    out = str(tmp_path / "out")
    assert main(["sweep", "--grid", grid, "--out", out, "--dry_run", *_slurm_flags()]) == 0
    dry = capsys.readouterr().out
    assert not os.path.exists(out)  # a dry run writes nothing
    script = dry[dry.index("#!/bin/bash"):]
    flags = {line.split("=", 1)[0]: line.split("=", 1)[1] if "=" in line else True
             for line in script.splitlines() if line.startswith("#SBATCH ")}
    folder = os.path.join(out, ".submitit", "%j")
    assert flags == {
        "#SBATCH --array": "0-1%1",               # one task per pending run, --array_parallelism 1
        "#SBATCH --partition": "gpu", "#SBATCH --time": str((24 + 2) * 60),
        "#SBATCH --gpus-per-task": "1", "#SBATCH --cpus-per-task": "6", "#SBATCH --mem": "32G",
        "#SBATCH --account": "remop", "#SBATCH --qos": "high",  # --slurm_extra
        "#SBATCH --nodes": "1", "#SBATCH --ntasks-per-node": "1", "#SBATCH --job-name": "remop-tiny",
        "#SBATCH --signal": "USR2@90",            # the pre-timeout signal, 90 s before the limit
        "#SBATCH --open-mode": "append", "#SBATCH --wckey": "submitit",
        "#SBATCH --output": os.path.join(out, ".submitit", "%A_%a", "%A_%a_0_log.out"),
    }, script
    assert f"-u -m submitit.core._submit {folder}" in script and "srun --unbuffered" in script

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH.format(record=tmp_path / "submitted.sh"))
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    for name in ("sbatch", "srun"):
        os.chmod(bin_dir / name, 0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert main(["sweep", "--grid", grid, "--out", out, *_slurm_flags()]) == 0
    real = capsys.readouterr().out
    assert (tmp_path / "submitted.sh").read_text().strip() == script.strip()  # exactly what --dry_run printed
    plan = json.load(open(os.path.join(out, "sweep.json")))
    assert [(j["run"], j["job_id"], j["launcher"]) for j in plan["jobs"]] == \
        [(RUNS[0], "4242_0", "slurm"), (RUNS[1], "4242_1", "slurm")]
    for k, run in enumerate(RUNS):
        with open(os.path.join(out, ".submitit", f"4242_{k}", f"4242_{k}_submitted.pkl"), "rb") as f:
            task = pickle.load(f).function
        assert isinstance(task, RunTask) and task.run.run_dir == os.path.join(out, run)
        assert task.run.command()[-2:] == ["--overwrite", "True"]
    assert "2 tasks submitted" in real
