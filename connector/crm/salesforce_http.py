"""The Salesforce adapter's HTTP edge: the session, the error table, the shared token.

- `ApiSession` is the `requests.Session` simple-salesforce sends everything through
  (queries, composite, Bulk API 2.0, the token endpoint). It puts a timeout on every
  call, counts calls, asks the shared rate limiter and the API floor before each one,
  and reads `Sforce-Limit-Info` from every answer (errors included, which
  simple-salesforce's own `api_usage` misses because it raises first).
- `ERROR_TABLE` is the one table from a Salesforce answer (status, errorCode) to what
  the connector does about it; `classify` applies it (and sorts network failures).
- `TokenStore` shares a refreshed access token between workers through Redis, per
  account, so every worker uses the one refreshed token instead of each refreshing its
  own. Redis (the broker, often shared and backed up) only ever holds it encrypted:
  Fernet, with a key derived (HKDF) from the Salesforce secrets every worker has in its
  environment (the configured token and the OAuth client's credentials). Whoever can
  decrypt it could ask Salesforce for a session anyway; whoever can only read Redis
  cannot use it. Tokens never reach a log line or an exception message.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import redis
import requests
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from simple_salesforce.exceptions import SalesforceError, SalesforceOperationError

from connector.config import Settings
from connector.crm.base import CallCounter
from connector.errors import LeadscoreError, RecordError, RetryLater, StopSync

SESSION_EXPIRED = "the Salesforce session expired; set a new SALESFORCE_ACCESS_TOKEN or configure refresh credentials"


class SalesforceQueryBug(LeadscoreError):
    """Salesforce refused a query the connector built: a bug in the connector, not the data.

    The message carries the query (field names, ids and dates only: no personal data)
    and Salesforce's reason, so the report can be acted on.
    """


class SessionExpired(LeadscoreError):
    """401 INVALID_SESSION_ID: internal signal to refresh the token and try once more."""


@dataclass(frozen=True)
class OAuthCredentials:
    """How to get a new access token when the current one expires.

    With a refresh token: the `refresh_token` grant (connected app's client id and
    secret). Without: the `client_credentials` grant (the connected app runs as its
    configured integration user). `token_url` defaults to the instance's
    /services/oauth2/token.
    """

    client_id: str = field(repr=False)
    client_secret: str | None = field(default=None, repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    token_url: str | None = None

    @property
    def grant(self) -> str:
        return "refresh_token" if self.refresh_token else "client_credentials"

    def form(self) -> dict[str, str]:
        body = {"grant_type": self.grant, "client_id": self.client_id}
        if self.client_secret:
            body["client_secret"] = self.client_secret
        if self.refresh_token:
            body["refresh_token"] = self.refresh_token
        return body

    @classmethod
    def from_settings(cls, settings: Settings) -> OAuthCredentials | None:
        """SALESFORCE_CLIENT_ID (+ SALESFORCE_CLIENT_SECRET, + SALESFORCE_REFRESH_TOKEN), or None."""
        if not settings.salesforce_client_id:
            return None
        if not settings.salesforce_refresh_token and not settings.salesforce_client_secret:
            return None
        return cls(
            client_id=settings.salesforce_client_id,
            client_secret=settings.salesforce_client_secret,
            refresh_token=settings.salesforce_refresh_token,
        )


# --------------------------------------------------------------------------- the error table


class Outcome(enum.Enum):
    REFRESH = "refresh the token and try once more"
    STOP_AUTH = "stop: the token is refused"
    STOP_DAILY = "stop: the org's API request limit is used up"
    STOP_REFUSED = "stop: the integration user may not do this"
    STOP_FIELD = "stop: a mapped or score field does not exist"
    STOP_LOCATOR = "stop: the query cursor expired"
    BUG = "a bug: the connector built a query Salesforce cannot parse"
    RECORD = "skip this record"
    RETRY = "retry later"


# (HTTP status, Salesforce errorCode or None for any, text the message must contain
# or None) -> what to do. First match wins.
ERROR_TABLE: tuple[tuple[int, str | None, str | None, Outcome], ...] = (
    (401, "INVALID_SESSION_ID", None, Outcome.REFRESH),
    (401, None, None, Outcome.STOP_AUTH),
    # The org's rolling 24-hour request limit: nothing works until calls age out.
    (403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests", Outcome.STOP_DAILY),
    # The same code for the concurrent-request limits (ConcurrentPerOrgLongTxn ...):
    # those pass by themselves within seconds.
    (403, "REQUEST_LIMIT_EXCEEDED", None, Outcome.RETRY),
    (403, None, None, Outcome.STOP_REFUSED),
    (400, "MALFORMED_QUERY", None, Outcome.BUG),
    (400, "INVALID_QUERY_FILTER_OPERATOR", None, Outcome.BUG),
    (400, "INVALID_FIELD", None, Outcome.STOP_FIELD),
    (400, "INVALID_TYPE", None, Outcome.STOP_FIELD),
    (400, "INVALID_QUERY_LOCATOR", None, Outcome.STOP_LOCATOR),
    (400, None, None, Outcome.RECORD),
    (404, None, None, Outcome.RECORD),
    (408, None, None, Outcome.RETRY),
    (414, None, None, Outcome.BUG),
    (420, None, None, Outcome.RETRY),
    (429, None, None, Outcome.RETRY),
    # 500 UNKNOWN_EXCEPTION, 502, 503 SERVER_UNAVAILABLE, 504: all transient.
    *((status, None, None, Outcome.RETRY) for status in range(500, 600)),
)


def outcome_for(status: int, code: str | None, message: str = "") -> Outcome:
    for row_status, row_code, row_text, outcome in ERROR_TABLE:
        if row_status != status or (row_code is not None and row_code != code):
            continue
        if row_text is None or row_text in message:
            return outcome
    return Outcome.RECORD if 400 <= status < 500 else Outcome.RETRY


def error_detail(content: Any) -> tuple[str | None, str]:
    """(errorCode, message) from Salesforce's error body `[{"message", "errorCode", "fields"}]`."""
    if isinstance(content, bytes | bytearray):
        try:
            content = json.loads(content)
        except ValueError:
            content = content.decode("utf-8", "replace")
    if isinstance(content, list) and content and isinstance(content[0], Mapping):
        first = content[0]
        return first.get("errorCode"), str(first.get("message", ""))
    if isinstance(content, Mapping):
        return content.get("errorCode") or content.get("error"), str(
            content.get("message") or content.get("error_description") or ""
        )
    return None, str(content)[:300]


def _retry_after(response: Any) -> float | None:
    headers = getattr(response, "headers", None) or {}
    value = headers.get("Retry-After") if hasattr(headers, "get") else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def classify(
    exc: BaseException,
    *,
    instance_url: str,
    record_id: str | None = None,
    query: str | None = None,
    usage: tuple[int, int] | None = None,
    now: float | None = None,
) -> BaseException:
    """The connector error for a failed Salesforce call (the exception itself when it is ours)."""
    if isinstance(exc, LeadscoreError):
        return exc
    host = urlparse(instance_url).netloc or instance_url
    if isinstance(exc, requests.exceptions.SSLError):
        return StopSync(
            f"the TLS certificate of Salesforce at {host} is not trusted ({_short(exc)}); "
            "if the org uses a private CA, set SALESFORCE_CA_BUNDLE to that CA's PEM file"
        )
    if isinstance(exc, requests.exceptions.Timeout):
        return RetryLater(f"Salesforce at {host} did not answer in time")
    if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.ChunkedEncodingError):
        return RetryLater(
            f"cannot reach Salesforce at {host} ({_short(exc)}); check SALESFORCE_INSTANCE_URL and the network"
        )
    if isinstance(exc, SalesforceOperationError):
        return RetryLater(f"a Salesforce bulk job did not complete: {_short(exc)}")
    if not isinstance(exc, SalesforceError):
        return exc
    code, message = error_detail(exc.content)
    outcome = outcome_for(exc.status, code, message)
    said = f"{code}: {message}" if code else message
    if outcome is Outcome.REFRESH:
        return SessionExpired(SESSION_EXPIRED)
    if outcome is Outcome.STOP_AUTH:
        return StopSync(f"Salesforce refused the access token ({said}); set a new SALESFORCE_ACCESS_TOKEN")
    if outcome is Outcome.STOP_DAILY:
        now = time.time() if now is None else now
        resume = now + 3600
        used = f" (api-usage {usage[0]}/{usage[1]})" if usage else ""
        return StopSync(
            f"Salesforce refused the call because the org's API request limit is used up{used}; "
            "the limit counts calls over a rolling 24 hours, so capacity comes back as old calls age out: "
            f"retry after {time.strftime('%H:%M UTC', time.gmtime(resume))} (in about an hour), "
            "or ask Salesforce for a higher limit",
            resume_at=resume,
        )
    if outcome is Outcome.STOP_REFUSED:
        return StopSync(f"Salesforce refused the call ({said}); check the integration user's permissions")
    if outcome is Outcome.STOP_FIELD:
        return StopSync(
            f"Salesforce does not know a field the connector reads ({said}); check the field names in "
            "mappings/salesforce.yaml, and run `leadscore setup` to see which score fields to create"
        )
    if outcome is Outcome.STOP_LOCATOR:
        return StopSync(
            f"the Salesforce query cursor expired or is invalid ({said}); start the stream again "
            "(an incremental sync resumes from its saved high-water mark)"
        )
    if outcome is Outcome.BUG:
        return SalesforceQueryBug(f"Salesforce refused a query the connector built ({said}); query: {query}")
    if outcome is Outcome.RECORD:
        return RecordError(record_id or "?", said or f"HTTP {exc.status}")
    return RetryLater(f"Salesforce answered {exc.status} ({said})", wait=_retry_after(exc), status=exc.status)


def _short(exc: BaseException) -> str:
    text = str(exc)
    # requests nests the useful part deep inside; keep the tail, bounded.
    for marker in ("SSLError(", "Caused by "):
        if marker in text:
            text = text[text.rindex(marker) :]
    return text[:240]


# --------------------------------------------------------------------------- the session


class ApiSession(requests.Session):
    """A session that times out, counts, throttles and reads Sforce-Limit-Info on every call."""

    def __init__(
        self,
        *,
        timeout: float,
        before: Callable[[str], None],
        after: Callable[[Any], None],
    ) -> None:
        super().__init__()
        self.timeout = timeout
        self.calls = CallCounter()
        self._before = before
        self._after = after
        self._proxies: dict[str, dict[str, str]] = {}

    def use_ca_bundle(self, path: str) -> None:
        """Trust only this CA file, and still go through HTTPS_PROXY / honour NO_PROXY.

        requests ignores `session.verify` while REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE is
        set, unless `trust_env` is off; but `trust_env=False` also drops the proxy
        variables. So the environment is switched off and the proxies are resolved from
        it here, per host, the way requests itself would (`get_environ_proxies`).
        """
        self.verify = path
        self.trust_env = False

    def _env_proxies(self, url: str) -> dict[str, str]:
        parsed = urlparse(url)
        origin = f"{parsed.scheme}://{parsed.netloc}"
        found = self._proxies.get(origin)
        if found is None:
            found = dict(requests.utils.get_environ_proxies(url))
            self._proxies[origin] = found
        return found

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout
        if not self.trust_env and kwargs.get("proxies") is None:
            kwargs["proxies"] = self._env_proxies(url)
        self._before(url)
        self.calls.add()
        response = super().request(method, url, *args, **kwargs)
        self._after(response)
        return response


def parse_limit_info(value: str | None) -> tuple[int, int] | None:
    """`api-usage=18/5000` (possibly followed by per-app usage) -> (18, 5000)."""
    if not value:
        return None
    for part in value.replace(",", ";").split(";"):
        key, _, rest = part.strip().partition("=")
        if key == "api-usage" and "/" in rest:
            used, _, total = rest.partition("/")
            try:
                return int(used), int(total)
            except ValueError:
                return None
    return None


# --------------------------------------------------------------------------- the shared token


def fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def session_key(configured_token: str, oauth: OAuthCredentials | None, account: str) -> bytes:
    """The Fernet key for an account's shared session: derived from the secrets every worker is configured with."""
    parts = [configured_token]
    if oauth is not None:
        parts += [oauth.client_id, oauth.client_secret or "", oauth.refresh_token or ""]
    material = "\0".join(parts).encode()
    derived = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=account.encode(), info=b"leadscore salesforce session v1"
    ).derive(material)
    return base64.urlsafe_b64encode(derived)


class TokenStore:
    """The current access token of one Salesforce account, shared by every worker via Redis, encrypted.

    The entry remembers which configured token it replaced (by fingerprint), so a new
    SALESFORCE_ACCESS_TOKEN set by the admin wins over an old refreshed one. An entry
    that cannot be decrypted with this worker's key (other credentials, or a clear-text
    entry an older version wrote) counts as absent; a clear-text one is deleted.
    """

    TTL_S = 24 * 3600

    def __init__(self, client: redis.Redis, account: str, key: bytes) -> None:
        self.client = client
        self.key = f"leadscore:salesforce:{account}:session"
        self._fernet = Fernet(key)

    def get(self, configured: str) -> str | None:
        raw = self.client.get(self.key)
        if raw is None:
            return None
        try:
            entry = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(entry, dict):
            return None
        if "token" in entry:  # written in clear text by an older version: never use it, never keep it
            self.client.delete(self.key)
            return None
        if entry.get("for") != fingerprint(configured) or not isinstance(entry.get("enc"), str):
            return None
        try:
            token = self._fernet.decrypt(entry["enc"].encode()).decode()
        except (InvalidToken, UnicodeDecodeError):
            return None
        return token or None

    def put(self, configured: str, token: str) -> None:
        sealed = self._fernet.encrypt(token.encode()).decode()
        entry = json.dumps({"for": fingerprint(configured), "enc": sealed, "at": time.time()})
        self.client.set(self.key, entry, ex=self.TTL_S)

    def lock(self) -> Any:
        return self.client.lock(f"{self.key}:refresh", timeout=60, blocking_timeout=60)
