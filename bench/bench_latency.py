"""Latency a person notices: drop one file, wait for its result, drop the next (low load),
against the local Mindee emulator with a fixed processing time (not a timed test).

For each mode, the real daemon runs as a child process (`ocrwatchd run`) with the SDKs'
default poll schedule in the config (2 s, then 1.5 s); the emulator keeps each job
Processing for `--processing` seconds after its enqueue.

- `polling`: results are fetched by polling (the first poll timed by the processing time
  the daemon observed for similar files).
- `webhook`: the daemon's receiver listens on 127.0.0.1, the enqueue names a webhook, and
  the emulator POSTs each signed result the moment the job ends; polling stays as fallback.

Per file: (result file exists) - (file renamed into the inbox) - settle - processing, i.e.
what the daemon adds. The first `--warmup` files of each mode are left out (the daemon
has not seen any processing time yet). Printed: p50 and p90 of that overhead, in seconds,
and the goals (polling p50 <= 0.3 s, webhook p50 <= 0.15 s).

    .venv/bin/python -m bench.bench_latency [--files N] [--processing S] [--settle S]
        [--mode polling|webhook|both] [--warmup K]

Only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.emulator_webhooks import WebhookSender  # noqa: E402
from tests.mindee_emulator import DEFAULT_API_KEY, MindeeEmulator  # noqa: E402

SAMPLE = ROOT / "tests" / "data" / "mindee" / "file_types" / "receipt.jpg"
MODEL_ID = "7c5b6d1e-2a3f-4b8c-9d0e-1f2a3b4c5d6e"
WEBHOOK_ID = "0b9e6f1c-2d3a-4e5f-8a7b-9c0d1e2f3a4b"
SECRET = "bench-webhook-secret"
LINE = re.compile(
    r"^(?P<when>\S+ \S+) INFO +ocrwatchd\.lifecycle: bench: (?P<name>scan-\d+\.jpg)"
    r" (?P<what>queued|result fetched|done)"
)
GOALS = {"polling": 0.3, "webhook": 0.15}
WATCH_EVERY = 0.002


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_config(root: Path, emulator: MindeeEmulator, mode: str, settle: float) -> Path:
    inbox, out = root / "in", root / "out"
    inbox.mkdir()
    out.mkdir()
    settings: dict[str, object] = {
        "state_dir": str(root / "state"),
        "engine": "mindee",
        "log_level": "info",  # the per-file lines give the breakdown
        "mindee": {"base_url": emulator.url, "model_id": MODEL_ID},
        "inboxes": [
            {"name": "bench", "path": str(inbox), "outbox": str(out), "settle_seconds": settle}
        ],
    }
    if mode == "webhook":
        secret = root / "webhook-secret"
        secret.write_text(SECRET)
        secret.chmod(0o600)
        settings["webhook"] = {
            "listen": f"127.0.0.1:{free_port()}",
            "secret_file": str(secret),
        }
        settings["mindee"]["webhook_ids"] = [WEBHOOK_ID]  # type: ignore[index]
    path = root / "ocrwatchd.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def wait(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            return False
        time.sleep(WATCH_EVERY)
    return True


def run_mode(mode: str, args: argparse.Namespace) -> tuple[list[float], dict[str, list[float]]]:
    """Return each file's overhead (drop to result minus settle and processing), and its
    parts read from the daemon's log: intake (drop to queued, minus settle), engine
    (queued to result fetched, minus processing) and finish (fetched to written)."""
    overheads: list[float] = []
    drops: dict[str, float] = {}
    data = SAMPLE.read_bytes()
    with tempfile.TemporaryDirectory(prefix="ocrwatchd-latency-") as temp:
        root = Path(temp)
        with MindeeEmulator() as emulator:
            emulator.processing_seconds = args.processing
            config = write_config(root, emulator, mode, args.settle)
            env = {**os.environ, "MINDEE_V2_API_KEY": DEFAULT_API_KEY}
            env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
            log = (root / "daemon.log").open("wb")
            process = subprocess.Popen(
                [sys.executable, "-m", "ocrwatchd", "run", "-c", str(config)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
            sender = None
            try:
                if not wait(lambda: b"ocrwatchd ready" in (root / "daemon.log").read_bytes(), 30):
                    raise SystemExit("the daemon did not start")
                if mode == "webhook":
                    listen = yaml.safe_load(config.read_text())["webhook"]["listen"]
                    sender = WebhookSender(emulator, f"http://{listen}/", SECRET).__enter__()
                    if not wait(lambda: _listening(listen), 30):
                        raise SystemExit("the webhook receiver did not start")
                for index in range(args.files):
                    name = f"scan-{index:03}.jpg"
                    temp_path = root / "in" / f".{name}.part"
                    temp_path.write_bytes(data + index.to_bytes(4, "big"))
                    dropped = time.monotonic()
                    drops[name] = time.time()
                    os.replace(temp_path, root / "in" / name)
                    result = root / "out" / f"{name}.json"
                    if not wait(result.exists, 60):
                        tail = (root / "daemon.log").read_text()[-3000:]
                        raise SystemExit(f"{mode}: no result for {name}; the daemon's log:\n{tail}")
                    took = time.monotonic() - dropped
                    overheads.append(took - args.settle - args.processing)
            finally:
                if sender is not None:
                    sender.__exit__(None, None, None)
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=30)
                log.close()
            counts = {route: emulator.count(route) for route in ("enqueue", "job", "result")}
            print(f"  {mode}: requests {counts}")
            text = (root / "daemon.log").read_text()
            for line in [x for x in text.splitlines() if " WARNING " in x or " ERROR " in x][:3]:
                print(f"  daemon: {line}")
            parts = breakdown(text, drops, args)
    return overheads, parts


def breakdown(
    log: str, drops: dict[str, float], args: argparse.Namespace
) -> dict[str, list[float]]:
    """Each file's time in intake, the engine and the finisher, from the log lines."""
    seen: dict[tuple[str, str], float] = {}
    for line in log.splitlines():
        match = LINE.match(line)
        if match is not None:
            when = datetime.strptime(match["when"], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            seen.setdefault((match["name"], match["what"]), when)
    parts: dict[str, list[float]] = {"intake": [], "engine": [], "finish": []}
    for name in sorted(drops)[args.warmup :]:
        queued, fetched = seen.get((name, "queued")), seen.get((name, "result fetched"))
        done = seen.get((name, "done"))
        if queued is None or fetched is None or done is None:
            continue
        parts["intake"].append(queued - drops[name] - args.settle)
        parts["engine"].append(fetched - queued - args.processing)
        parts["finish"].append(done - fetched)
    return parts


def _listening(listen: str) -> bool:
    host, _, port = listen.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=0.2):
            return True
    except OSError:
        return False


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=12)
    parser.add_argument("--processing", type=float, default=1.0)
    parser.add_argument("--settle", type=float, default=0.5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--mode", choices=("polling", "webhook", "both"), default="both")
    args = parser.parse_args(argv)
    modes = ("polling", "webhook") if args.mode == "both" else (args.mode,)
    print(
        f"{args.files} files one at a time, settle {args.settle} s, processing"
        f" {args.processing} s; overhead = drop to result - settle - processing"
    )
    met = True
    for mode in modes:
        overheads, parts = run_mode(mode, args)
        measured = overheads[args.warmup :]
        p50, p90 = statistics.median(measured), percentile(measured, 0.9)
        goal = GOALS[mode]
        met = met and p50 <= goal
        print(
            f"{mode:8} p50 {p50:.3f} s  p90 {p90:.3f} s  (n={len(measured)};"
            f" goal p50 <= {goal} s: {'met' if p50 <= goal else 'NOT met'})"
        )
        print(
            "         of which p50: "
            + ", ".join(f"{part} {statistics.median(v):.3f} s" for part, v in parts.items() if v)
        )
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
