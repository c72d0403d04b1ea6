"""Settings from the environment: the only module that reads os.environ.

Secrets and endpoints come from here; rules come from mappings/. A value that
is present but malformed fails at once with a sentence naming the variable.
Secrets are kept out of repr() so they never reach a log line or a traceback.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from connector.errors import ConfigError

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
DEFAULT_HUBSPOT_BASE_URL = "https://api.hubapi.com"


def _url(env: Mapping[str, str], name: str, default: str | None = None) -> str | None:
    value = env.get(name, "").strip() or default
    if value is None:
        return None
    parsed = urlparse(value)
    if not parsed.scheme or not parsed.netloc:
        raise ConfigError(f"{name} must be a URL such as https://host:port, not {value!r}.")
    return value.rstrip("/")


def _secret(env: Mapping[str, str], name: str) -> str | None:
    return env.get(name, "").strip() or None


@dataclass(frozen=True)
class Settings:
    redis_url: str = DEFAULT_REDIS_URL
    redis_url_given: bool = False
    mappings_dir: Path = Path("mappings")
    hubspot_base_url: str = DEFAULT_HUBSPOT_BASE_URL
    hubspot_access_token: str | None = field(default=None, repr=False)
    hubspot_webhook_secret: str | None = field(default=None, repr=False)
    salesforce_instance_url: str | None = None
    salesforce_access_token: str | None = field(default=None, repr=False)
    salesforce_ca_bundle: Path | None = None
    # OAuth refresh for Salesforce sessions (either a refresh token with a
    # connected app's client id/secret, or client credentials alone).
    salesforce_client_id: str | None = field(default=None, repr=False)
    salesforce_client_secret: str | None = field(default=None, repr=False)
    salesforce_refresh_token: str | None = field(default=None, repr=False)
    salesforce_org_id: str | None = None
    smtp_url: str | None = field(default=None, repr=False)
    chat_webhook_url: str | None = field(default=None, repr=False)
    # The web process (`leadscore serve`) listens on PORT (the Procfile convention).
    web_port: int = 8000
    # Seconds before the broker re-delivers a task whose worker died (LEADSCORE_VISIBILITY_TIMEOUT).
    visibility_timeout: int = 600
    # LEADSCORE_ROUTING_AT: routing decides as at this moment (epoch seconds) instead of the real
    # time: for the demo, benchmarks and tests that need a working-day hour. Never set in production.
    routing_at: float | None = None

    @property
    def hubspot_configured(self) -> bool:
        return self.hubspot_access_token is not None

    @property
    def salesforce_configured(self) -> bool:
        return self.salesforce_instance_url is not None and self.salesforce_access_token is not None

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
    """An ISO 8601 date and time with its zone (2026-11-23T10:00:00+01:00, or Z) as epoch seconds."""
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise ConfigError(
            f"{name} must be a date and time with its zone, such as 2026-11-23T10:00:00+01:00, not {text!r}."
        )
    return moment.timestamp()


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    ca = env.get("SALESFORCE_CA_BUNDLE", "").strip()
    ca_path = Path(ca) if ca else None
    if ca_path is not None and not ca_path.is_file():
        raise ConfigError(f"SALESFORCE_CA_BUNDLE points at {ca}, which is not a readable file.")
    redis_url = _url(env, "REDIS_URL", DEFAULT_REDIS_URL)
    assert redis_url is not None
    if urlparse(redis_url).scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"REDIS_URL must start with redis://, rediss:// or unix://, not {redis_url!r}.")
    port = env.get("PORT", "").strip() or "8000"
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"PORT must be a port number between 1 and 65535, not {port!r}.")
    routing_at = env.get("LEADSCORE_ROUTING_AT", "").strip()
    vt = env.get("LEADSCORE_VISIBILITY_TIMEOUT", "").strip() or "600"
    if not vt.isdigit() or not 1 <= int(vt) <= 43200:
        raise ConfigError(f"LEADSCORE_VISIBILITY_TIMEOUT must be seconds between 1 and 43200, not {vt!r}.")
    return Settings(
        redis_url=redis_url,
        redis_url_given=bool(env.get("REDIS_URL", "").strip()),
        mappings_dir=Path(env.get("LEADSCORE_MAPPINGS", "").strip() or "mappings"),
        hubspot_base_url=_url(env, "HUBSPOT_BASE_URL", DEFAULT_HUBSPOT_BASE_URL) or DEFAULT_HUBSPOT_BASE_URL,
        hubspot_access_token=_secret(env, "HUBSPOT_ACCESS_TOKEN"),
        hubspot_webhook_secret=_secret(env, "HUBSPOT_WEBHOOK_SECRET"),
        salesforce_instance_url=_url(env, "SALESFORCE_INSTANCE_URL"),
        salesforce_access_token=_secret(env, "SALESFORCE_ACCESS_TOKEN"),
        salesforce_ca_bundle=ca_path,
        salesforce_client_id=_secret(env, "SALESFORCE_CLIENT_ID"),
        salesforce_client_secret=_secret(env, "SALESFORCE_CLIENT_SECRET"),
        salesforce_refresh_token=_secret(env, "SALESFORCE_REFRESH_TOKEN"),
        salesforce_org_id=env.get("SALESFORCE_ORG_ID", "").strip() or None,
        smtp_url=_secret(env, "LEADSCORE_SMTP_URL"),
        chat_webhook_url=_secret(env, "LEADSCORE_CHAT_WEBHOOK_URL"),
        web_port=int(port),
        visibility_timeout=int(vt),
        routing_at=parse_moment(routing_at, "LEADSCORE_ROUTING_AT") if routing_at else None,
    )
