"""The checkpoint-and-stop request between a sweep's worker and its ``train.py`` (no heavy imports: read by the
sweep, its SLURM tasks and ``--status``; acted on in :mod:`remop_usb.usb_compat.preemption`)."""

import signal

#: the signal that asks a training process to checkpoint at the end of its step and exit (submitit's and SLURM's
#: pre-timeout signal, ``sbatch --signal=USR2@90``)
STOP_SIGNAL = signal.SIGUSR2
#: exit status of a run stopped that way (sysexits' EX_TEMPFAIL: "try again later")
CHECKPOINTED_STATUS = 75
