"""USB 0.3.2's WANDBHook, replaced.

===================================================  ===========================================================
quirk in 0.3.2                                       what we do
===================================================  ===========================================================
logs a fixed list of keys only                       every scalar of log_dict, plus the diagnostics
project = last part of save_dir (split on '/')       ``wandb_project``; group = setting, tag = method
``wandb.init`` on every DDP process                  the main process only
finishes in after_run, before results.json exists    finished by the launcher with best/last results
resume='auto' without an id (a new run each time)    the run id is kept in the save dir and reused on resume
no account and no network: init fails (online mode)  one-line error asking for ``WANDB_MODE=offline``
===================================================  ===========================================================

``AlgorithmBase.set_hooks`` registers ``WANDBHook()`` by the name it finds in ``semilearn.core.algorithmbase``;
:func:`install_hook` points that name at the hook it is given: :func:`remop_usb.tracking.install` gives
:class:`remop_usb.tracking.WandbTrackingHook` (so imports go from the run core down to this package, never up).
"""

from __future__ import annotations


def install_hook(hook_class):
    """USB's ``WANDBHook`` replaced by ``hook_class`` wherever USB looks it up (idempotent)."""
    import semilearn.core.algorithmbase as algorithmbase
    import semilearn.core.hooks as hooks

    algorithmbase.WANDBHook = hook_class
    hooks.WANDBHook = hook_class
