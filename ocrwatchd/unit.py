"""`ocrwatchd unit`: the systemd service unit for a config.

`ProtectSystem=strict` makes the whole file system read-only for the service, so the unit
must name every folder the daemon writes to (inboxes it deletes or archives from, outboxes,
archive and failed folders, a state directory outside /var/lib/ocrwatchd). Those come from
the config, so the unit is rendered from it rather than edited by hand; the shipped
`systemd/ocrwatchd.service` is this module's output for `config/ocrwatchd.example.yaml`
(a test keeps the two equal).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from ocrwatchd.config import CREDENTIAL_NAME, Config, load_config

DEFAULT_STATE_DIR = Path("/var/lib/ocrwatchd")
# Where LoadCredential= reads the key from; systemd hands the service a private copy.
CREDENTIAL_SOURCE = Path("/etc/ocrwatchd") / CREDENTIAL_NAME
# Half of it is the daemon's ping interval; long enough for a slow disk or a busy machine.
WATCHDOG_SECONDS = 60

TEMPLATE = """\
# ocrwatchd: watch-folder OCR daemon, as a systemd service.
# Rendered by `ocrwatchd unit` from {config}.
# Render it again whenever the config's folders change:
#   ocrwatchd unit -c {config} > /etc/systemd/system/ocrwatchd.service
#   systemctl daemon-reload && systemctl restart ocrwatchd

[Unit]
Description=ocrwatchd watch-folder OCR daemon
After=network-online.target remote-fs.target
Wants=network-online.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={exec_start} run -c {config}
# The shell's own kill: /bin/kill (procps) is missing from minimal systems.
ExecReload=/bin/sh -c 'kill -HUP $MAINPID'
WatchdogSec={watchdog}
Restart=on-failure
RestartSec=5
# 78: a bad config; restarting cannot help until an administrator fixes it.
RestartPreventExitStatus=78
User=ocrwatchd
Group=ocrwatchd
# Results are shared through group permissions on the outbox folders (see the README).
UMask=0007
StateDirectory=ocrwatchd
StateDirectoryMode=0750
{credential}
Environment=OMP_THREAD_LIMIT=1

# Hardening. Everything is read-only except StateDirectory= and these folders; a folder
# missing at start (a share not mounted yet) is skipped rather than failing the start.
ProtectSystem=strict
ReadWritePaths={read_write}
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
PrivateIPC=yes
PrivateMounts=yes
NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
ProcSubset=pid
# AF_UNIX for sd_notify and journald; AF_INET/AF_INET6 for the Mindee API.
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
RemoveIPC=yes
KeyringMode=private
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
SystemCallErrorNumber=EPERM

[Install]
WantedBy=multi-user.target
"""


def default_executable() -> Path:
    """The `ocrwatchd` script beside the running interpreter (a venv's bin/), else the one
    on $PATH, else the interpreter's own path with `-m ocrwatchd` appended by the caller."""
    beside = Path(sys.executable).parent / "ocrwatchd"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside.absolute()
    found = shutil.which("ocrwatchd")
    if found:
        return Path(found).absolute()
    return Path(sys.executable).absolute()


def writable_folders(config: Config) -> list[Path]:
    """Given a Config, return the folders the service must be allowed to write, in config
    order without repeats: every inbox (the daemon may delete or archive its sources),
    outbox, archive and failed folder, and the state directory unless systemd's
    StateDirectory= already covers it."""
    folders: list[Path] = []
    for inbox in config.inboxes:
        folders.extend(
            path
            for path in (inbox.path, inbox.outbox, inbox.archive_dir, inbox.failed_dir)
            if path is not None
        )
    # An unset state_dir comes from $STATE_DIRECTORY under systemd: StateDirectory= covers it.
    if "state_dir" in config.marks and config.state_dir != DEFAULT_STATE_DIR:
        folders.append(config.state_dir)
    return list(dict.fromkeys(folders))


def quote(word: str) -> str:
    """Given a path or argument, return it as one word of a unit file line: `%` doubled
    (systemd specifiers), and double-quoted with C escapes when it has spaces or quotes."""
    word = word.replace("%", "%%")
    if not any(char in word for char in " \t\"'\\"):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _exec_start(executable: Path) -> str:
    words = [str(executable)]
    if executable.name.startswith("python"):
        words += ["-m", "ocrwatchd"]
    return " ".join(quote(word) for word in words)


def _paths(paths: Iterable[Path]) -> str:
    # "-": an absent folder is skipped; see the comment in the unit.
    return " ".join("-" + quote(str(path)) for path in paths)


def render(config: Config, executable: Path) -> str:
    """Given a loaded Config and the `ocrwatchd` executable to start, return the unit text."""
    if "mindee.api_key_file" in config.marks or (
        config.engine == "local" and not config.engine_chosen_automatically
    ):
        # LoadCredential= fails the start when its file is missing.
        credential = "# No LoadCredential=: the config names its key file or uses the local engine."
    else:
        credential = f"LoadCredential={CREDENTIAL_NAME}:{quote(str(CREDENTIAL_SOURCE))}"
    return TEMPLATE.format(
        config=quote(str(config.source)),
        exec_start=_exec_start(executable),
        watchdog=WATCHDOG_SECONDS,
        credential=credential,
        read_write=_paths(writable_folders(config)),
    )


def load_for_unit(path: Path, env: Mapping[str, str] | None = None) -> Config:
    """Given a config file and the environment (default `os.environ`), load the config as
    the service will see it: the key is looked for where LoadCredential= will put it, so
    a config saying `engine: mindee` loads before the service runs.

    Raises ConfigError when the config has problems.
    """
    env = dict(os.environ if env is None else env)
    if CREDENTIAL_SOURCE.is_file() and "CREDENTIALS_DIRECTORY" not in env:
        env["CREDENTIALS_DIRECTORY"] = str(CREDENTIAL_SOURCE.parent)
    return load_config(path, env)


def render_file(path: Path, executable: Path, env: Mapping[str, str] | None = None) -> str:
    """Given a config file, the executable and the environment, return the unit text."""
    return render(load_for_unit(path, env), executable)
