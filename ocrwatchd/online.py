"""`ocrwatchd check-config --online`: ask the API, without uploading a document, whether
the configured key works.

The API has no route that names a model without an upload (enqueue is the only one that
takes a `model_id`), so a model id is only checked not to be the example config's
placeholder; an unknown model still shows on the first upload (HTTP 404, the file fails).
"""

from __future__ import annotations

from ocrwatchd.config import Config, format_problem
from ocrwatchd.errors import ApiError, ConfigError

# The model id of the example config and the spec: a valid UUID no account has.
PLACEHOLDER_MODEL_ID = "00000000-0000-4000-8000-000000000000"
# An interactive command: a dead host must not keep the user waiting for minutes.
_CHECK_TIMEOUT = 30.0


def check_online(config: Config) -> str:
    """Check the mindee engine's settings against the API; return what was checked.

    Given a config that passed the offline checks. Raises ApiError (`pauses_work`) when
    the API refuses the key or the account, ConfigError naming `mindee.base_url` when it
    does not answer as the API does, or naming a model id that is the placeholder.
    """
    if config.engine != "mindee":
        return "engine local: nothing to check online"
    problems = [
        format_problem(
            config.source,
            config.marks.get(key),
            key,
            "is the example config's placeholder, not a model of your account; copy your "
            "OCR model's id from the Mindee platform",
        )
        for key, model_id in _model_ids(config).items()
        if model_id == PLACEHOLDER_MODEL_ID
    ]
    if problems:
        raise ConfigError(problems)

    from ocrwatchd.engines.mindee import MindeeClient

    settings = config.mindee
    assert settings.api_key is not None  # the offline checks require it
    timeout = min(settings.request_timeout, _CHECK_TIMEOUT)
    with MindeeClient(settings.base_url, settings.api_key, request_timeout=timeout) as client:
        try:
            client.check_key()
        except ApiError as error:
            if error.pauses_work:
                raise
            key = "mindee.base_url"
            message = f"{settings.base_url} does not answer as the Mindee API does: {error}"
            raise ConfigError(
                [format_problem(config.source, config.marks.get(key), key, message)]
            ) from None
    return f"{settings.base_url}: the API accepted the key"


def _model_ids(config: Config) -> dict[str, str | None]:
    """The model ids the inboxes use, by the key path that sets each."""
    return {
        f"inboxes[{index}].model_id" if inbox.model_id else "mindee.model_id": (
            config.model_id_for(inbox)
        )
        for index, inbox in enumerate(config.inboxes)
    }
