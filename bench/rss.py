"""A benchmark process's own peak memory (Linux VmHWM), with nothing else imported: the
one-user reconcile child (reconcile_inline.py) must carry only the product's modules."""

from __future__ import annotations


def high_water_mb() -> float | None:
    """VmHWM in MB: this process's peak RSS since it started or since `reset_high_water`; None
    where /proc has no VmHWM.

    Not ru_maxrss for a spawned child: Linux carries the parent's high-water mark into it (the
    memory left at exec counts), so a child of a 200 MB parent reads 200 MB before any work."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_high_water() -> bool:
    """Start a new peak (VmHWM back to the current RSS); False where Linux's clear_refs is
    missing. What earlier work left resident still counts."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True
