"""Checkpoint-and-stop on request: what a run does when its SLURM job is about to time out or is preempted.

SLURM sends the signal of ``sbatch --signal`` (submitit's ``USR2``, ``signal_delay_s`` before the time limit) to
every process of the job step. A training process that receives :data:`STOP_SIGNAL` finishes the step it is in,
writes ``latest_model.pth`` exactly as USB's schedule does after a step (:func:`.checkpointing.save_due_checkpoint`,
so the resumed run continues bit-identically on CPU), prints one line and exits with :data:`CHECKPOINTED_STATUS`.
The same command plus ``resume: True`` continues it; the sweep's submitit task does that after requeueing.

=====================================================  ===========================================================
quirk in 0.3.2                                         what we do
=====================================================  ===========================================================
nothing handles a signal: USR2's default action kills  :func:`install_handler` (one process, no DDP): the signal only
  the process, losing up to num_eval_iter - 1 steps      raises a flag; the end of the current step checks it
a checkpoint can only be written on USB's schedule     :func:`install` wraps ``call_hook``: after a step's last
                                                         ``after_train_step`` hook, a requested stop marks the
                                                         checkpoint due, writes it and exits
=====================================================  ===========================================================

The last step is never stopped (its checkpoint, evaluation and results.json follow at once). Under DDP
(``multiprocessing_distributed``) no handler is installed: ranks could stop at different steps; the signal then ends
the processes and the run resumes from its last scheduled checkpoint (still exact, see :mod:`.checkpointing`).
"""

from __future__ import annotations

import signal

from ..stopping import CHECKPOINTED_STATUS, STOP_SIGNAL  # noqa: F401 - CHECKPOINTED_STATUS is read from here too

_requested = []


def _request(signum, frame):  # noqa: ARG001 - a signal handler
    _requested.append(signum)


def install_handler():
    """Let :data:`STOP_SIGNAL` request a checkpoint-and-stop (instead of killing the process)."""
    signal.signal(STOP_SIGNAL, _request)


def uninstall_handler():
    signal.signal(STOP_SIGNAL, signal.SIG_DFL)
    _requested.clear()


def stop_requested() -> bool:
    return bool(_requested)


def _stopping_after_step(original):
    def call_hook(self, fn_name, hook_name=None, *args, **kwargs):
        at_step_end = fn_name == "after_train_step" and hook_name is None
        # read before the hooks run: a signal arriving amid them is served at the end of the next step
        stop = at_step_end and stop_requested() and self.it + 1 < self.num_train_iter
        if stop:
            from .distributed import is_main_process

            if is_main_process(self):
                self._remop_checkpoint_due = True  # written by the wrapped call_hook after the last hook
        result = original(self, fn_name, hook_name, *args, **kwargs)
        if stop:
            name = signal.Signals(_requested[0]).name
            message = (f"[remop-usb] {name}: stopped after iteration {self.it + 1} of {self.num_train_iter}, "
                       f"checkpoint written; resume: True continues the run")
            self.print_fn(message)
            print(message, flush=True)
            raise SystemExit(CHECKPOINTED_STATUS)
        return result

    return call_hook


def install():
    import semilearn.core.algorithmbase as algorithmbase

    base = algorithmbase.AlgorithmBase
    base.call_hook = _stopping_after_step(base.call_hook)

