"""Imported only by multiprocessing's forkserver (see `lifeline.install`), never by the daemon.

Importing it binds the forkserver itself to the daemon (it ends the moment the daemon
does, even one killed while the forkserver was starting), and registers an at-fork hook:
every process the forkserver forks is bound to the daemon before any of its own code runs.
"""

from __future__ import annotations

import os

from ocrwatchd.engines.lifeline import DAEMON_PID_VARIABLE, after_fork_in_child, bind

_DAEMON = int(os.environ.get(DAEMON_PID_VARIABLE) or os.getppid())
bind(_DAEMON)  # exits at once when the daemon is already gone

os.register_at_fork(after_in_child=lambda: after_fork_in_child(_DAEMON))
