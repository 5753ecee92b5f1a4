"""A run's logger writes into its own log.txt only, whatever runs the process made before (USB's get_logger keeps
adding file handlers to a logger of the same name)."""

import logging
import shutil

from remop_usb.usb_compat.run_logger import run_logger


def test_a_second_run_with_the_same_name_logs_only_into_its_own_folder(tmp_path):
    first = run_logger("same_save_name", str(tmp_path / "a"), "INFO")
    first.warning("first run")
    for handler in first.handlers:  # the first run ends (its files closed) and its folder is removed
        handler.close()
    shutil.rmtree(tmp_path / "a")
    second = run_logger("same_save_name", str(tmp_path / "b"), "INFO")
    second.warning("second run")  # with the first run's handler still attached: FileNotFoundError (reopening a/log.txt)
    assert not (tmp_path / "a").exists()
    assert (tmp_path / "b" / "log.txt").read_text().count("second run") == 1
    assert [h.baseFilename for h in second.handlers if isinstance(h, logging.FileHandler)] == \
        [str(tmp_path / "b" / "log.txt")]
