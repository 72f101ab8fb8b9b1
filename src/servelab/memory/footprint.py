"""How much memory a server really uses: peak resident memory of its whole process tree, sampled.

Kubernetes requests and limits should come from a measurement under load, not from the file size:
a GGUF is memory-mapped (pages count once touched), and the KV cache and compute buffers come on top.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import psutil


def tree_rss_bytes(pid: int) -> int:
    """Resident bytes of a process and all its descendants right now."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


@dataclass
class RSSSampler:
    """Samples a process tree's RSS in a background thread while load runs (``with RSSSampler(pid):``)."""

    pid: int
    interval_s: float = 0.2
    samples: list[tuple[float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def __enter__(self) -> RSSSampler:
        began = time.perf_counter()

        def loop() -> None:
            while not self._stop.is_set():
                self.samples.append((time.perf_counter() - began, tree_rss_bytes(self.pid)))
                self._stop.wait(self.interval_s)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def peak_mib(self) -> float:
        return max((b for _, b in self.samples), default=0) / 2**20

    @property
    def idle_mib(self) -> float:
        """The first sample: the footprint before load arrives."""
        return (self.samples[0][1] / 2**20) if self.samples else 0.0
