"""sbt_core.locks: one writer per output, released when the holder ends or dies."""

import os
import subprocess
import sys
import time

import pytest

from sbt_core.locks import OutputBusyError, lock_file_for, output_lock


def test_second_lock_on_one_output_is_refused_and_names_the_holder(tmp_path):
    out = tmp_path / "run"
    with output_lock(out, is_dir=True, what="--out"):
        assert lock_file_for(out, True).read_text().strip() == str(os.getpid())
        with pytest.raises(OutputBusyError, match=rf"--out .*run is in use .*pid {os.getpid()}"):
            with output_lock(out, is_dir=True, what="--out"):
                pass
    with output_lock(out, is_dir=True):  # released: free again
        pass
    assert not lock_file_for(out, True).exists()  # no lock file left behind


def test_file_output_lock_sits_beside_the_file(tmp_path):
    out = tmp_path / "paths.jsonl"
    with output_lock(out, is_dir=False):
        assert (tmp_path / "paths.jsonl.lock").is_file()
        with pytest.raises(OutputBusyError):
            with output_lock(out, is_dir=False):
                pass


def test_lock_of_a_killed_process_is_released(tmp_path):
    out = tmp_path / "run"
    code = ("import sys, time; from sbt_core.locks import output_lock\n"
            f"with output_lock({str(out)!r}, is_dir=True):\n    print('held', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(os.path.dirname(__file__)))
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(OutputBusyError, match=f"pid {proc.pid}"):
            with output_lock(out, is_dir=True):
                pass
    finally:
        proc.kill()
        proc.wait()
    with output_lock(out, is_dir=True):  # kill -9 released it; the stale file does not block
        pass
