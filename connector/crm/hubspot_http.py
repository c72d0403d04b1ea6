"""The HubSpot transport: the official SDK's API objects, the shared quotas, the error table.

Every HubSpot call of the connector goes through `HubSpotTransport.call`, which
1. takes a slot from the portal's shared `SlidingWindowLimiter` (and from the
   search limiter for search calls) before the request,
2. makes the request through the SDK's own transport (urllib3 pools built once)
   with `_preload_content=False`, so the body is parsed with orjson instead of
   the SDK's model deserialization (about 1,250 records/s, the bottleneck of a
   full sync),
3. reads the X-HubSpot-RateLimit-* headers and corrects the shared limiter
   when the server knows better (another integration on the same portal, a
   lower tier than configured),
4. maps every failure onto connector.errors with ONE table (`classify`), and
5. retries RetryLater through the one policy, `call_with_retry`.

Tokens and personal data never reach a log line: only record ids, statuses,
HubSpot categories and correlation ids do.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
import redis
import urllib3
from hubspot import HubSpot
from hubspot.crm.associations.v4 import BasicApi as AssocBasicApi
from hubspot.crm.associations.v4 import BatchApi as AssocBatchApi
from hubspot.crm.associations.v4.exceptions import ApiException as AssociationsApiException
from hubspot.crm.contacts import BatchApi as ContactsBatchApi
from hubspot.crm.contacts import SearchApi as ContactsSearchApi
from hubspot.crm.contacts.exceptions import ApiException as ContactsApiException
from hubspot.crm.objects import BasicApi as ObjectsBasicApi
from hubspot.crm.objects import BatchApi as ObjectsBatchApi
from hubspot.crm.objects import SearchApi as ObjectsSearchApi
from hubspot.crm.objects.exceptions import ApiException as ObjectsApiException
from hubspot.crm.owners import OwnersApi
from hubspot.crm.owners.exceptions import ApiException as OwnersApiException
from hubspot.crm.properties import BatchApi as PropertiesBatchApi
from hubspot.crm.properties import CoreApi as PropertiesCoreApi
from hubspot.crm.properties import GroupsApi as PropertiesGroupsApi
from hubspot.crm.properties.exceptions import ApiException as PropertiesApiException
from hubspot.events import EventsApi
from hubspot.events.exceptions import ApiException as EventsApiException

from connector.crm.base import CallCounter
from connector.crm.limits import (
    DEFAULT_POLICY,
    RetryPolicy,
    SlidingWindowLimiter,
    call_with_retry,
    day_in,
    reset_words,
    utc_day,
)
from connector.errors import LeadscoreError, RecordError, RetryLater, StopSync
from connector.mappings.hubspot import Account

log = logging.getLogger(__name__)

# Each SDK sub-package has its own ApiException with no common base; these are
# the ones of the packages the adapter uses (their 401/403/404/5xx subclasses
# included). All carry `.status`, `.body` and `.headers`.
API_EXCEPTIONS: tuple[type[Exception], ...] = (
    ContactsApiException,
    ObjectsApiException,
    AssociationsApiException,
    OwnersApiException,
    PropertiesApiException,
    EventsApiException,
)

RATE_WINDOW_S = 10.0
# The account details API (PublicApiSpecs/Account/Account Info/.../v3/accountInfo.json,
# GET /account-info/v3/details): portalId and timeZone ("US/Eastern" in the spec's example).
# HubSpot's daily limit resets at midnight in that zone; the spec's private-app usage example
# (resetsAt 04:00Z for a US/Eastern portal in summer) shows the same.
ACCOUNT_DETAILS_PATH = "/account-info/v3/details"
PORTAL_CACHE_S = 86_400  # the portal's details, shared by the workers in Redis this long
DETAILS_RETRY_S = 600.0  # after the details could not be read, wait this long before asking again


@dataclass(slots=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: Any


class ApiError(LeadscoreError):
    """A refusal the caller may want to inspect before it becomes a RecordError (batch splitting)."""

    def __init__(self, status: int, body: Any, headers: Mapping[str, str]) -> None:
        super().__init__(f"HubSpot answered {status}")
        self.status = status
        self.body = body if isinstance(body, dict) else {}
        self.headers = headers

    @property
    def message(self) -> str:
        return str(self.body.get("message") or f"HubSpot answered {self.status}")

    @property
    def category(self) -> str:
        return str(self.body.get("category") or "")


def _parse_body(raw: bytes | str | None) -> Any:
    if not raw:
        return {}
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _not_json(raw)


def _not_json(raw: bytes | str) -> dict[str, Any]:
    return {"message": raw[:200].decode("utf-8", "replace") if isinstance(raw, bytes) else raw[:200]}


def _association_id(obj: dict[str, Any]) -> Any:
    """json object_hook: an association (`{"toObjectId": "123", "associationTypes": [...]}`) as its id."""
    to = obj.get("toObjectId")
    return obj if to is None else str(to)


def parse_associations(raw: bytes | str | None) -> Any:
    """The body of a v4 associations batch read with each `results[].to[]` entry reduced to its
    `toObjectId` as a string (the v4 spec's MultiAssociatedObjectWithLabel: toObjectId, associationTypes).

    The connector reads only the ids. A reply for 1,000 contacts of ten e-mails each (1 MB) parsed
    whole is 5.8 MB of dicts (an entry, its associationTypes list and that list's dict), 17.7 MB at
    the peak of orjson's parse: the largest transient of a worker's sync page (issue 16). Reduced while
    parsing, each entry's dicts are dropped as soon as they are built: 1.1 MB kept, 2.1 MB at the peak
    (tracemalloc, 2026-12-05). The price: 7.5 ms a reply instead of orjson's 4.8 (best of 20), for
    some 5 such calls per 1,000 contacts. It parses with the standard json module, whose object_hook
    orjson lacks.
    """
    if not raw:
        return {}
    try:
        return json.loads(raw, object_hook=_association_id)
    except ValueError:  # json.JSONDecodeError and undecodable bytes
        return _not_json(raw)


def _int(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        return int(float(value))
    except ValueError:
        return None


def _scopes_in(body: Mapping[str, Any]) -> list[str]:
    """Scope names a MISSING_SCOPES body mentions (errors[].context.required*Scopes)."""
    found: list[str] = []
    for err in body.get("errors") or []:
        context = err.get("context") if isinstance(err, dict) else None
        if not isinstance(context, dict):
            continue
        for key, value in context.items():
            if "scope" in key.lower() and isinstance(value, list):
                found.extend(str(v) for v in value if str(v) not in found)
    return found


# ----------------------------------------------------------------------------- the error table


def classify(
    status: int,
    body: Any,
    headers: Mapping[str, str],
    *,
    record_id: str | None = None,
    daily_reset: Callable[[], tuple[float, str]] | None = None,
) -> LeadscoreError:
    """THE table: a HubSpot status (and category) onto what the connector does about it.

    | status / category                     | error                                  |
    | 429 policyName DAILY                  | StopSync until the daily reset (the    |
    |                                       | portal's midnight: `daily_reset`)      |
    | 429 TEN_SECONDLY_ROLLING / other      | RetryLater(Retry-After or the interval), |
    |                                       | the shared limiter blocked as long      |
    | 401 (INVALID_AUTHENTICATION, expired) | StopSync: the token                    |
    | 403 MISSING_SCOPES                    | StopSync naming the scopes             |
    | 403 other                             | StopSync with HubSpot's message        |
    | 408, 5xx, 0 (TLS/transport)           | RetryLater                             |
    | 400, 404, 409, 422 and other 4xx      | ApiError (RecordError once attributed) |

    Connection errors and timeouts (urllib3 exceptions) are RetryLater too; see `HubSpotTransport.call`.
    """
    data: dict[str, Any] = body if isinstance(body, dict) else {}
    message = str(data.get("message") or "")
    category = str(data.get("category") or "")
    if status == 429:
        policy = str(data.get("policyName") or "")
        if policy == "DAILY":
            resume, when = daily_reset() if daily_reset else (utc_day(time.time())[1], "")
            return StopSync(
                "HubSpot's daily API limit for this portal is used up; syncing resumes after the daily reset "
                f"at {when or reset_words(resume, None)}.",
                resume_at=resume,
            )
        # Wait what the server says: Retry-After, else its window's length
        # (X-HubSpot-RateLimit-Interval-Milliseconds, sent with real 429s).
        # A 429 that states neither gets the policy's backoff instead.
        wait: float | None = None
        interval_ms = _int(headers, "X-HubSpot-RateLimit-Interval-Milliseconds")
        if interval_ms:
            wait = interval_ms / 1000
        retry_after = headers.get("Retry-After")
        if retry_after is not None:
            with contextlib.suppress(ValueError):
                wait = max(0.0, float(retry_after))
        return RetryLater(f"HubSpot rate limit ({policy or 'unknown policy'})", wait=wait, status=429)
    if status == 401:
        return StopSync(
            "HubSpot rejected the access token (401): set HUBSPOT_ACCESS_TOKEN to a valid private-app token."
        )
    if status == 403:
        if category == "MISSING_SCOPES" or "scope" in message.lower():
            scopes = _scopes_in(data)
            if scopes:
                names = ", ".join(scopes)
                return StopSync(
                    f"The HubSpot private app lacks the scope{'s' if len(scopes) > 1 else ''} {names}: "
                    "add it in the app's settings (Scopes) and use the new token."
                )
            return StopSync(
                "The HubSpot private app lacks a scope this call needs: compare its scopes with the "
                "connector's list (contacts, owners, schemas, timeline/events) and use the new token."
            )
        return StopSync(f"HubSpot refused access (403): {message or 'forbidden'}.")
    if status == 0 or status == 408 or status >= 500:
        return RetryLater(f"HubSpot answered {status}", status=status)
    if record_id is not None:
        return RecordError(record_id, message or f"HubSpot answered {status}")
    return ApiError(status, data, headers)


# ----------------------------------------------------------------------------- the transport


class Apis:
    """The SDK's API objects, built once (each discovery access builds a new urllib3 pool)."""

    def __init__(self, base_url: str, token: str) -> None:
        # The SDK's urllib3 retries skip POST and hide calls from our count:
        # no transport retries, ours (call_with_retry) instead.
        client = HubSpot(access_token=token, host=base_url, retry=urllib3.Retry(total=False))
        contacts = client.crm.contacts.basic_api
        self.contacts = contacts
        self.contacts_batch = ContactsBatchApi(api_client=contacts.api_client)
        self.contacts_search = ContactsSearchApi(api_client=contacts.api_client)
        objects = client.crm.objects.basic_api
        self.objects: ObjectsBasicApi = objects
        self.objects_batch = ObjectsBatchApi(api_client=objects.api_client)
        self.objects_search = ObjectsSearchApi(api_client=objects.api_client)
        assoc = client.crm.associations.v4.batch_api
        self.assoc_batch: AssocBatchApi = assoc
        self.assoc = AssocBasicApi(api_client=assoc.api_client)
        self.owners: OwnersApi = client.crm.owners.owners_api
        props = client.crm.properties.core_api
        self.properties: PropertiesCoreApi = props
        self.property_groups = PropertiesGroupsApi(api_client=props.api_client)
        self.properties_batch = PropertiesBatchApi(api_client=props.api_client)
        self.events: EventsApi = client.events.events_api
        self._clients = [
            contacts.api_client, objects.api_client, assoc.api_client, self.owners.api_client,
            props.api_client, self.events.api_client,
        ]
        self.contacts_client = contacts.api_client

    def close(self) -> None:
        for api_client in self._clients:
            api_client.rest_client.pool_manager.clear()
            api_client.close()


class _NoRetry(Exception):
    """Carries a RetryLater past call_with_retry for a call that must not be repeated blindly."""

    def __init__(self, inner: RetryLater) -> None:
        super().__init__(str(inner))
        self.inner = inner


# urllib3 failures after which the server surely did nothing (safe to repeat any call)
_NOT_SENT = (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError)


class HubSpotTransport:
    def __init__(
        self,
        *,
        base_url: str,
        token: str,
        redis_client: redis.Redis,
        account_name: str,
        limits: Account,
        timeout: float,
        policy: RetryPolicy = DEFAULT_POLICY,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.apis = Apis(self.base_url, token)
        self.timeout = timeout
        self.policy = policy
        prefix = f"leadscore:ratelimit:hubspot:{account_name}"
        self.limiter = SlidingWindowLimiter(
            redis_client, prefix, limit=limits.rate_per_10s, window=RATE_WINDOW_S, daily_limit=limits.daily,
            day=self._portal_day,
        )  # fmt: skip
        self._redis = redis_client
        self._details_key = f"leadscore:hubspot:{account_name}:details"
        self._details: dict[str, Any] | None = None
        self._zone: dt.tzinfo | None = ZoneInfo(limits.timezone) if limits.timezone else None
        self.limiter.zone = self._zone
        self._details_lock = threading.RLock()
        self._resolving = threading.local()
        self._details_retry_at = 0.0  # after a failed read, not asked again before this
        self.search_limiter = SlidingWindowLimiter(
            redis_client, f"{prefix}:search", limit=limits.search_per_second, window=1.0
        )
        # keep a few requests in hand for what we cannot see (other integrations' bursts)
        self.reserve = max(2, limits.rate_per_10s // 40)
        self.calls = CallCounter()

    def close(self) -> None:
        self.apis.close()

    # -- the portal's details and its day

    def account_details(self) -> dict[str, Any]:
        """The portal's account details (portalId, timeZone...), {} when they cannot be read now.

        Read once per account and shared through Redis for a day; the call is not counted against
        the day's budget (it finds out when the day ends).
        """
        if self._details is not None:
            return self._details
        with self._details_lock:
            if self._details is not None:
                return self._details
            if getattr(self._resolving, "on", False) or time.time() < self._details_retry_at:
                return {}  # asked from inside the call that reads them (a 429 DAILY on it), or failed lately
            cached = self._redis.get(self._details_key)
            if cached is not None:
                self._details = dict(orjson.loads(cached))
                return self._details
            self._resolving.on = True
            try:
                resp = self.call(
                    self.apis.contacts_client.call_api, ACCOUNT_DETAILS_PATH, "GET", auth_settings=["oauth2"],
                    count_daily=False,
                )  # fmt: skip
            except (ApiError, RetryLater, StopSync, RecordError) as exc:
                self._details_retry_at = time.time() + DETAILS_RETRY_S
                log.warning("hubspot account details unreadable (%s): the daily limit is taken to reset at "
                            "midnight UTC; set account.timezone in mappings/hubspot.yaml", type(exc).__name__)
                return {}
            finally:
                self._resolving.on = False
            details = resp.body if isinstance(resp.body, dict) else {}
            self._redis.set(self._details_key, orjson.dumps(details), ex=PORTAL_CACHE_S)
            self._details = details
            return details

    def portal_zone(self) -> dt.tzinfo | None:
        """The portal's time zone: account.timezone in the mapping, else the account details API's."""
        if self._zone is None:
            name = self.account_details().get("timeZone")
            if isinstance(name, str) and name:
                try:
                    self._zone = ZoneInfo(name)
                except (ZoneInfoNotFoundError, ValueError):
                    log.warning("hubspot portal time zone %r unknown here; the daily reset is taken at UTC midnight",
                                name)
                    self._zone = dt.UTC
                self.limiter.zone = self._zone
        return self._zone

    def _portal_day(self, now: float) -> tuple[float, float]:
        zone = self.portal_zone()
        return day_in(zone)(now) if zone is not None else utc_day(now)

    def _daily_reset(self) -> tuple[float, str]:
        """When the portal's daily limit resets, in epoch seconds and in words."""
        zone = self.portal_zone()
        at = (day_in(zone) if zone is not None else utc_day)(time.time())[1]
        return at, reset_words(at, zone)

    # -- one call

    def call(
        self,
        op: Callable[..., Any],
        *args: Any,
        search: bool = False,
        record_id: str | None = None,
        idempotent: bool = True,
        count_daily: bool = True,
        refusals: tuple[int, ...] = (),
        parse: Callable[[bytes | str | None], Any] = _parse_body,
        **kwargs: Any,
    ) -> Response:
        """Run one SDK operation (raw, orjson-parsed), with quotas, the error table and retries.

        idempotent=False (creating a task): repeated only when HubSpot surely
        did nothing (429, connection refused); after a timeout or a 5xx the
        RetryLater goes to the caller, whose own key decides.
        count_daily=False: not counted against the day's budget (reading the portal's time zone).
        refusals: statuses the caller handles itself, raised as ApiError instead of going through the table.
        parse: how a successful answer's body is parsed (errors' bodies always with orjson).
        """

        def attempt() -> Response:
            if search:
                self.search_limiter.acquire()
            self.limiter.acquire(count_daily=count_daily)
            self.calls.add()
            try:
                raw = op(*args, _preload_content=False, _request_timeout=self.timeout, **kwargs)
            except urllib3.exceptions.HTTPError as exc:  # timeouts, refused connections, broken reads
                later = RetryLater(f"HubSpot unreachable or slow ({type(exc).__name__})")
                if not idempotent and not isinstance(exc, _NOT_SENT):
                    raise _NoRetry(later) from None
                raise later from None
            except API_EXCEPTIONS as exc:
                status = int(getattr(exc, "status", 0) or 0)
                headers: Mapping[str, str] = getattr(exc, "headers", None) or {}
                body = _parse_body(getattr(exc, "body", None))
                if status in refusals:
                    raise ApiError(status, body, headers) from None
                error = classify(status, body, headers, record_id=record_id, daily_reset=self._daily_reset)
                log.info(
                    "hubspot %s on %s: status=%s category=%s correlationId=%s",
                    type(error).__name__, getattr(op, "__name__", "call"), status,
                    body.get("category") if isinstance(body, dict) else None,
                    body.get("correlationId") if isinstance(body, dict) else None,
                )
                if status == 429:
                    self.calls.pushed_back()
                if status == 429 and isinstance(error, StopSync) and error.resume_at:
                    # DAILY: every worker of the portal stops calling until the portal's midnight
                    self.limiter.stop_until(error.resume_at)
                if status == 429 and isinstance(error, RetryLater) and error.wait:
                    # everyone sharing the portal waits, not just this worker
                    self.limiter.block_for(error.wait)
                if not idempotent and isinstance(error, RetryLater) and status != 429:
                    raise _NoRetry(error) from None
                raise error from None
            try:
                data = raw.data
                response = Response(raw.status, raw.headers, parse(data))
            except urllib3.exceptions.HTTPError as exc:
                raise RetryLater(f"HubSpot response broken off ({type(exc).__name__})") from None
            finally:
                raw.release_conn()
            if not search:
                self._observe(response.headers)
            return response

        try:
            return call_with_retry(attempt, self.policy)
        except _NoRetry as wrapped:
            raise wrapped.inner from None

    def _observe(self, headers: Mapping[str, str]) -> None:
        """Correct the shared limiter from what the server says is left."""
        daily = _int(headers, "X-HubSpot-RateLimit-Daily")
        daily_left = _int(headers, "X-HubSpot-RateLimit-Daily-Remaining")
        if (
            daily and daily_left is not None and daily_left * 10 <= daily
            and self._zone is None and not getattr(self._resolving, "on", False)
        ):  # fmt: skip
            # The portal's day is nearly used up: learn when it ends while calls still go through
            # (once HubSpot answers DAILY, the account details cannot be read either).
            self.portal_zone()
        self._observe_window(headers)

    def _observe_window(self, headers: Mapping[str, str]) -> None:
        maximum = _int(headers, "X-HubSpot-RateLimit-Max")
        remaining = _int(headers, "X-HubSpot-RateLimit-Remaining")
        if maximum is None or remaining is None:
            return
        if 0 < maximum < self.limiter.limit:
            # a lower tier than the mapping says: believe the server
            log.warning("hubspot allows %s requests per window, not %s: using %s", maximum,
                        self.limiter.limit, maximum)
            self.limiter.limit = maximum
            self.reserve = max(2, maximum // 40)
        if remaining > self.reserve:
            return
        interval_ms = _int(headers, "X-HubSpot-RateLimit-Interval-Milliseconds") or int(RATE_WINDOW_S * 1000)
        # The server has fewer left than our own share keeps free: someone else
        # uses the portal too. Hold everyone back for the time that many slots
        # take to come free at the full rate.
        seconds = interval_ms / 1000 * (self.reserve - remaining + 1) / maximum
        self.limiter.block_for(min(seconds, interval_ms / 1000))
