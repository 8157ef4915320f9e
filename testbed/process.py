"""Ending the child processes a test bed starts (simulated boards, keepalived, daemons)."""
from __future__ import annotations

import signal
import subprocess


def stop(p: subprocess.Popen, timeout: float = 5.0, sig: int = signal.SIGTERM) -> None:
    """``sig`` (SIGTERM), then SIGKILL if ``p`` has not ended within ``timeout`` seconds; returns
    once it is reaped. A process that has already ended is left alone."""
    if p.poll() is not None:
        return
    p.send_signal(sig)
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
