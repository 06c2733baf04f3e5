"""Fair CPU shares between Studio processes (studio.threads); the slowdown itself is measured in
benchmarks/concurrency.py, never here."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch

from studio import threads


@pytest.fixture(autouse=True)
def unregistered():
    """Start as a process that holds no share (an in-process CLI test may have claimed one), and restore."""
    entry = threads.registry_dir() / str(os.getpid())
    held, saved = entry.exists(), dict(threads._state)
    entry.unlink(missing_ok=True)
    threads._state.update(registered=False, last_check=0.0, threads=None)
    yield
    threads._state.update(saved)
    if held:
        entry.touch()


def test_fair_share_splits_the_cores():
    assert threads.fair_share(cores=2, processes=1) == 2
    assert threads.fair_share(cores=2, processes=2) == 1
    assert threads.fair_share(cores=2, processes=5) == 1
    assert threads.fair_share(cores=16, processes=3) == 5


def test_a_second_studio_process_halves_the_share_and_leaving_gives_it_back():
    cores = os.cpu_count() or 1
    before = torch.get_num_threads()
    other = subprocess.Popen([sys.executable, "-c", "from studio import threads; threads.claim_cpu_share(); "
                              "import time; print('ready', flush=True); time.sleep(60)"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "ready"
        with threads.cpu_share() as share:
            assert threads.active_processes() >= 2
            assert share == threads.fair_share(cores, threads.active_processes())
            assert torch.get_num_threads() == share
            assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
            other.kill()
            other.wait()
            time.sleep(0.1)
            assert threads.rebalance(force=True) == threads.fair_share(cores, threads.active_processes())
        assert not (threads.registry_dir() / str(os.getpid())).exists(), "the share is given back after the block"
        assert not (threads.registry_dir() / str(other.pid)).exists(), "a dead process's entry is removed"
    finally:
        other.kill()
        torch.set_num_threads(before)


def test_library_callers_keep_their_own_threads():
    before = torch.get_num_threads()
    assert threads.rebalance(force=True) is None
    assert torch.get_num_threads() == before
