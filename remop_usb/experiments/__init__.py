"""The experiments wing: what runs, compares and measures many runs, above the run core (config, launch, results).

- :mod:`.sweep` (``remop-usb sweep``): every (method, setting, seed) of a grid, each as its own ``train.py``;
  :mod:`.runs` (one run of a sweep, its lock, log and the plan file ``sweep.json``), :mod:`.sweep_lock`,
  :mod:`.launchers` (SLURM and submitit's local executor), :mod:`.sweep_status` (``--status``);
- :mod:`.leaderboard` (``remop-usb leaderboard``): the paper's tables from a sweep's ``results.json`` files;
- :mod:`.plots` (``remop-usb plots``): a finished run's figures again, and the leaderboard's Fig. 4 curves;
- :mod:`.bench` (``remop-usb bench``): training-step and loader timings;
- :mod:`.inpl_cutoff` (``remop-usb inpl-cutoff``): InPL's energy cutoff measured on a checkpoint.

The rule (``.importlinter``): this wing imports the run core; nothing in the run core imports it.
"""
