"""``remop-usb sweep --launcher slurm`` (and ``submitit_local``): one submitit job-array task per pending run.

Each task is a :class:`RunTask` -- a pickled callable that submitit runs on the compute node as
``python -u -m submitit.core._submit DIR/.submitit/<job>``. It does what one step of the local sweep does: take the
run's lock (:mod:`.sweep_lock`; a run another worker holds is left to it), inspect the run folder again
(finished: nothing to do; a checkpoint: resume), run ``train.py`` with the run's log ``seed<k>.log`` beside its
folder, write ``# exit status N`` and let go of the lock. The task's own submitit log is linked as
``seed<k>.job.out`` beside it; job ids go to ``DIR/sweep.json`` (``jobs``).

Pre-timeout and preemption: SLURM sends ``USR2`` ``signal_delay_s`` (90) seconds before the time limit -- and, where
the cluster is set up so, on preemption -- to every process of the task. ``train.py`` then finishes its step,
writes its checkpoint and exits (:mod:`remop_usb.usb_compat.preemption`); submitit's handler calls
:meth:`RunTask.checkpoint`, which forwards the signal to ``train.py`` (the only way it gets there under submitit's
local executor), waits for it and returns a ``DelayedSubmission`` of the same task; submitit requeues the job
(``scontrol requeue``; the local executor restarts the task), and the requeued task resumes the run from that
checkpoint with ``resume: True`` -- bit-identical to an uninterrupted run on CPU with a fixed seed. A job that SLURM
requeues by itself (preemption with ``PreemptMode=REQUEUE``, SIGTERM then SIGKILL) reruns the same task, which
resumes from the run's last scheduled checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
import sys
import threading
import time

from ..errors import UserError
from .runs import (claim, finish, host_name, open_log, prepare_demo_data, progress, record_jobs, result_text,
                   write_plan)
from .sweep_lock import STALE_AFTER_S

STALE_AFTER_MIN = STALE_AFTER_S / 60
#: where submitit keeps its pickles and the tasks' own logs: DIR/.submitit/<job id>/
SUBMITIT_DIR = ".submitit"
#: seconds ``train.py`` is given to checkpoint and exit after the pre-timeout signal (SLURM kills at 90 s)
CHECKPOINT_TIMEOUT = 75.0
#: time limit of a submitit_local task without --slurm_time: a week
LOCAL_TIMEOUT_MIN = 7 * 24 * 60

_child = {}  # the running train.py of this task process: {"proc": Popen} (not pickled with the task)


def add_slurm_flags(p):
    g = p.add_argument_group("SLURM (--launcher slurm)")
    g.add_argument("--slurm_partition", default=None)
    g.add_argument("--slurm_time", default=None, metavar="MIN|[D-]HH:MM[:SS]", help="time limit of each task")
    g.add_argument("--slurm_gpus_per_task", type=int, default=1)
    g.add_argument("--slurm_cpus_per_task", type=int, default=None)
    g.add_argument("--slurm_mem", default=None, metavar="SIZE", help="memory per node, as sbatch --mem (e.g. 32G)")
    g.add_argument("--array_parallelism", type=int, default=256, help="at most this many tasks at once")
    g.add_argument("--slurm_extra", action="append", default=[], metavar="KEY=VALUE",
                   help="any other sbatch option, e.g. --slurm_extra account=abc --slurm_extra qos=high "
                        "(repeatable; sbatch --KEY=VALUE)")


def parse_minutes(text):
    """``--slurm_time``: minutes (``90``) or ``[D-]HH:MM[:SS]`` -> whole minutes (rounded up)."""
    if text is None:
        return None
    try:
        if text.strip().isdigit():
            minutes = int(text)
        else:
            days, _, clock = text.strip().rpartition("-")
            parts = [int(x) for x in clock.split(":")]
            if len(parts) not in (2, 3):
                raise ValueError
            h, m, s = parts + [0] * (3 - len(parts))
            minutes = (int(days or 0) * 24 + h) * 60 + m + (1 if s else 0)
    except ValueError:
        minutes = 0
    if minutes < 1:
        raise UserError(f"--slurm_time expects minutes (e.g. 1440) or [D-]HH:MM[:SS] (e.g. 1-00:00:00), got "
                        f"'{text}'")
    return minutes


def parse_extra(items):
    extra = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key:
            raise UserError(f"--slurm_extra expects KEY=VALUE (e.g. account=abc), got '{item}'")
        extra[key] = value
    return extra


def slurm_parameters(a, grid_name):
    """submitit's SlurmExecutor parameters from the command line (the names of submitit's ``_make_sbatch_string``);
    ``--slurm_mem`` and ``--slurm_extra`` pass through to sbatch unchanged (``additional_parameters``)."""
    if a.array_parallelism < 1 or a.slurm_gpus_per_task < 0 or (a.slurm_cpus_per_task or 1) < 1:
        raise UserError("--array_parallelism and --slurm_cpus_per_task must be >= 1, --slurm_gpus_per_task >= 0")
    params = {"job_name": f"remop-{grid_name}", "time": parse_minutes(a.slurm_time) or 24 * 60,
              "nodes": 1, "ntasks_per_node": 1, "array_parallelism": a.array_parallelism,
              "stderr_to_stdout": True}
    if a.slurm_partition:
        params["partition"] = a.slurm_partition
    if a.slurm_gpus_per_task:
        params["gpus_per_task"] = a.slurm_gpus_per_task
    if a.slurm_cpus_per_task:
        params["cpus_per_task"] = a.slurm_cpus_per_task
    extra = {"mem": a.slurm_mem} if a.slurm_mem else {}
    extra.update(parse_extra(a.slurm_extra))
    if extra:
        params["additional_parameters"] = extra
    return params


def sbatch_script(folder, params, count):
    """The sbatch file submitit writes for an array of ``count`` tasks (one task: a plain job) with ``params``."""
    from submitit.slurm import slurm

    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])
    return slurm._make_sbatch_string(command=command, folder=folder, map_count=count if count > 1 else None,
                                     **params)


# -- the task ------------------------------------------------------------------------------------------------------

def _reaped(proc):
    """An Event set once ``proc`` has ended, waited for by a thread of its own: the task's main thread, where
    submitit's signal handler runs, never blocks inside ``Popen.wait`` (whose lock the handler would need)."""
    ended = threading.Event()

    def wait():
        proc.wait()
        ended.set()

    threading.Thread(target=wait, name="remop-usb-train", daemon=True).start()
    return ended


def _job_id():
    try:
        import submitit

        return submitit.JobEnvironment().job_id
    except Exception:  # not inside a submitit job
        return None


def _link_job_log(run):
    """``seed<k>.job.out`` -> this task's submitit log (stdout and stderr of the task)."""
    try:
        import submitit

        target = str(submitit.JobEnvironment().paths.stdout)
    except Exception:
        return
    link = run.run_dir + ".job.out"
    tmp = f"{link}.{os.getpid()}.tmp"
    try:
        os.symlink(target, tmp)
        os.replace(tmp, link)
    except OSError:
        pass


@dataclasses.dataclass
class RunTask:
    """One run as a submitit task (see the module docstring); returns the run's result line."""
    run: object
    total: int
    stale_after: float = STALE_AFTER_S

    def __call__(self):
        from ..stopping import CHECKPOINTED_STATUS

        run = self.run
        job = _job_id()
        if not claim(run, self.total, job=job, stale_after=self.stale_after):
            return f"{run.name}: not trained by this task (finished or held by another worker)"
        _link_job_log(run)
        log = open_log(run, job=job, gpu=os.environ.get("CUDA_VISIBLE_DEVICES") or None)
        progress(run, self.total, "started", None, f"{'resuming' if run.state == 'resume' else 'new'} on "
                                                   f"{host_name()}, job {job}, log {run.log_path}")
        started = time.time()
        proc = subprocess.Popen(run.command(), stdout=log, stderr=subprocess.STDOUT)
        _child.update(proc=proc, ended=_reaped(proc))
        try:
            while not _child["ended"].wait(1.0):  # the signal handler (checkpoint) may run meanwhile
                pass
            returncode = proc.returncode
        finally:
            _child.clear()
            if run.lock is not None:  # not already closed by checkpoint()
                finish(run, proc.returncode if proc.returncode is not None else "unknown (task ended)", log)
            log.close()
        took = time.time() - started
        if returncode == 0:  # (its result line is in the run's log: reading results.json here would import torch)
            progress(run, self.total, "done", took, f"{run.run_dir}/results.json")
            return f"{run.name}: done"
        if returncode == CHECKPOINTED_STATUS:
            progress(run, self.total, "stopped", took, "checkpointed (SIGUSR2 to train.py); the sweep resumes it")
            return f"{run.name}: checkpointed and stopped"
        raise RuntimeError(f"{run.name}: train.py ended with exit status {returncode}, see {run.log_path}")

    def checkpoint(self, *args, **kwargs):
        """submitit's pre-timeout / preemption hook: let train.py checkpoint and stop, then requeue this task."""
        import signal

        import submitit
        from ..stopping import STOP_SIGNAL

        proc, ended = _child.get("proc"), _child.get("ended")
        if proc is not None and not ended.is_set():
            proc.send_signal(STOP_SIGNAL)
            if not ended.wait(CHECKPOINT_TIMEOUT):
                proc.kill()  # it resumes from its last scheduled checkpoint
                ended.wait()
        if proc is not None and self.run.lock is not None:
            name = signal.Signals(submitit.JobEnvironment._usr_sig()).name
            with open(self.run.log_path, "a", encoding="utf-8") as log:
                log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {name} (pre-timeout or preemption): requeued\n")
                finish(self.run, proc.returncode, log)
        self.run.state = "resume"  # inspected again when the requeued task starts
        return submitit.helpers.DelayedSubmission(RunTask(self.run, self.total, self.stale_after))


# -- submitting ----------------------------------------------------------------------------------------------------

def _task_run(run):
    """A copy of ``run`` that pickles small (no parsed args, no lock)."""
    return dataclasses.replace(run, data_args=None, lock=None)


def _executor(kind, folder, params):
    import submitit

    if kind == "slurm":
        try:
            executor = submitit.SlurmExecutor(folder=folder)
        except RuntimeError as err:
            raise UserError(f"sweep --launcher slurm: {err} (--dry_run prints the submission without it)") from None
        executor.update_parameters(**params)
        return executor
    executor = submitit.LocalExecutor(folder=folder)
    executor.update_parameters(timeout_min=params["time"] if params.get("time") else LOCAL_TIMEOUT_MIN,
                               stderr_to_stdout=True)
    return executor


def launch(a, grid, runs, mine, kind, stale_after):
    """Submit one task per run of ``mine`` that is not finished; slurm returns once submitted, submitit_local waits
    for its tasks (processes of this machine) and reports them like the local sweep."""
    pending = [r for r in mine if r.state != "done"]
    total = len(runs)
    for run in mine:
        if run.state == "done":
            progress(run, total, "skipped", None, "finished earlier: " + result_text(run.run_dir))
    params = slurm_parameters(a, grid["name"]) if kind == "slurm" else \
        {"time": parse_minutes(a.slurm_time) or LOCAL_TIMEOUT_MIN}
    folder = os.path.join(os.path.abspath(a.out), SUBMITIT_DIR, "%j")
    if a.dry_run:
        for i, run in enumerate(pending):
            print(f"[{run.index}/{total}] {run.name}: {run.state}, array task {i}\n    {shlex.join(run.command())}")
        if kind == "slurm" and pending:
            print(f"[remop-usb sweep] would submit with sbatch (nothing submitted; each task runs the run's "
                  f"train.py, its log in <run>.log, submitit's in {folder}):")
            print(sbatch_script(folder, params, len(pending)))
        return 0
    write_plan(grid, a.grid, a.out, runs)
    if not pending:
        return 0
    prepare_demo_data(pending)
    stale = STALE_AFTER_S if stale_after is None else stale_after
    tasks = [RunTask(_task_run(r), total, stale) for r in pending]
    executor = _executor(kind, folder, params)
    with executor.batch():
        jobs = [executor.submit(task) for task in tasks]
    now = time.strftime("%Y-%m-%d %H:%M:%S")
    record_jobs(a.out, [{"run": os.path.relpath(r.run_dir, a.out), "job_id": j.job_id, "launcher": kind,
                               "log": str(j.paths.stdout), "submitted": now} for r, j in zip(pending, jobs)])
    for run, job in zip(pending, jobs):
        progress(run, total, "submitted", None, f"job {job.job_id}, log {run.log_path}")
    if kind == "slurm":
        print(f"[remop-usb sweep] {len(jobs)} tasks submitted; remop-usb sweep --status {a.out} shows them")
        return 0
    return _wait(jobs, pending, total)


def _wait(jobs, runs, total):
    failed = []
    for job, run in zip(jobs, runs):
        try:
            job.result()
            if os.path.exists(os.path.join(run.run_dir, "results.json")):
                progress(run, total, "done", None, result_text(run.run_dir))
        except Exception as err:  # the task raised, or its process died
            failed.append(run)
            progress(run, total, "failed", None, str(err).strip().splitlines()[-1] if str(err).strip() else
                        f"see {job.paths.stdout}")
    finished = sum(os.path.exists(os.path.join(r.run_dir, "results.json")) for r in runs)
    print(f"[remop-usb sweep] {finished}/{len(runs)} submitted runs finished"
          + (f"; failed: {', '.join(r.name for r in failed)}" if failed else ""))
    return 1 if failed else 0
