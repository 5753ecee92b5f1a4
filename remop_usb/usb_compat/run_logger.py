"""A run's logger without the previous runs' log files.

USB's ``get_logger(name, save_path)`` adds a new ``FileHandler`` (``save_path/log.txt``) to the logger named
``name`` (the run's ``save_name``) on every call and never removes one. In one process -- a test session, a notebook,
runs started one after another -- a second run with the same ``save_name`` would also write into the first run's
``log.txt``, and fail (``FileNotFoundError``) once that run's folder has been removed. :func:`run_logger` closes and
drops the file handlers an earlier run left on the logger, then calls USB's ``get_logger``.
"""

from __future__ import annotations

import logging


def run_logger(name, save_path, level):
    from semilearn.core.utils import get_logger

    logger = logging.getLogger(name)
    for handler in [h for h in logger.handlers if isinstance(h, logging.FileHandler)]:
        logger.removeHandler(handler)
        handler.close()
    return get_logger(name, save_path, level)
