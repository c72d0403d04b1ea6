"""Logs through structlog: one JSON object a line in production, readable lines on a terminal.

Every log record of the process (ours through the standard `logging` module with
`extra={...}`, Celery's, the HTTP libraries') goes through one handler whose
structlog chain adds the time, level and logger name, keeps our `extra` fields,
and redacts before rendering:

- values of keys that name personal data or secrets (`email`, `name`, `token`, ...);
- e-mail addresses anywhere in a value, message or traceback;
- the configured secrets themselves (CRM tokens, webhook secret, SMTP and chat URLs)
  and `Bearer ...` headers.

Logs carry ids and counts, never names, e-mail addresses or tokens (the PII test in
tests/integration/test_logs.py runs a sync and scans the output for them).

`LEADSCORE_LOG_FORMAT` = json | console | auto (console on a terminal, else JSON);
`LEADSCORE_LOG_LEVEL` = DEBUG | INFO | WARNING | ERROR. New code may log with
`structlog.get_logger("leadscore.x").info("event_name", key=value)` or with
`logging.getLogger("leadscore.x").info("words", extra={"event": "event_name", ...})`.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, Mapping, MutableMapping
from typing import IO, TYPE_CHECKING, Any

import structlog
from structlog.stdlib import ProcessorFormatter

if TYPE_CHECKING:
    from connector.config import Settings

_STD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}
# Extras other libraries attach that are noise in a structured line (uvicorn's ANSI-coloured copy of its message).
_DROPPED_EXTRAS = frozenset({"color_message"})

# Keys whose values are personal data or secrets, whatever they hold.
REDACTED_KEYS = frozenset({
    "email", "e_mail", "emails", "name", "names", "first_name", "firstname", "last_name", "lastname",
    "full_name", "phone", "mobile", "token", "access_token", "refresh_token", "authorization", "password",
    "secret", "client_secret", "api_key", "session_id", "cookie",
})
EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
BEARER = re.compile(r"(?i)\b(bearer|oauth)\s+[A-Za-z0-9._~+/!=-]+")
REDACTED = "[redacted]"


class Redactor:
    """A structlog processor that removes personal data and secrets from every value, nested ones too."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # longest first, so a secret that contains another is replaced whole
        self.secrets = sorted({s for s in secrets if s and len(s) >= 6}, key=len, reverse=True)

    def text(self, value: str) -> str:
        for secret in self.secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        value = BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", value)
        return EMAIL.sub("[e-mail]", value) if "@" in value else value

    def value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {k: REDACTED if str(k).lower() in REDACTED_KEYS else self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self.value(v) for v in value]
        if isinstance(value, int | float | bool) or value is None:
            return value
        return self.text(str(value))

    def __call__(self, _logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        for key in list(event_dict):
            if key.startswith("_"):
                continue
            event_dict[key] = REDACTED if key.lower() in REDACTED_KEYS else self.value(event_dict[key])
        return event_dict


def _from_stdlib(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A standard-library record: its message under `msg`, its `extra={...}` fields beside it."""
    record: logging.LogRecord | None = event_dict.get("_record")
    if record is None:
        return event_dict
    event_dict["msg"] = event_dict.pop("event", record.getMessage())
    for key, value in record.__dict__.items():
        if key not in _STD and key not in _DROPPED_EXTRAS and not key.startswith("_") and key not in event_dict:
            event_dict[key] = value
    return event_dict


def secrets_of(settings: Settings) -> list[str]:
    """The configured values that must never appear in a log line."""
    from urllib.parse import urlparse

    out = [
        settings.hubspot_access_token, settings.hubspot_webhook_secret, settings.salesforce_access_token,
        settings.salesforce_webhook_secret,
        settings.salesforce_client_secret, settings.salesforce_refresh_token, settings.chat_webhook_url,
    ]
    if settings.smtp_url:
        out.append(settings.smtp_url)
        out.append(urlparse(settings.smtp_url).password)
    if settings.salesforce_access_token and "!" in settings.salesforce_access_token:
        out.append(settings.salesforce_access_token.split("!", 1)[1])  # the session part after the org id
    return [s for s in out if s]


def _renderer(fmt: str, stream: IO[str]) -> Any:
    if fmt == "auto":
        try:
            fmt = "console" if stream.isatty() else "json"
        except (AttributeError, ValueError):
            fmt = "json"
    if fmt == "console":
        return structlog.dev.ConsoleRenderer(colors=False, event_key="msg")
    return structlog.processors.JSONRenderer(sort_keys=False)


def configure(
    level: str | None = None,
    stream: IO[str] | None = None,
    *,
    settings: Settings | None = None,
    fmt: str | None = None,
    secrets: Iterable[str] = (),
) -> None:
    """Route every log record of the process through structlog, redacted, to `stream` (stderr)."""
    if settings is None:
        from connector.config import load_settings

        settings = load_settings()
    stream = stream or sys.stderr
    redact = Redactor([*secrets_of(settings), *secrets])
    shared: list[Any] = [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
    ]
    formatter = ProcessorFormatter(
        foreign_pre_chain=[*shared, _from_stdlib],
        processors=[
            ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redact,
            _renderer(fmt or settings.log_format, stream),
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.set_name("leadscore")
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if h.get_name() != "leadscore"] + [handler]
    root.setLevel(level or settings.log_level)
    ours = logging.getLogger("leadscore")
    ours.handlers.clear()
    ours.propagate = True
    ours.setLevel(level or settings.log_level)
    structlog.configure(
        processors=[*shared, structlog.stdlib.PositionalArgumentsFormatter(), ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
