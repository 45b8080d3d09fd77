"""Prometheus metrics from a real ledger file, scraped over real HTTP on 127.0.0.1 and read
from a real textfile."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ocrwatchd import metrics
from ocrwatchd.config import load_config
from ocrwatchd.errors import ConfigError
from ocrwatchd.ledger import Ledger
from ocrwatchd.lifecycle import Lifecycle, Requeued, State
from ocrwatchd.metrics import Metrics, MetricsError
from tests.helpers import wait_for

CREATED = 1_000.0
NOW = 1_042.5


def fill_ledger(path: Path) -> None:
    """Inbox a: 2 pending (one still settling), 1 uploading, 1 processing, 2 done, 1 failed,
    1 ignored; inbox b: 1 done and unavailable. Remote work paused."""
    ledger = Ledger(path, clock=lambda: CREATED)
    try:
        states = {
            "settling.pdf": State.SETTLING,
            "pending.pdf": State.PENDING,
            "uploading.pdf": State.UPLOADING,
            "processing.pdf": State.PROCESSING,
            "done1.pdf": State.DONE,
            "done2.pdf": State.DONE,
            "failed.pdf": State.FAILED,
        }
        for name, state in states.items():
            assert ledger.insert("a", name, state, size=10, mtime_ns=1)
        ledger.insert("a", "notes.txt", State.IGNORED, reason="not included")
        assert ledger.insert("b", "x.pdf", State.DONE, size=10, mtime_ns=1)
        ledger.set_inbox("a", path="/in/a", watch="events", available=True)
        ledger.set_inbox("b", path="/in/b", watch="poll", available=False)
        ledger.set_paused("the API refused the key (401)")
    finally:
        ledger.close()


def scrape(address: tuple[str, int]) -> str:
    with urllib.request.urlopen(f"http://{address[0]}:{address[1]}/metrics", timeout=10) as r:
        assert r.status == 200
        return r.read().decode()


def samples(text: str) -> set[str]:
    return {line for line in text.splitlines() if line and not line.startswith("#")}


def test_the_listener_serves_the_ledger_gauges_and_the_counters(tmp_path: Path) -> None:
    ledger_path = tmp_path / "state" / "ledger.db"
    fill_ledger(ledger_path)
    with Metrics(ledger_path, ["a", "b"], listen=("127.0.0.1", 0), clock=lambda: NOW) as served:
        assert served.address is not None
        served.file_finished("a", "done")
        served.file_finished("a", "done")
        served.file_finished("b", "failed")
        served.api_request("enqueue", 202, 0.3)
        served.api_request("job", 200, 0.04)
        served.api_request("job", "error", 5.5)
        address = served.address
        text = scrape(address)
    assert {
        'ocrwatchd_files{inbox="a",state="pending"} 2.0',
        'ocrwatchd_files{inbox="a",state="uploading"} 1.0',
        'ocrwatchd_files{inbox="a",state="processing"} 1.0',
        'ocrwatchd_files{inbox="a",state="done"} 2.0',
        'ocrwatchd_files{inbox="a",state="failed"} 1.0',
        'ocrwatchd_files{inbox="a",state="ignored"} 1.0',
        'ocrwatchd_files{inbox="b",state="pending"} 0.0',
        'ocrwatchd_files{inbox="b",state="done"} 1.0',
        'ocrwatchd_inbox_available{inbox="a"} 1.0',
        'ocrwatchd_inbox_available{inbox="b"} 0.0',
        'ocrwatchd_oldest_pending_seconds{inbox="a"} 42.5',
        'ocrwatchd_oldest_pending_seconds{inbox="b"} 0.0',
        "ocrwatchd_paused 1.0",
        'ocrwatchd_files_finished_total{inbox="a",outcome="done"} 2.0',
        'ocrwatchd_files_finished_total{inbox="a",outcome="failed"} 0.0',
        'ocrwatchd_files_finished_total{inbox="b",outcome="failed"} 1.0',
        'ocrwatchd_api_requests_total{endpoint="enqueue",status="202"} 1.0',
        'ocrwatchd_api_requests_total{endpoint="job",status="200"} 1.0',
        'ocrwatchd_api_requests_total{endpoint="job",status="error"} 1.0',
        'ocrwatchd_api_request_duration_seconds_bucket{endpoint="enqueue",le="0.25"} 0.0',
        'ocrwatchd_api_request_duration_seconds_bucket{endpoint="enqueue",le="0.5"} 1.0',
        'ocrwatchd_api_request_duration_seconds_bucket{endpoint="job",le="0.05"} 1.0',
        'ocrwatchd_api_request_duration_seconds_bucket{endpoint="job",le="+Inf"} 2.0',
        'ocrwatchd_api_request_duration_seconds_count{endpoint="job"} 2.0',
        'ocrwatchd_api_request_duration_seconds_sum{endpoint="job"} 5.54',
    } <= samples(text)
    assert "# TYPE ocrwatchd_api_request_duration_seconds histogram" in text
    assert "# TYPE ocrwatchd_files gauge" in text
    # After stop the port is closed (and the no_leaked_threads fixture checks the threads).
    with pytest.raises(urllib.error.URLError):
        scrape(address)


def test_gauges_follow_the_ledger_from_scrape_to_scrape(tmp_path: Path) -> None:
    ledger_path = tmp_path / "ledger.db"
    fill_ledger(ledger_path)
    with Metrics(ledger_path, ["a"], listen=("127.0.0.1", 0)) as served:
        assert served.address is not None
        assert 'ocrwatchd_files{inbox="a",state="failed"} 1.0' in samples(scrape(served.address))
        ledger = Ledger(ledger_path)
        try:
            [failed] = ledger.rows(states=[State.FAILED])
            assert Lifecycle(ledger, {}).apply(failed, Requeued())
            ledger.set_paused(None)
        finally:
            ledger.close()
        now = samples(scrape(served.address))
    assert 'ocrwatchd_files{inbox="a",state="failed"} 0.0' in now
    assert 'ocrwatchd_files{inbox="a",state="pending"} 3.0' in now
    assert "ocrwatchd_paused 0.0" in now


def test_before_the_first_run_there_are_zeros_and_no_ledger_is_created(tmp_path: Path) -> None:
    ledger_path = tmp_path / "state" / "ledger.db"
    with Metrics(ledger_path, ["a"], listen=("127.0.0.1", 0)) as served:
        assert served.address is not None
        text = samples(scrape(served.address))
    assert 'ocrwatchd_files{inbox="a",state="pending"} 0.0' in text
    assert 'ocrwatchd_inbox_available{inbox="a"} 1.0' in text
    assert "ocrwatchd_paused 0.0" in text
    assert not ledger_path.parent.exists()


def test_the_textfile_is_rewritten_and_parses(tmp_path: Path) -> None:
    ledger_path = tmp_path / "ledger.db"
    fill_ledger(ledger_path)
    textfile = tmp_path / "prom" / "ocrwatchd.prom"
    textfile.parent.mkdir()
    published = Metrics(ledger_path, ["a", "b"], textfile=textfile, textfile_every=0.05)
    published.start()
    try:
        # Written at start, before the first interval.
        assert textfile.exists()
        published.file_finished("a", "failed")
        ledger = Ledger(ledger_path)
        try:
            ledger.insert("a", "new.pdf", State.SETTLING, size=5, mtime_ns=5)
        finally:
            ledger.close()

        def pending_count() -> float | None:
            families = text_string_to_metric_families(textfile.read_text())
            for family in families:
                for sample in family.samples:
                    if sample.name == "ocrwatchd_files" and sample.labels == {
                        "inbox": "a",
                        "state": "pending",
                    }:
                        return sample.value
            return None

        wait_for(lambda: pending_count() == 3.0, timeout=10, what="the textfile rewritten")
    finally:
        published.stop()
    families = {f.name: f for f in text_string_to_metric_families(textfile.read_text())}
    assert families["ocrwatchd_files"].type == "gauge"
    assert families["ocrwatchd_files_finished"].type == "counter"
    finished = {
        (s.labels["inbox"], s.labels["outcome"]): s.value
        for s in families["ocrwatchd_files_finished"].samples
        if s.name == "ocrwatchd_files_finished_total"
    }
    assert finished == {("a", "done"): 0, ("a", "failed"): 1, ("b", "done"): 0, ("b", "failed"): 0}
    # Only the .prom file: the temporary files of the atomic rewrites are gone.
    assert [p.name for p in textfile.parent.iterdir()] == ["ocrwatchd.prom"]


def test_an_address_in_use_is_an_error_naming_it(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = Metrics(tmp_path / "ledger.db", ["a"], listen=("127.0.0.1", port))
        with pytest.raises(MetricsError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            busy.start()
        busy.stop()


def write_config(tmp_path: Path, metrics_section: str) -> Path:
    (tmp_path / "in").mkdir(exist_ok=True)
    path = tmp_path / "ocrwatchd.yaml"
    path.write_text(
        f"state_dir: state\nengine: local\n{metrics_section}"
        "inboxes:\n  - {name: a, path: in, outbox: out}\n"
    )
    return path


def test_from_config(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path)}
    config = load_config(write_config(tmp_path, ""), env)
    assert metrics.from_config(config, tmp_path / "ledger.db") is None
    config = load_config(write_config(tmp_path, "metrics:\n  listen: null\n"), env)
    assert metrics.from_config(config, tmp_path / "ledger.db") is None
    path = write_config(
        tmp_path, "metrics:\n  listen: 127.0.0.1:0\n  textfile: node/ocrwatchd.prom\n"
    )
    config = load_config(path, env)
    assert config.metrics.listen == ("127.0.0.1", 0)
    assert config.metrics.textfile == tmp_path / "node" / "ocrwatchd.prom"
    configured = metrics.from_config(config, tmp_path / "ledger.db")
    assert configured is not None
    assert configured.listen == ("127.0.0.1", 0)
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, "metrics:\n  textfile: m.txt\n  port: 9\n"), env)
    assert caught.value.problems == [
        f"{path}:4:13: metrics.textfile: must end in .prom (node_exporter's textfile collector"
        " reads only those)",
        f"{path}:5:3: metrics.port: unknown key; known keys here: listen, textfile",
    ]


def test_check_config_wants_the_textfile_directory_to_exist(tmp_path: Path) -> None:
    from ocrwatchd.config import check_environment

    (tmp_path / "out").mkdir()
    path = write_config(tmp_path, "metrics:\n  textfile: node/ocrwatchd.prom\n")
    config = load_config(path, {"HOME": str(tmp_path)})
    assert [p for p in check_environment(config) if "metrics" in p] == [
        f"{path}:4:13: metrics.textfile: {tmp_path}/node does not exist; create it"
        f" (mkdir -p {tmp_path}/node)"
    ]
    (tmp_path / "node").mkdir()
    assert not [p for p in check_environment(config) if "metrics" in p]
