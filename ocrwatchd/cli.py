"""The command line: parse arguments, call into the package, map errors to exit codes."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ocrwatchd import __version__, engines, report, service, statelock
from ocrwatchd.config import Config, check_environment, load_config
from ocrwatchd.engines import lifeline
from ocrwatchd.errors import ApiError, ConfigError, ExitCode, FileRejected, OcrwatchdError

log = logging.getLogger("ocrwatchd")

DEFAULT_CONFIG = "/etc/ocrwatchd/ocrwatchd.yaml"


def _config_option(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        default=default,
        help="config file (default: $OCRWATCHD_CONFIG, else " + DEFAULT_CONFIG + ")",
    )


def _parser() -> argparse.ArgumentParser:
    # -c works before and after the command; the commands' copy must not reset it.
    common = argparse.ArgumentParser(add_help=False)
    _config_option(common, argparse.SUPPRESS)
    parser = argparse.ArgumentParser(prog="ocrwatchd", description="Watch-folder OCR daemon.")
    _config_option(parser, None)
    parser.add_argument("--version", action="version", version=f"ocrwatchd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("run", parents=[common], help="run the daemon in the foreground")
    commands.add_parser(
        "once", parents=[common], help="process every file now in the inboxes, then exit"
    )
    check = commands.add_parser(
        "check-config", parents=[common], help="validate the config and the environment"
    )
    check.add_argument(
        "--online",
        action="store_true",
        help="also ask the API whether it takes the key (uploads nothing)",
    )
    status = commands.add_parser("status", parents=[common], help="per-inbox counts and health")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    jobs = commands.add_parser("jobs", parents=[common], help="list ledger rows")
    jobs.add_argument("--state", choices=report.PUBLIC_STATES, help="only rows in this state")
    jobs.add_argument("--inbox", help="only rows of this inbox")
    jobs.add_argument("--json", action="store_true", help="machine-readable output")
    retry = commands.add_parser("retry", parents=[common], help="queue failed files again")
    retry.add_argument("paths", nargs="*", type=Path, help="failed files to retry (default: all)")
    explain = commands.add_parser("explain", parents=[common], help="why a file is (not) processed")
    explain.add_argument("path", type=Path)
    explain.add_argument("--json", action="store_true", help="machine-readable output")
    ocr = commands.add_parser("ocr", parents=[common], help="OCR one file and print the JSON")
    ocr.add_argument("file", type=Path)
    unit = commands.add_parser(
        "unit", parents=[common], help="print the systemd service unit for this config"
    )
    unit.add_argument(
        "--exec",
        dest="executable",
        type=Path,
        help="the ocrwatchd program the unit starts (default: the one beside this Python)",
    )
    unit.add_argument(
        "--folders",
        action="store_true",
        help="print only the folders the service may write to, one per line",
    )
    return parser


def config_path(args: argparse.Namespace) -> Path:
    if args.config is not None:
        return Path(args.config)
    return Path(os.environ.get("OCRWATCHD_CONFIG") or DEFAULT_CONFIG)


def _print_json(value: object) -> None:
    json.dump(value, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


def _check_config(path: Path, *, online: bool) -> int:
    try:
        config = load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return ExitCode.CONFIG
    problems = check_environment(config) + engines.problems(config)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return ExitCode.CONFIG
    engine = config.engine + (
        " (chosen: no API key found)"
        if config.engine_chosen_automatically and config.engine == "local"
        else ""
    )
    print(f"{path}: ok; engine {engine}; {len(config.inboxes)} inbox(es)")
    if online:
        from ocrwatchd.online import check_online

        try:
            print(f"online: ok; {check_online(config)}")
        except ConfigError as exc:
            for problem in exc.problems:
                print(problem, file=sys.stderr)
            return ExitCode.CONFIG
        except ApiError as exc:
            print(f"ocrwatchd: the API refused the key: {exc}", file=sys.stderr)
            return ExitCode.UNAVAILABLE
    return ExitCode.OK


def _announce_engine(config: Config) -> None:
    if config.engine == "local" and config.engine_chosen_automatically:
        log.info(
            "no Mindee API key found (mindee.api_key_file, $CREDENTIALS_DIRECTORY/mindee-api-key,"
            " $MINDEE_V2_API_KEY): using the embedded local OCR engine"
        )


def _run(path: Path, config: Config, *, once: bool) -> int:
    fatal = engines.problems(config)
    if fatal:
        raise ConfigError(fatal)
    # Before the ledger is opened or anything recovered: a second daemon changes nothing.
    # Held across SIGHUP reloads (the state directory cannot change without a restart).
    with statelock.acquire(config.state_dir, engine=config.engine) as lock:
        return _run_locked(path, config, once=once, lock=lock)


def _run_locked(path: Path, config: Config, *, once: bool, lock: statelock.DaemonLock) -> int:
    from ocrwatchd.daemon import Daemon, serve
    from ocrwatchd.progress import ProgressBar, bar_safe_logging, summary

    # The rest may mend itself (an inbox on a share not mounted yet): warn and go on.
    for problem in check_environment(config):
        log.warning("%s", problem)
    _announce_engine(config)
    if not once:
        return serve(path, config, on_config=lambda new: lock.set_engine(new.engine))
    terminal = sys.stderr.isatty()
    if terminal and logging.getLogger().level > logging.DEBUG:
        # The bar replaces the per-file info lines; warnings and errors still show.
        logging.getLogger().setLevel(logging.WARNING)
    bar = ProgressBar(sys.stderr)
    daemon = Daemon(config, once=True, progress=bar if terminal else None)
    daemon.install_signal_handlers()
    started, clock = time.time(), time.monotonic()
    with bar_safe_logging(bar):
        try:
            code = daemon.run()
        finally:
            bar.finish()
    names = [inbox.name for inbox in config.inboxes]
    print(summary(config.state_dir / "ledger.db", names, started, time.monotonic() - clock))
    return code


def _ocr(config: Config, file: Path) -> int:
    """OCR one file on the configured engine, the daemon's way; exit 1 when the file
    cannot be OCR'd, 75 when trying again later may work, 69 when the account is refused."""
    from ocrwatchd import filetypes
    from ocrwatchd.engines.base import Submission
    from ocrwatchd.lifecycle import AccountRefused, Failed, Result, Vanished
    from ocrwatchd.pipeline import ocr_file

    source = file.absolute()
    fatal = engines.problems(config)
    if fatal:
        raise ConfigError(fatal)
    try:
        filetypes.sniff(source)
    except FileRejected as exc:
        print(f"ocrwatchd: {source}: {exc}", file=sys.stderr)
        return ExitCode.FAILURES
    inbox = next((i for i in config.inboxes if i.path in source.parents), None)
    model = config.model_id_for(inbox) if inbox else config.mindee.model_id
    engine = engines.build(config)
    try:
        outcome = ocr_file(engine, Submission(source, str(source), model))
    finally:
        engine.close()
    if isinstance(outcome, Result):
        body = outcome.body
        sys.stdout.buffer.write(body + (b"" if body.endswith(b"\n") else b"\n"))
        return ExitCode.OK
    message = getattr(outcome, "message", None) or getattr(outcome, "reason", None)
    if isinstance(outcome, Vanished):
        message = "the file is gone"
    print(f"ocrwatchd: {source}: {message}", file=sys.stderr)
    if isinstance(outcome, AccountRefused):
        return ExitCode.UNAVAILABLE
    return ExitCode.FAILURES if isinstance(outcome, Failed | Vanished) else ExitCode.TEMPFAIL


def _unit(path: Path, executable: Path | None, *, folders: bool) -> int:
    from ocrwatchd import unit

    if folders:
        for folder in unit.writable_folders(unit.load_for_unit(path)):
            print(folder)
        return ExitCode.OK
    program = (executable or unit.default_executable()).absolute()
    if not program.is_file():
        print(f"ocrwatchd: {program} does not exist; name it with --exec", file=sys.stderr)
        return ExitCode.USAGE
    sys.stdout.write(unit.render_file(path, program))
    return ExitCode.OK


def dispatch(args: argparse.Namespace) -> int:
    path = config_path(args)
    if args.command == "check-config":
        return _check_config(path, online=args.online)
    if args.command == "unit":
        return _unit(path, args.executable, folders=args.folders)
    config = load_config(path)
    service.setup_logging(config.log_level)
    if args.command in ("run", "once"):
        return _run(path, config, once=args.command == "once")
    if args.command == "ocr":
        return _ocr(config, args.file)
    if args.command == "status":
        status = report.status(config)
        if args.json:
            _print_json(status)
        else:
            print(report.format_status(status))
        return ExitCode.OK
    if args.command == "jobs":
        rows = report.jobs(config, state=args.state, inbox=args.inbox)
        if args.json:
            _print_json(rows)
        else:
            print(report.format_jobs(rows))
        return ExitCode.OK
    if args.command == "retry":
        count, problems = report.retry(config, args.paths)
        for problem in problems:
            print(problem, file=sys.stderr)
        print(f"{count} file(s) queued again")
        return ExitCode.FAILURES if problems else ExitCode.OK
    if args.command == "explain":
        explanation = report.explain(config, args.path)
        if args.json:
            _print_json(explanation)
        else:
            print(explanation["explanation"])
        return ExitCode.OK
    raise AssertionError(args.command)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point. Returns the exit code (sysexits)."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return ExitCode.OK if exc.code == 0 else ExitCode.USAGE
    # Before any helper process exists: each will end with this process, however it ends.
    lifeline.install()
    try:
        return int(dispatch(args))
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return ExitCode.CONFIG
    except OcrwatchdError as exc:
        print(f"ocrwatchd: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        return ExitCode.OK
    except BrokenPipeError as exc:
        if _stdout_closed():  # `ocrwatchd jobs | head`: the reader is gone, not an error
            return ExitCode.OK
        print(f"ocrwatchd: internal error: {exc!r}", file=sys.stderr)
        return ExitCode.SOFTWARE


def _stdout_closed() -> bool:
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        # Keep the interpreter from reporting the same closed pipe again at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return True
    return False
