"""`ocrwatchd check-config --online` against the emulator, as a user runs it."""

from __future__ import annotations

from pathlib import Path

from ocrwatchd.online import PLACEHOLDER_MODEL_ID
from tests.fixtures_mindee_client import closed_port_url
from tests.helpers import cli, inbox_settings, mindee_config, write_config
from tests.mindee_emulator import DEFAULT_API_KEY, MindeeEmulator


def check(tmp_path: Path, base_url: str, key: str = DEFAULT_API_KEY, **mindee: object):
    config = write_config(tmp_path, mindee_config(tmp_path, base_url, **mindee))
    return cli(config, "check-config", "--online", env={"MINDEE_V2_API_KEY": key})


def test_the_right_key_is_accepted(tmp_path: Path, emulator: MindeeEmulator) -> None:
    result = check(tmp_path, emulator.url)
    assert result.returncode == 0, result.stderr
    assert "online: ok" in result.stdout
    # One GET of a job that cannot exist: nothing uploaded, nothing created.
    [request] = emulator.requests
    assert (request.method, request.route, request.status) == ("GET", "job", 404)
    assert emulator.enqueued == []


def test_a_wrong_key_exits_69_without_showing_it(tmp_path: Path, emulator: MindeeEmulator) -> None:
    wrong = "md_wrong_key_that_must_not_show_0123"
    result = check(tmp_path, emulator.url, key=wrong)
    assert result.returncode == 69, result.stderr
    assert "401" in result.stderr and "The provided API key is invalid." in result.stderr
    assert wrong not in result.stderr + result.stdout


def test_a_dead_base_url_exits_78_naming_the_key(tmp_path: Path) -> None:
    dead = closed_port_url()
    result = check(tmp_path, dead)
    assert result.returncode == 78, result.stderr
    assert "mindee.base_url: " in result.stderr and dead in result.stderr
    assert "Connection refused" in result.stderr


def test_a_server_that_is_not_the_api_exits_78(tmp_path: Path, emulator: MindeeEmulator) -> None:
    emulator.fault("job", status=200, body="<html>a login page</html>", content_type="text/html")
    result = check(tmp_path, emulator.url)
    assert result.returncode == 78, result.stderr
    assert "does not answer as the Mindee API does" in result.stderr


def test_the_placeholder_model_exits_78_before_any_request(
    tmp_path: Path, emulator: MindeeEmulator
) -> None:
    config = mindee_config(
        tmp_path,
        emulator.url,
        inbox_settings(tmp_path, "a"),
        inbox_settings(tmp_path, "b", model_id=PLACEHOLDER_MODEL_ID),
    )
    path = write_config(tmp_path, config)
    result = cli(path, "check-config", "--online", env={"MINDEE_V2_API_KEY": DEFAULT_API_KEY})
    assert result.returncode == 78, result.stderr
    assert f"{path}:" in result.stderr
    assert "inboxes[1].model_id: is the example config's placeholder" in result.stderr
    assert emulator.requests == []
    # Without --online, the placeholder is a valid UUID: the offline check passes.
    assert cli(path, "check-config", env={"MINDEE_V2_API_KEY": DEFAULT_API_KEY}).returncode == 0
