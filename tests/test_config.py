"""Config loading: defaults, every problem at once with FILE:LINE:COL, secrets, the environment."""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

import pytest

from ocrwatchd import engines
from ocrwatchd.config import (
    check_environment,
    cpu_count,
    format_problem,
    load_config,
)
from ocrwatchd.config_schema import DEFAULT_INCLUDE, SECTIONS, shown_default
from ocrwatchd.errors import ConfigError
from ocrwatchd.secret import Secret

MODEL = "00000000-0000-4000-8000-000000000000"
KEY = "md_k3y-that-must-never-show"
EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "ocrwatchd.example.yaml"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """An environment with a private HOME and no key, state or credentials variables."""
    return {"HOME": str(tmp_path / "home")}


def write(tmp_path: Path, text: str, name: str = "ocrwatchd.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def problems_of(path: Path, env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, env)
    return caught.value.problems


def secret_file(path: Path, content: str, mode: int = 0o600) -> Path:
    path.write_text(content)
    path.chmod(mode)
    return path


MINIMAL = """
inboxes:
  - name: scans
    path: in
    outbox: out
"""


def test_minimal_config_gets_the_defaults(tmp_path: Path, env: dict[str, str]) -> None:
    config = load_config(write(tmp_path, MINIMAL), env)
    assert config.source == tmp_path / "ocrwatchd.yaml"
    assert config.engine == "local"
    assert config.engine_chosen_automatically
    assert config.state_dir == tmp_path / "home" / ".local" / "state" / "ocrwatchd"
    assert config.log_level == "info"
    assert config.reconcile_interval == 60
    assert config.webhook is None
    assert config.mindee.api_key is None
    assert config.mindee.api_key_source is None
    assert config.mindee.base_url == "https://api-v2.mindee.net"
    assert (config.mindee.max_in_flight, config.mindee.job_timeout) == (20, 600)
    assert config.local.languages == ("eng",)
    assert config.local.workers == cpu_count()
    (inbox,) = config.inboxes
    assert (inbox.name, inbox.path, inbox.outbox) == ("scans", tmp_path / "in", tmp_path / "out")
    assert inbox.include == DEFAULT_INCLUDE
    assert (inbox.recursive, inbox.watch, inbox.on_success, inbox.dedupe) == (
        True,
        "auto",
        "keep",
        True,
    )
    assert (inbox.poll_interval, inbox.settle_seconds, inbox.write_text) == (5, 2, False)
    assert config.marks["inboxes[0]"] == (2, 5)
    assert config.marks["inboxes[0].path"] == (3, 11)
    assert config.marks["inboxes[0].outbox"] == (4, 13)


def test_every_value_is_read(tmp_path: Path, env: dict[str, str]) -> None:
    secret_file(tmp_path / "hook-secret", "s3cret\n")
    path = write(
        tmp_path,
        f"""
        state_dir: state
        engine: local
        log_level: debug
        reconcile_interval: 7.5
        mindee:
          base_url: http://127.0.0.1:8080/v2/
          model_id: {MODEL.upper()}
          webhook_ids: [{MODEL}]
          max_in_flight: 3
          enqueue_per_minute: 10
          poll_per_minute: 0.5
          request_timeout: 9
          job_timeout: 99
        local:
          languages: [eng, deu]
          workers: 3
          tessdata_dir: tessdata
        webhook:
          listen: "[::1]:0"
          secret_file: hook-secret
        inboxes:
          - name: a.b-c_1
            path: in
            outbox: out
            model_id: null
            recursive: no
            include: ["*.pdf"]
            exclude: ["drafts/*"]
            watch: poll
            poll_interval: 1
            settle_seconds: 0
            on_success: archive
            archive_dir: archive
            failed_dir: failed
            write_text: true
            dedupe: false
        """,
    )
    config = load_config(path, env)
    assert config.state_dir == tmp_path / "state"
    assert (config.engine, config.engine_chosen_automatically) == ("local", False)
    assert (config.log_level, config.reconcile_interval) == ("debug", 7.5)
    assert config.mindee.base_url == "http://127.0.0.1:8080"
    assert config.mindee.model_id == MODEL
    assert config.mindee.webhook_ids == (MODEL,)
    assert config.mindee.max_in_flight == 3
    assert (config.mindee.enqueue_per_minute, config.mindee.poll_per_minute) == (10, 0.5)
    assert (config.mindee.request_timeout, config.mindee.job_timeout) == (9, 99)
    assert config.local.languages == ("eng", "deu")
    assert (config.local.workers, config.local.tessdata_dir) == (3, tmp_path / "tessdata")
    assert config.webhook is not None
    assert (config.webhook.host, config.webhook.port) == ("::1", 0)
    assert config.webhook.secret == Secret("s3cret")
    (inbox,) = config.inboxes
    assert inbox.name == "a.b-c_1"
    assert (inbox.model_id, inbox.recursive, inbox.watch) == (None, False, "poll")
    assert (inbox.include, inbox.exclude) == (("*.pdf",), ("drafts/*",))
    assert (inbox.poll_interval, inbox.settle_seconds) == (1, 0)
    assert (inbox.on_success, inbox.archive_dir) == ("archive", tmp_path / "archive")
    assert (inbox.failed_dir, inbox.write_text, inbox.dedupe) == (tmp_path / "failed", True, False)


def test_every_problem_is_reported_at_once_with_its_position(
    tmp_path: Path, env: dict[str, str]
) -> None:
    path = write(
        tmp_path,
        """
        log_level: INFO
        engine: mindy
        reconcile_interval: "60s"
        model_id: 1
        mindee:
          model_id: not-a-uuid
          max_in_flight: 0
          webhook_ids: [nope]
        local:
          languages: []
          workers: true
        inboxes:
          - name: scans
            settle_second: 2
            path: in
            outbox: in/results
            include: "*.pdf"
            on_success: archive
            watch: events
            watch: poll
            recursive: "yes"
          - name: bad name
            outbox: out2
          - 5
        """,
    )
    assert problems_of(path, env) == [
        f"{path}:1:12: log_level: must be one of debug, info, warning, error, "
        "got the string 'INFO'; did you mean info?",
        f"{path}:2:9: engine: must be one of mindee, local, "
        "got the string 'mindy'; did you mean mindee?",
        f"{path}:3:21: reconcile_interval: must be a number of seconds, got the string '60s'",
        f"{path}:4:1: model_id: unknown key here; "
        "model_id belongs under mindee: or in an inbox (under inboxes:)",
        f"{path}:6:13: mindee.model_id: must be a UUID like {MODEL}",
        f"{path}:7:18: mindee.max_in_flight: must be a whole number, 1 or more, got 0",
        f"{path}:8:17: mindee.webhook_ids[0]: must be a UUID like {MODEL}",
        f"{path}:10:14: local.languages: is empty; name at least one, like [eng]",
        f"{path}:11:12: local.workers: must be a whole number, 1 or more, got the boolean true",
        f"{path}:14:5: inboxes[0].settle_second: unknown key; did you mean settle_seconds?",
        f"{path}:16:13: inboxes[0].outbox: {tmp_path}/in/results is inside inboxes[0].path "
        f"({tmp_path}/in); inbox, outbox, archive, failed and state directories must not overlap",
        f"{path}:17:14: inboxes[0].include: must be a list, got the string '*.pdf'",
        f"{path}:18:17: inboxes[0].on_success: is archive, but archive_dir is not set",
        f"{path}:20:5: inboxes[0].watch: duplicate key; first given on line 19",
        f"{path}:21:16: inboxes[0].recursive: must be true or false, got the string 'yes'",
        f"{path}:22:5: inboxes[1].path: missing; every inbox needs a path to watch",
        f"{path}:22:11: inboxes[1].name: may only hold letters, digits, '_', '.' and '-'",
        f"{path}:24:5: inboxes[2]: must be a mapping of keys, got 5",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ": the config is empty; it needs at least one inbox under inboxes:"),
        ("- a\n", ":1:1: the config must be a mapping of keys, got a list"),
        ("log_level: info\n", ":1:1: inboxes: no inboxes; add an inboxes: list"),
        ("inboxes: []\n", ":1:10: inboxes: no inboxes; add at least one"),
        ("inboxes: [\n", ":2:1: invalid YAML: while parsing a flow node (from line 2): expected"),
        ("a: 1\na: 2\n", ":2:1: a: duplicate key; first given on line 1"),
        (
            "include: [*.pdf]\n",
            ":1:12: invalid YAML: while scanning an alias (from line 1): expected alphabetic or "
            "numeric character, but found '.' (a value starting with * is an alias in YAML: "
            'quote it, "*.pdf")',
        ),
        ("a: 1\n---\nb: 2\n", ":2:1: invalid YAML: expected a single document"),
        ("a: \x01\n", ":1:4: invalid character #x0001 in YAML"),
        (
            "inboxes:\n\t- name: a\n",
            ":2:1: invalid YAML: a tab character; YAML indentation must be spaces, not tabs",
        ),
        (
            "mindee:\n  model_id: x\n  \tbase_url: y\n",
            ":3:3: invalid YAML: a tab character; YAML indentation must be spaces, not tabs",
        ),
    ],
)
def test_whole_file_problems(tmp_path: Path, env: dict[str, str], text: str, expected: str) -> None:
    path = tmp_path / "ocrwatchd.yaml"
    path.write_text(text)
    problems = problems_of(path, env)
    assert any(problem.startswith(f"{path}{expected}") for problem in problems), problems


def test_unreadable_config_is_a_problem(tmp_path: Path, env: dict[str, str]) -> None:
    missing = tmp_path / "nope.yaml"
    assert problems_of(missing, env) == [
        f"{missing}: cannot read the config: No such file or directory"
    ]
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"a: 1\nb: \xff\n")
    assert problems_of(binary, env) == [f"{binary}:2:4: the config is not UTF-8 text"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("settle_seconds: -1", "settle_seconds: must be 0 or more seconds"),
        ("poll_interval: 0", "poll_interval: must be more than 0 seconds"),
        ("poll_interval: .inf", "poll_interval: must be a number of seconds, got .inf"),
        ("poll_interval: true", "must be a number of seconds, got the boolean true"),
        ("write_text: 1", "write_text: must be true or false, got 1"),
        ("watch: inotify", "watch: must be one of auto, events, poll, got the string 'inotify'"),
        ("on_success: move", "on_success: must be one of keep, delete, archive"),
        ("exclude: [1, [a]]", "exclude[1]: must be a string, got a list"),
        ('include: [""]', "include[0]: must not be empty"),
        ("include: []", "include: is empty, so no file would be processed"),
        ("model_id: 0000", f"model_id: must be a UUID like {MODEL}"),
        ("archive_dir: {a: 1}", "archive_dir: must be a string, got a mapping"),
        ("<<: {watch: poll}", "inboxes[0]: YAML merge keys (<<) are not supported here"),
    ],
)
def test_inbox_value_problems(tmp_path: Path, env: dict[str, str], line: str, message: str) -> None:
    path = write(tmp_path, MINIMAL + f"    {line}\n")
    (problem,) = problems_of(path, env)
    assert problem.startswith(f"{path}:5:")
    assert message in problem


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("mindee:\n  max_in_flight: 1.5", "mindee.max_in_flight: must be a whole number"),
        ("mindee:\n  poll_per_minute: 0", "mindee.poll_per_minute: must be a number greater"),
        ("mindee:\n  base_url: ftp://example.com", "mindee.base_url: must be an http(s) URL"),
        ("mindee:\n  base_url: https://u:p@example.com", "must not contain credentials"),
        ("mindee:\n  base_url: http://api.example.com", "mindee.base_url: must be https://"),
        ("mindee:\n  base_url: http://10.0.0.1:80", "(http:// only for a loopback host"),
        ("mindee: [a]", "mindee: must be a mapping of keys, got a list"),
        ("local:\n  languages: eng", "local.languages: must be a list, got the string 'eng'"),
        ("local:\n  workers: 0", "local.workers: must be a whole number, 1 or more, got 0"),
        ("webhook:\n  listen: 8787", "webhook.listen: must be HOST:PORT"),
        ("webhook:\n  listen: localhost:99999", "webhook.listen: must be HOST:PORT"),
        ("webhook:\n  listen: ::1:8787", "write an IPv6 address in brackets"),
        ("webhook:\n  listen: localhost:1", "webhook.secret_file: missing; the webhook receiver"),
        ("state_dir: [a]", "state_dir: must be a string, got a list"),
        ("null: a", "keys must be strings, got null"),
        ("2024: a", "2024: unknown key; known keys here: state_dir, engine"),
        ("inbox: []", "inbox: unknown key; did you mean inboxes?"),
        ("outbox: x", "outbox: unknown key here; outbox belongs in an inbox (under inboxes:)"),
        ("local:\n  worker: 2", "local.worker: unknown key; did you mean workers?"),
        ("mindee:\n  zzz: 2", "mindee.zzz: unknown key; known keys here: api_key_file, base_url"),
    ],
)
def test_section_value_problems(
    tmp_path: Path, env: dict[str, str], section: str, message: str
) -> None:
    path = write(tmp_path, MINIMAL + section + "\n")
    problems = problems_of(path, env)
    assert any(message in problem for problem in problems), problems
    assert all(problem.startswith(f"{path}:") for problem in problems)


@pytest.mark.parametrize("archive_dir", ["", "    archive_dir: null\n"])
def test_archive_needs_an_archive_dir(
    tmp_path: Path, env: dict[str, str], archive_dir: str
) -> None:
    path = write(tmp_path, MINIMAL + "    on_success: archive\n" + archive_dir)
    assert problems_of(path, env) == [
        f"{path}:5:17: inboxes[0].on_success: is archive, but archive_dir is not set"
    ]


def test_real_yaml_booleans_and_numbers_only(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(tmp_path, MINIMAL + "    dedupe: off\n    poll_interval: 0x10\n")
    (inbox,) = load_config(path, env).inboxes
    assert (inbox.dedupe, inbox.poll_interval) == (False, 16)


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        (
            "mindee:\n  api_key: {key}\n",
            "mindee.api_key: secrets do not live in the config; "
            "use mindee.api_key_file / $MINDEE_V2_API_KEY",
        ),
        ("api_key: {key}\n", "api_key: secrets do not live in the config"),
        ("webhook:\n  secret: {key}\n", "webhook.secret: secrets do not live in the config; "),
        ("mindee:\n  model_id: {key}\n", "mindee.model_id: must be a UUID"),
        ("log_level: {key}\n", "log_level: must be one of debug, info, warning, error, got a"),
    ],
)
def test_secrets_in_the_yaml_are_refused_without_echo(
    tmp_path: Path, env: dict[str, str], yaml_text: str, message: str
) -> None:
    path = write(tmp_path, MINIMAL + yaml_text.format(key=KEY))
    problems = problems_of(path, env)
    assert any(message in problem for problem in problems), problems
    assert KEY not in "\n".join(problems)


def test_api_key_precedence(tmp_path: Path, env: dict[str, str]) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    secret_file(credentials / "mindee-api-key", "md_from_credentials\n", mode=0o400)
    secret_file(tmp_path / "key", "  md_from_file\n")
    env.update(CREDENTIALS_DIRECTORY=str(credentials), MINDEE_V2_API_KEY="md_from_env")
    mindee = f"mindee:\n  model_id: {MODEL}\n"

    with_file = write(tmp_path, MINIMAL + mindee + "  api_key_file: key\n", "a.yaml")
    config = load_config(with_file, env)
    assert config.mindee.api_key == Secret("md_from_file")
    assert config.mindee.api_key_source == "api_key_file"
    assert (config.engine, config.engine_chosen_automatically) == ("mindee", True)

    without_file = write(tmp_path, MINIMAL + mindee, "b.yaml")
    config = load_config(without_file, env)
    assert config.mindee.api_key == Secret("md_from_credentials")
    assert config.mindee.api_key_source == "credentials"

    (credentials / "mindee-api-key").unlink()
    config = load_config(without_file, env)
    assert config.mindee.api_key == Secret("md_from_env")
    assert config.mindee.api_key_source == "env"

    env["MINDEE_V2_API_KEY"] = "  "
    config = load_config(without_file, env)
    assert (config.mindee.api_key, config.mindee.api_key_source) == (None, None)
    assert config.engine == "local"


def test_api_key_never_shows(tmp_path: Path, env: dict[str, str]) -> None:
    key_file = secret_file(tmp_path / "key", KEY + "\n", mode=0o644)
    path = write(tmp_path, MINIMAL + f"mindee:\n  api_key_file: {key_file}\n")
    problems = problems_of(path, env)
    assert (
        problems
        == [
            f"{path}:6:17: mindee.api_key_file: {key_file} is readable by other users; "
            f"chmod 600 {key_file}",
            f"{path}:2:5: inboxes[0].model_id: no model: the mindee engine (chosen because an API "
            "key is in mindee.api_key_file) needs mindee.model_id or this inbox's model_id, "
            "or set engine: local",
        ][::-1]
    )
    key_file.chmod(0o600)
    path = write(tmp_path, MINIMAL + f"mindee:\n  api_key_file: {key_file}\n  model_id: {MODEL}\n")
    config = load_config(path, env)
    assert config.mindee.api_key is not None
    assert config.mindee.api_key.reveal() == KEY
    assert KEY not in repr(config)
    assert KEY not in str(config)


@pytest.mark.parametrize(
    ("content", "mode", "message"),
    [
        ("", 0o600, "is empty"),
        ("md_a\nmd_b\n", 0o600, "must hold only the secret, on one line"),
        ("md_a\n", 0o620, "is writable by other users; chmod 600"),
        ("md_a\n", 0o660, "is writable by other users; chmod 600"),
        ("md_a\n", 0o604, "is readable by other users; chmod 600"),
        ("md_a\n", 0o642, "is writable by other users; chmod 600"),
    ],
)
def test_bad_api_key_files(
    tmp_path: Path, env: dict[str, str], content: str, mode: int, message: str
) -> None:
    secret_file(tmp_path / "key", content, mode)
    path = write(tmp_path, MINIMAL + "engine: local\nmindee:\n  api_key_file: key\n")
    (problem,) = problems_of(path, env)
    assert problem.startswith(f"{path}:7:17: mindee.api_key_file: {tmp_path / 'key'} ")
    assert message in problem


def test_a_key_file_its_group_may_read_is_accepted(tmp_path: Path, env: dict[str, str]) -> None:
    # root:ocrwatchd 0640 is how the service user is given the key (see the README).
    secret_file(tmp_path / "key", KEY + "\n", 0o640)
    path = write(tmp_path, MINIMAL + f"mindee:\n  api_key_file: key\n  model_id: {MODEL}\n")
    config = load_config(path, env)
    assert config.mindee.api_key is not None
    assert config.mindee.api_key.reveal() == KEY


def test_unreadable_api_key_file_is_not_replaced_by_the_environment(
    tmp_path: Path, env: dict[str, str]
) -> None:
    env["MINDEE_V2_API_KEY"] = KEY
    directory = tmp_path / "keydir"
    directory.mkdir()
    path = write(tmp_path, MINIMAL + f"mindee:\n  api_key_file: nothere\n  model_id: {MODEL}\n")
    assert problems_of(path, env) == [
        f"{path}:6:17: mindee.api_key_file: cannot read {tmp_path / 'nothere'}: "
        "No such file or directory"
    ]
    path = write(tmp_path, MINIMAL + f"mindee:\n  api_key_file: keydir\n  model_id: {MODEL}\n")
    assert problems_of(path, env) == [
        f"{path}:6:17: mindee.api_key_file: {directory} is not a regular file"
    ]


def test_api_key_with_inner_whitespace_from_env(tmp_path: Path, env: dict[str, str]) -> None:
    env["MINDEE_V2_API_KEY"] = "md_a\r\nX-Injected: 1"
    path = write(tmp_path, MINIMAL + "engine: local\n")
    problems = problems_of(path, env)
    assert problems == [
        f"{path}: mindee: $MINDEE_V2_API_KEY has whitespace or control characters inside"
    ]


def test_engine_mindee_needs_a_key_and_a_model(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(
        tmp_path,
        f"""
        engine: mindee
        inboxes:
          - name: a
            path: a
            outbox: a-out
          - name: b
            path: b
            outbox: b-out
            model_id: {MODEL}
        """,
    )
    assert problems_of(path, env) == [
        f"{path}:1:9: engine: is mindee but no API key was found in mindee.api_key_file, "
        "$CREDENTIALS_DIRECTORY/mindee-api-key, $MINDEE_V2_API_KEY",
        f"{path}:3:5: inboxes[0].model_id: no model: the mindee engine needs "
        "mindee.model_id or this inbox's model_id",
    ]
    env["MINDEE_V2_API_KEY"] = KEY
    path = write(tmp_path, path.read_text().replace("engine: mindee", "engine: local"))
    config = load_config(path, env)
    assert (config.engine, config.engine_chosen_automatically) == ("local", False)
    assert config.mindee.api_key_source == "env"


def test_model_for_an_inbox(tmp_path: Path, env: dict[str, str]) -> None:
    other = "11111111-2222-4333-8444-555555555555"
    env["MINDEE_V2_API_KEY"] = KEY
    path = write(tmp_path, MINIMAL + f"    model_id: {other}\nmindee:\n  model_id: {MODEL}\n")
    config = load_config(path, env)
    assert config.engine == "mindee"
    assert config.model_id_for(config.inboxes[0]) == other


def test_paths_are_relative_to_the_config_and_expand_home(
    tmp_path: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    path = write(
        conf_dir,
        """
        state_dir: ../var/./state
        inboxes:
          - name: a
            path: ~/scans
            outbox: "~/out"
            failed_dir: sub/../failed
        """,
    )
    config = load_config(Path("etc/ocrwatchd.yaml"), env)
    assert config.source == path
    assert config.state_dir == tmp_path / "var" / "state"
    (inbox,) = config.inboxes
    assert inbox.path == tmp_path / "home" / "scans"
    assert inbox.outbox == tmp_path / "home" / "out"
    assert inbox.failed_dir == conf_dir / "failed"


def test_home_as_outbox_is_refused(tmp_path: Path, env: dict[str, str]) -> None:
    # The outbox ~/ holds the inbox and the default state directory.
    path = write(tmp_path, "inboxes:\n  - name: a\n    path: ~/scans\n    outbox: ~/\n")
    home = tmp_path / "home"
    assert problems_of(path, env) == [
        f"{path}:3:11: inboxes[0].path: {home}/scans is inside inboxes[0].outbox "
        f"({home}); inbox, outbox, archive, failed and state directories must not overlap",
        f"{path}:4:13: inboxes[0].outbox: {home} contains state_dir (default) "
        f"({home}/.local/state/ocrwatchd); inbox, outbox, archive, failed and state "
        "directories must not overlap",
    ]
    path = write(tmp_path, "inboxes:\n  - name: a\n    path: ~/scans\n    outbox: ~\n")
    assert problems_of(path, env) == [
        f'{path}:4:13: inboxes[0].outbox: must be a path; a lone ~ is null in YAML, write "~" '
        "in quotes"
    ]


@pytest.mark.parametrize("name", ["", "a b", "..", "ü", "a/b"])
def test_inbox_names(tmp_path: Path, env: dict[str, str], name: str) -> None:
    path = write(tmp_path, f'inboxes:\n  - {{name: "{name}", path: a, outbox: b}}\n')
    (problem,) = problems_of(path, env)
    assert problem.startswith(f"{path}:2:12: inboxes[0].name: ")


@pytest.mark.parametrize(
    ("inboxes", "problem"),
    [
        (
            "  - {name: a, path: x, outbox: x}\n",
            "1:32: inboxes[0].outbox: {t}/x is the same directory as inboxes[0].path ({t}/x)",
        ),
        (
            "  - {name: a, path: x/y, outbox: x}\n",
            "1:21: inboxes[0].path: {t}/x/y is inside inboxes[0].outbox ({t}/x)",
        ),
        (
            "  - {name: a, path: x, outbox: o, archive_dir: o/old, on_success: archive}\n",
            "1:48: inboxes[0].archive_dir: {t}/o/old is inside inboxes[0].outbox ({t}/o)",
        ),
        (
            "  - {name: a, path: x, outbox: o, failed_dir: x/failed}\n",
            "1:47: inboxes[0].failed_dir: {t}/x/failed is inside inboxes[0].path ({t}/x)",
        ),
        (
            "  - {name: a, path: x, outbox: o}\n  - {name: b, path: x/sub, outbox: o2}\n",
            "2:21: inboxes[1].path: {t}/x/sub is inside inboxes[0].path ({t}/x)",
        ),
        (
            "  - {name: a, path: x, outbox: o}\n  - {name: b, path: y, outbox: o}\n",
            "2:32: inboxes[1].outbox: {t}/o is the same directory as inboxes[0].outbox ({t}/o)",
        ),
        (
            "  - {name: a, path: x, outbox: o}\n  - {name: a, path: y, outbox: o2}\n",
            "2:12: inboxes[1].name: inboxes[0].name has this name too",
        ),
        (
            "  - {name: a, path: state/in, outbox: o}\n",
            "1:21: inboxes[0].path: {t}/state/in is inside state_dir ({t}/state)",
        ),
    ],
)
def test_directories_must_be_disjoint(
    tmp_path: Path, env: dict[str, str], inboxes: str, problem: str
) -> None:
    path = write(tmp_path, "state_dir: state\ninboxes:\n" + inboxes)
    (found,) = problems_of(path, env)
    line, column = problem.split(":")[:2]
    expected = problem.format(t=tmp_path)
    expected = f"{int(line) + 2}:{column}:" + expected.split(":", 2)[2]
    assert found.startswith(f"{path}:{expected}")


def test_state_dir_from_the_environment_collides(tmp_path: Path, env: dict[str, str]) -> None:
    env["STATE_DIRECTORY"] = f"{tmp_path}:{tmp_path}/second"
    path = write(tmp_path, MINIMAL)
    assert problems_of(path, env) == [
        f"{path}:3:11: inboxes[0].path: {tmp_path}/in is inside state_dir (from "
        f"$STATE_DIRECTORY) ({tmp_path}); inbox, outbox, archive, failed and state directories "
        "must not overlap",
        f"{path}:4:13: inboxes[0].outbox: {tmp_path}/out is inside state_dir (from "
        f"$STATE_DIRECTORY) ({tmp_path}); inbox, outbox, archive, failed and state directories "
        "must not overlap",
    ]


def test_symlinked_directories_are_compared_resolved(tmp_path: Path, env: dict[str, str]) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "in")
    path = write(tmp_path, "inboxes:\n  - {name: a, path: in, outbox: alias/out}\n")
    (problem,) = problems_of(path, env)
    assert f"inboxes[0].outbox: {tmp_path}/alias/out is inside inboxes[0].path" in problem
    # The written path is kept, not replaced by the symlink's target.
    path = write(tmp_path, "inboxes:\n  - {name: a, path: alias, outbox: out}\n")
    assert load_config(path, env).inboxes[0].path == tmp_path / "alias"


def test_secret_file_inside_an_inbox_is_refused(tmp_path: Path, env: dict[str, str]) -> None:
    (tmp_path / "in").mkdir()
    secret_file(tmp_path / "in" / "key", "md_x\n")
    path = write(tmp_path, MINIMAL + f"mindee:\n  api_key_file: in/key\n  model_id: {MODEL}\n")
    (problem,) = problems_of(path, env)
    assert problem == (
        f"{path}:6:17: mindee.api_key_file: {tmp_path}/in/key is inside inboxes[0].path; "
        "keep secrets out of watched folders"
    )


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({"STATE_DIRECTORY": "/srv/state/one:/srv/state/two"}, "/srv/state/one"),
        ({"XDG_STATE_HOME": "/srv/xdg"}, "/srv/xdg/ocrwatchd"),
        ({"XDG_STATE_HOME": "relative"}, "{home}/.local/state/ocrwatchd"),
        ({}, "{home}/.local/state/ocrwatchd"),
    ],
)
def test_state_dir_defaults(
    tmp_path: Path, env: dict[str, str], variables: dict[str, str], expected: str
) -> None:
    env.update(variables)
    config = load_config(write(tmp_path, MINIMAL), env)
    assert config.state_dir == Path(expected.format(home=env["HOME"]))
    assert "state_dir" not in config.marks
    config = load_config(write(tmp_path, "state_dir: /srv/mine\n" + MINIMAL), env)
    assert config.state_dir == Path("/srv/mine")
    assert config.marks["state_dir"] == (1, 12)


@pytest.mark.parametrize(
    ("written", "from_env", "expected"),
    [
        ("https://api-v2.mindee.net/v2/", None, "https://api-v2.mindee.net"),
        ("http://127.0.0.1:8080/", "https://ignored", "http://127.0.0.1:8080"),
        (None, "http://localhost:1234/v2", "http://localhost:1234"),
        ("http://127.0.0.5:81", None, "http://127.0.0.5:81"),
        ("http://[::1]:8080/v2", None, "http://[::1]:8080"),
        (None, "https://proxy.example/mindee/", "https://proxy.example/mindee"),
        (None, None, "https://api-v2.mindee.net"),
    ],
)
def test_base_url(
    tmp_path: Path,
    env: dict[str, str],
    written: str | None,
    from_env: str | None,
    expected: str,
) -> None:
    if from_env:
        env["MINDEE_V2_BASE_URL"] = from_env
    text = MINIMAL + (f"mindee:\n  base_url: {written}\n" if written else "")
    assert load_config(write(tmp_path, text), env).mindee.base_url == expected


def test_bad_base_url_from_the_environment(tmp_path: Path, env: dict[str, str]) -> None:
    env["MINDEE_V2_BASE_URL"] = "api-v2.mindee.net"
    path = write(tmp_path, MINIMAL)
    assert problems_of(path, env) == [
        f"{path}: mindee.base_url: $MINDEE_V2_BASE_URL must be an http(s) URL like "
        "https://api-v2.mindee.net"
    ]


def test_plain_http_base_url_from_the_environment_must_be_loopback(
    tmp_path: Path, env: dict[str, str]
) -> None:
    env["MINDEE_V2_BASE_URL"] = "http://api-v2.mindee.net"
    path = write(tmp_path, MINIMAL)
    assert problems_of(path, env) == [
        f"{path}: mindee.base_url: $MINDEE_V2_BASE_URL must be https:// (http:// only for a "
        "loopback host: 127.0.0.0/8, ::1, localhost)"
    ]


def test_webhook_listen_defaults(tmp_path: Path, env: dict[str, str]) -> None:
    secret_file(tmp_path / "hook", "abc\n")
    config = load_config(write(tmp_path, MINIMAL + "webhook:\n  secret_file: hook\n"), env)
    assert config.webhook is not None
    assert (config.webhook.host, config.webhook.port) == ("127.0.0.1", 8787)
    assert repr(config.webhook.secret) == "Secret('***')"
    assert load_config(write(tmp_path, MINIMAL + "webhook: null\n"), env).webhook is None


def test_format_problem() -> None:
    source = Path("c.yaml")
    assert (
        format_problem(source, (3, 5), "inboxes[0].path", "gone")
        == "c.yaml:3:5: inboxes[0].path: gone"
    )
    assert format_problem(source, None, "state_dir", "gone") == "c.yaml: state_dir: gone"
    assert format_problem(source, (1, 1), "", "bad YAML") == "c.yaml:1:1: bad YAML"


def test_example_config_loads() -> None:
    config = load_config(EXAMPLE, {"MINDEE_V2_API_KEY": KEY, "HOME": "/nonexistent"})
    assert config.engine == "mindee"
    assert config.mindee.api_key_source == "env"
    assert [inbox.name for inbox in config.inboxes] == ["scanner", "accounting"]
    assert config.inboxes[0].path == Path("/srv/scans/inbox")


def example_comments() -> dict[tuple[str, str], str]:
    """(section heading, key) → the comment lines just above the key in the example."""
    found: dict[tuple[str, str], str] = {}
    comment: list[str] = []
    heading = ""
    for line in EXAMPLE.read_text().splitlines():
        stripped = line.strip().lstrip("-").strip()
        key = re.match(r"#?\s*([a-z_]+):", stripped)
        uncommented = line[2:] if line.startswith("# ") else line
        if key and not uncommented.startswith((" ", "#", "-")):
            heading = key.group(1)
        if key and (heading, key.group(1)) not in found and not stripped.startswith("# e.g"):
            found[(heading, key.group(1))] = " ".join(comment)
        if stripped.startswith("#") and not key:
            comment.append(stripped.lstrip("# "))
        elif not stripped.startswith("#"):
            comment = []
    return found


HEADINGS = {"at the top level": None, "in an inbox (under inboxes:)": "inboxes"}


@pytest.mark.parametrize(
    "section,key", [(section, key) for section in SECTIONS for key in section.fields]
)
def test_the_example_config_states_each_default_from_the_schema(section, key) -> None:
    field = section.fields[key]
    assert field.doc, f"{key} has no doc in the schema"
    heading = HEADINGS.get(section.where, section.where.split()[-1].rstrip(":"))
    comments = example_comments()
    place = (heading or key, key)
    assert place in comments, f"{key} is not in the example config"
    default = shown_default(field)
    if default is None or field.required:
        return
    assert f"Default: {default}" in comments[place], (key, comments[place])


# check_environment. Tests run as root, where permission bits do not stop anything, so an
# impossible directory is one under a regular file.


def environment_config(tmp_path: Path, env: dict[str, str], extra: str = "") -> Path:
    env["MINDEE_V2_API_KEY"] = KEY
    return write(
        tmp_path,
        f"""
        state_dir: var/state
        mindee:
          model_id: {MODEL}
        inboxes:
          - name: a
            path: in
            outbox: new/out
            failed_dir: failed
        """
        + extra,
    )


def test_environment_is_fine(tmp_path: Path, env: dict[str, str]) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "failed").mkdir()
    (tmp_path / "new" / "out").mkdir(parents=True)
    config = load_config(environment_config(tmp_path, env), env)
    # The state directory is missing but can be created: the daemon creates it.
    assert check_environment(config) == []


def test_a_missing_outbox_archive_or_failed_dir_is_a_problem_with_the_fix(
    tmp_path: Path, env: dict[str, str]
) -> None:
    # A missing one is more often a typo than a wish: the daemon must not create it.
    (tmp_path / "in").mkdir()
    env["MINDEE_V2_API_KEY"] = KEY
    path = write(
        tmp_path,
        f"""
        state_dir: var/state
        mindee:
          model_id: {MODEL}
        inboxes:
          - name: a
            path: in
            outbox: new/out
            failed_dir: failed
            on_success: archive
            archive_dir: old scans
        """,
    )
    config = load_config(path, env)
    assert check_environment(config) == [
        f"{path}:7:13: inboxes[0].outbox: {tmp_path}/new/out does not exist; create it "
        f"(mkdir -p {tmp_path}/new/out)",
        f"{path}:10:18: inboxes[0].archive_dir: {tmp_path}/old scans does not exist; create it "
        f"(mkdir -p '{tmp_path}/old scans')",
        f"{path}:8:17: inboxes[0].failed_dir: {tmp_path}/failed does not exist; create it "
        f"(mkdir -p {tmp_path}/failed)",
    ]


def test_environment_problems(tmp_path: Path, env: dict[str, str]) -> None:
    (tmp_path / "new").write_text("a regular file where a directory should be")
    (tmp_path / "failed").write_text("not a directory")
    path = environment_config(tmp_path, env)
    config = load_config(path, env)
    assert check_environment(config) == [
        f"{path}:6:11: inboxes[0].path: {tmp_path}/in does not exist",
        f"{path}:7:13: inboxes[0].outbox: {tmp_path}/new/out cannot be created: "
        f"{tmp_path}/new is not a directory",
        f"{path}:8:17: inboxes[0].failed_dir: {tmp_path}/failed is not a directory",
    ]
    (tmp_path / "in").write_text("")
    (tmp_path / "var").write_text("")
    assert (
        check_environment(config)[0]
        == f"{path}:6:11: inboxes[0].path: {tmp_path}/in is not a directory"
    )
    assert check_environment(config)[-1] == (
        f"{path}:1:12: state_dir: {tmp_path}/var/state cannot be created: "
        f"{tmp_path}/var is not a directory"
    )


def test_environment_state_dir_from_env_has_no_position(
    tmp_path: Path, env: dict[str, str]
) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "blocker").write_text("")
    env.update(STATE_DIRECTORY=str(tmp_path / "blocker" / "state"), MINDEE_V2_API_KEY=KEY)
    path = write(tmp_path, MINIMAL + f"mindee:\n  model_id: {MODEL}\n")
    config = load_config(path, env)
    assert check_environment(config) == [
        f"{path}: state_dir: {tmp_path}/blocker/state cannot be created: "
        f"{tmp_path}/blocker is not a directory"
    ]


def test_environment_checks_local_languages(
    tmp_path: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    path = write(tmp_path, MINIMAL + "local:\n  languages: [eng, klingon]\n")
    config = load_config(path, env)
    assert check_environment(config) == []  # the engine's own check says it, not the config's
    [problem] = engines.problems(config)
    assert problem.startswith(f"{path}:6:14: local.languages: ")
    assert "klingon" in problem and "tessdata.fast-klingon" in problem


def test_environment_reports_a_local_engine_that_cannot_load(
    tmp_path: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    # None in sys.modules makes the import fail as if tesserocr were not installed.
    monkeypatch.setitem(sys.modules, "tesserocr", None)
    for module in [name for name in sys.modules if name.startswith("ocrwatchd.engines.local")]:
        monkeypatch.delitem(sys.modules, module)
    config = load_config(write(tmp_path, MINIMAL), env)
    [problem] = engines.problems(config)
    assert ": engine: the local engine cannot be loaded" in problem


def test_webhook_secret_from_systemd_credentials(tmp_path: Path, env: dict[str, str]) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    secret_file(credentials / "webhook-secret", "from-credentials\n", mode=0o400)
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    path = tmp_path / "ocrwatchd.yaml"
    path.write_text(
        "engine: local\nwebhook:\n  listen: 127.0.0.1:0\n"
        "inboxes:\n  - {name: a, path: in, outbox: out}\n"
    )
    config = load_config(path, {**env, "CREDENTIALS_DIRECTORY": str(credentials)})
    assert config.webhook is not None
    assert config.webhook.secret == Secret("from-credentials")
    with pytest.raises(ConfigError, match=r"webhook\.secret_file: missing"):
        load_config(path, env)
