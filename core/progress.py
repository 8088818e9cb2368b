"""The words of file transfers on the user's terminal: the progress line and sizes.

Pure text: ``core.transfers`` decides when to show it, the console draws it.
"""

from __future__ import annotations

from dataclasses import dataclass


def human_size(size: int) -> str:
    if size < 1024:
        return "1 byte" if size == 1 else f"{size} bytes"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def _unit_for(size: int) -> tuple[str, int]:
    """The binary unit ``size`` reads best in, and its size in bytes."""
    for unit, scale in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= scale:
            return unit, scale
    return "B", 1


def clock(seconds: float) -> str:
    """``0:07``, ``12:34``, ``1:02:03``."""
    whole = int(seconds + 0.5)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@dataclass(frozen=True, slots=True)
class Progress:
    """One transfer as the progress line shows it: ``what`` is e.g. ``clip.mp4 to Luke``."""

    what: str
    done: int
    total: int
    rate: float  # bytes per second, smoothed; 0 before the first measurement


def percent(done: int, total: int) -> int:
    return 100 * done // total if total else 100


def describe(progress: Progress) -> str:
    """``clip.mp4 to Luke: 48% 96.0/200.0 MiB 41.2 MB/s ETA 0:03``."""
    unit, scale = _unit_for(progress.total)
    amounts = (f"{progress.done}/{progress.total} B" if scale == 1
               else f"{progress.done / scale:.1f}/{progress.total / scale:.1f} {unit}")
    text = f"{progress.what}: {percent(progress.done, progress.total)}% {amounts}"
    if progress.rate > 0:
        eta = (progress.total - progress.done) / progress.rate
        text += f" {progress.rate / 1e6:.1f} MB/s ETA {clock(eta)}"
    return text


def progress_line(transfers: list[Progress]) -> str:
    """Every running transfer on one line."""
    return " | ".join(describe(p) for p in transfers)


def resuming(filename: str, done: int, total: int, where: str) -> str:
    """``Resuming clip.mp4 at 48% (96.0 MiB of 200.0 MiB already at Luke)``."""
    return (f"Resuming {filename} at {percent(done, total)}% "
            f"({human_size(done)} of {human_size(total)} already {where})")
