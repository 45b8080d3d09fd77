"""Imported only by multiprocessing's forkserver (see `lifeline.install`), never by the daemon.

Importing it registers an at-fork hook: every process the forkserver forks is bound to
the daemon (the forkserver's parent) before any of its own code runs.
"""

from __future__ import annotations

import os

from ocrwatchd.engines.lifeline import after_fork_in_child

_DAEMON = os.getppid()

os.register_at_fork(after_in_child=lambda: after_fork_in_child(_DAEMON))
