"""Settings from the environment: the only module that reads os.environ.

Secrets and endpoints come from here; rules come from mappings/. The settings
are a pydantic-settings model: each field names its environment variable, and a
value that is present but malformed fails at once with one sentence naming the
variable (`ConfigError`). Secrets are kept out of repr() so they never reach a
log line or a traceback.

`load_settings()` reads the environment (or a mapping given in its place, for
tests); building `Settings(...)` directly reads nothing but its arguments, so a
test or the demo states every value it relies on.

Adding a setting: one field, `Field(default=..., validation_alias="ENV_NAME")`, with
`repr=False` when it is a secret and a validator when a malformed value must be
refused with a sentence.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from connector.domain import CrmName
from connector.errors import ConfigError

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
DEFAULT_HUBSPOT_BASE_URL = "https://api.hubapi.com"
DEFAULT_METRICS_ADDR = "127.0.0.1:9464"
WEBHOOK_TOKEN_MIN = 24
_URL_SAFE = re.compile(r"^[A-Za-z0-9_-]+$")

# The environment `load_settings` reads; unset while `Settings(...)` is built directly.
_ENVIRONMENT: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar("environment", default=None)


class _MappingEnvSource(EnvSettingsSource):
    """pydantic-settings' environment source, reading a given mapping (os.environ or a test's dict)."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        self._given = env
        super().__init__(settings_cls, case_sensitive=True, env_ignore_empty=True)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {k: v for k, v in self._given.items() if v.strip()}


def _url(name: str, value: str) -> str:
    value = value.strip()
    parsed = urlparse(value)
    if not parsed.scheme or not parsed.netloc:
        raise ValueError(f"{name} must be a URL such as https://host:port, not {value!r}.")
    return value.rstrip("/")


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _https_unless_loopback(name: str, value: str) -> str:
    """Plain http:// only to this machine (the sandbox, a local proxy): a token sent in clear text is a token lost."""
    parsed = urlparse(value)
    if parsed.scheme == "https" or (parsed.scheme == "http" and _is_loopback(parsed.hostname or "")):
        return value
    raise ValueError(
        f"{name} must use https:// (plain http:// is allowed only for localhost, 127.0.0.1 or ::1), not {value!r}."
    )


def split_bind(value: str, name: str) -> tuple[str, int]:
    """'127.0.0.1:9464', '[::1]:9464' or '0.0.0.0:9464' -> (host, port)."""
    host, sep, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"{name} must be host:port, like 127.0.0.1:9464 or [::1]:9464, not {value!r}.")
    if not _is_loopback(host):
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError(f"{name} must name an IP address to listen on (or localhost), not {host!r}.") from None
    return host, int(port)


def _blank_is_none(value: Any) -> Any:
    if isinstance(value, str):
        return value.strip() or None
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        frozen=True,
        extra="ignore",
        validate_by_name=True,
        validate_by_alias=True,
        case_sensitive=True,
    )

    redis_url: str = Field(default=DEFAULT_REDIS_URL, validation_alias="REDIS_URL")
    # True when REDIS_URL was given (the demo then uses that Redis instead of a private one).
    redis_url_given: bool = False
    mappings_dir: Path = Field(default=Path("mappings"), validation_alias="LEADSCORE_MAPPINGS")
    hubspot_base_url: str = Field(default=DEFAULT_HUBSPOT_BASE_URL, validation_alias="HUBSPOT_BASE_URL")
    hubspot_access_token: str | None = Field(default=None, validation_alias="HUBSPOT_ACCESS_TOKEN", repr=False)
    hubspot_webhook_secret: str | None = Field(default=None, validation_alias="HUBSPOT_WEBHOOK_SECRET", repr=False)
    salesforce_instance_url: str | None = Field(default=None, validation_alias="SALESFORCE_INSTANCE_URL")
    salesforce_access_token: str | None = Field(default=None, validation_alias="SALESFORCE_ACCESS_TOKEN", repr=False)
    salesforce_ca_bundle: Path | None = Field(default=None, validation_alias="SALESFORCE_CA_BUNDLE")
    # OAuth refresh for Salesforce sessions (either a refresh token with a
    # connected app's client id/secret, or client credentials alone).
    salesforce_client_id: str | None = Field(default=None, validation_alias="SALESFORCE_CLIENT_ID", repr=False)
    salesforce_client_secret: str | None = Field(default=None, validation_alias="SALESFORCE_CLIENT_SECRET", repr=False)
    salesforce_refresh_token: str | None = Field(default=None, validation_alias="SALESFORCE_REFRESH_TOKEN", repr=False)
    salesforce_org_id: str | None = Field(default=None, validation_alias="SALESFORCE_ORG_ID")
    # The token Salesforce Outbound Messages must carry in their endpoint URL (?token=...): they have no signature.
    salesforce_webhook_secret: str | None = Field(
        default=None, validation_alias="SALESFORCE_WEBHOOK_SECRET", repr=False
    )
    smtp_url: str | None = Field(default=None, validation_alias="LEADSCORE_SMTP_URL", repr=False)
    chat_webhook_url: str | None = Field(default=None, validation_alias="LEADSCORE_CHAT_WEBHOOK_URL", repr=False)
    # The web process (`leadscore serve`) listens on PORT (the Procfile convention).
    web_port: int = Field(default=8000, validation_alias="PORT")
    # Where `leadscore serve` answers /metrics and /readyz (host:port): loopback by default.
    metrics_addr: str = Field(default=DEFAULT_METRICS_ADDR, validation_alias="LEADSCORE_METRICS_ADDR")
    # Seconds before the broker re-delivers a task whose worker died (LEADSCORE_VISIBILITY_TIMEOUT).
    visibility_timeout: int = Field(default=600, validation_alias="LEADSCORE_VISIBILITY_TIMEOUT")
    # Log format: "json" (one object a line, for production), "console" (readable), or "auto":
    # console on a terminal, JSON otherwise (LEADSCORE_LOG_FORMAT).
    log_format: str = Field(default="auto", validation_alias="LEADSCORE_LOG_FORMAT")
    log_level: str = Field(default="INFO", validation_alias="LEADSCORE_LOG_LEVEL")
    # LEADSCORE_ROUTING_AT: routing decides as at this moment (epoch seconds; the variable is an ISO
    # date and time with its zone) instead of the real time: for the demo, benchmarks and tests that
    # need a working-day hour. Never set in production.
    routing_at: float | None = Field(default=None, validation_alias="LEADSCORE_ROUTING_AT")
    # Where trained conversion-probability models are kept (connector/learn/store.py): a folder every
    # worker reads (a shared volume), as a path or a file:// URL. Unset: no probability is trained or applied.
    model_store: str | None = Field(default=None, validation_alias="LEADSCORE_MODEL_STORE")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        env = _ENVIRONMENT.get()
        if env is None:
            return (init_settings,)
        return (init_settings, _MappingEnvSource(settings_cls, env))

    # --- validation: one sentence naming the variable ---------------------------------------------

    @field_validator(
        "hubspot_access_token", "hubspot_webhook_secret", "salesforce_access_token", "salesforce_client_id",
        "salesforce_client_secret", "salesforce_refresh_token", "salesforce_org_id", "smtp_url",
        "chat_webhook_url", "salesforce_instance_url", "salesforce_ca_bundle", "model_store", mode="before",
    )
    @classmethod
    def _strip(cls, value: Any) -> Any:
        return _blank_is_none(value)

    @field_validator("redis_url", mode="before")
    @classmethod
    def _redis_url(cls, value: Any) -> str:
        url = _url("REDIS_URL", str(value))
        if urlparse(url).scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"REDIS_URL must start with redis://, rediss:// or unix://, not {url!r}.")
        return url

    @field_validator("hubspot_base_url", mode="before")
    @classmethod
    def _hubspot_base_url(cls, value: Any) -> str:
        return _https_unless_loopback("HUBSPOT_BASE_URL", _url("HUBSPOT_BASE_URL", str(value)))

    @field_validator("salesforce_webhook_secret", mode="before")
    @classmethod
    def _salesforce_webhook_secret(cls, value: Any) -> str | None:
        """A secret that travels in a URL: long enough to be unguessable, and needing no escaping."""
        value = _blank_is_none(value)
        if value is None:
            return None
        text = str(value)
        if len(text) < WEBHOOK_TOKEN_MIN:
            raise ValueError(
                f"SALESFORCE_WEBHOOK_SECRET must be at least {WEBHOOK_TOKEN_MIN} characters long; make one with "
                "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'."
            )
        if not _URL_SAFE.match(text):
            raise ValueError("SALESFORCE_WEBHOOK_SECRET goes into a URL: use letters, digits, - and _ only.")
        return text

    @field_validator("metrics_addr", mode="before")
    @classmethod
    def _metrics_addr(cls, value: Any) -> str:
        text = str(value).strip() or DEFAULT_METRICS_ADDR
        try:
            split_bind(text, "LEADSCORE_METRICS_ADDR")
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return text

    @field_validator("salesforce_instance_url", mode="before")
    @classmethod
    def _salesforce_instance_url(cls, value: Any) -> str | None:
        value = _blank_is_none(value)
        return None if value is None else _url("SALESFORCE_INSTANCE_URL", str(value))

    @field_validator("mappings_dir", mode="before")
    @classmethod
    def _mappings_dir(cls, value: Any) -> Path:
        return Path(str(value).strip() or "mappings")

    @field_validator("salesforce_ca_bundle", mode="after")
    @classmethod
    def _ca_bundle(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"SALESFORCE_CA_BUNDLE points at {value}, which is not a readable file.")
        return value

    @field_validator("web_port", mode="before")
    @classmethod
    def _port(cls, value: Any) -> int:
        text = str(value).strip()
        if not text.isdigit() or not 1 <= int(text) <= 65535:
            raise ValueError(f"PORT must be a port number between 1 and 65535, not {text!r}.")
        return int(text)

    @field_validator("visibility_timeout", mode="before")
    @classmethod
    def _visibility(cls, value: Any) -> int:
        text = str(value).strip()
        if not text.isdigit() or not 1 <= int(text) <= 43200:
            raise ValueError(f"LEADSCORE_VISIBILITY_TIMEOUT must be seconds between 1 and 43200, not {text!r}.")
        return int(text)

    @field_validator("log_format", mode="before")
    @classmethod
    def _log_format(cls, value: Any) -> str:
        text = str(value).strip().lower()
        if text not in ("auto", "json", "console"):
            raise ValueError(f"LEADSCORE_LOG_FORMAT must be json, console or auto, not {value!r}.")
        return text

    @field_validator("routing_at", mode="before")
    @classmethod
    def _routing_at(cls, value: Any) -> float | None:
        value = _blank_is_none(value)
        if value is None or isinstance(value, int | float):
            return None if value is None else float(value)
        return parse_moment(str(value), "LEADSCORE_ROUTING_AT")

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level(cls, value: Any) -> str:
        text = str(value).strip().upper()
        if text not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError(f"LEADSCORE_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, not {value!r}.")
        return text

    # --- what the commands ask ---------------------------------------------------------------------

    @property
    def metrics_bind(self) -> tuple[str, int]:
        """(host, port) of LEADSCORE_METRICS_ADDR."""
        return split_bind(self.metrics_addr, "LEADSCORE_METRICS_ADDR")

    @property
    def hubspot_configured(self) -> bool:
        return self.hubspot_access_token is not None

    @property
    def salesforce_configured(self) -> bool:
        return self.salesforce_instance_url is not None and self.salesforce_access_token is not None

    @property
    def configured_crms(self) -> list[CrmName]:
        """The CRMs whose account is given, in the order the commands go through them."""
        crms: list[CrmName] = []
        if self.hubspot_configured:
            crms.append("hubspot")
        if self.salesforce_configured:
            crms.append("salesforce")
        return crms

    def require_hubspot(self) -> None:
        if not self.hubspot_access_token:
            raise ConfigError("HUBSPOT_ACCESS_TOKEN is not set: give the private app's access token.")

    def require_salesforce(self) -> None:
        missing = [
            name
            for name, value in (
                ("SALESFORCE_INSTANCE_URL", self.salesforce_instance_url),
                ("SALESFORCE_ACCESS_TOKEN", self.salesforce_access_token),
            )
            if not value
        ]
        if missing:
            raise ConfigError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set.")


def parse_moment(text: str, name: str) -> float:
    """An ISO 8601 date and time with its zone (2026-11-23T10:00:00+01:00, or Z) as epoch seconds.

    Raises ValueError with one sentence naming `name` (a ConfigError through `load_settings`).
    """
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise ValueError(
            f"{name} must be a date and time with its zone, such as 2026-11-23T10:00:00+01:00, not {text!r}."
        )
    return moment.timestamp()


def _sentence(exc: ValidationError) -> str:
    """The first problem as the sentence our validators wrote (pydantic prefixes 'Value error, ')."""
    first = exc.errors()[0]
    message = str(first.get("msg", "")).removeprefix("Value error, ")
    if first.get("type") == "value_error":
        return message
    where = ".".join(str(x) for x in first.get("loc", ()))
    return f"{where} is not valid: {message}."


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """The settings from the environment (or from `env` in its place); ConfigError names a bad variable."""
    env = os.environ if env is None else env
    token = _ENVIRONMENT.set(env)
    try:
        settings = Settings()
    except ValidationError as exc:
        raise ConfigError(_sentence(exc)) from None
    finally:
        _ENVIRONMENT.reset(token)
    if env.get("REDIS_URL", "").strip():
        settings = settings.model_copy(update={"redis_url_given": True})
    return settings
