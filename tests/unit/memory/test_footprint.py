"""The RSS sampler sees a real process tree grow."""

import subprocess
import sys
import time

from servelab.memory.footprint import RSSSampler, tree_rss_bytes

GROW = "import time; time.sleep(0.6); x = bytearray(200 * 2**20); x[::4096] = b'1' * len(x[::4096]); time.sleep(1.5)"


def test_sampler_sees_a_child_allocate_200_mib() -> None:
    proc = subprocess.Popen([sys.executable, "-c", GROW])
    try:
        with RSSSampler(proc.pid, interval_s=0.05) as sampler:
            time.sleep(1.5)
        assert sampler.peak_mib - sampler.idle_mib > 150
    finally:
        proc.wait(timeout=10)


def test_a_missing_process_has_no_footprint() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert tree_rss_bytes(proc.pid) == 0
