"""Telling a rep about a hot lead, beyond the CRM task: e-mail over SMTP and a chat webhook.

Both channels are optional (configured by LEADSCORE_SMTP_URL and
LEADSCORE_CHAT_WEBHOOK_URL, switched in routing.yaml `notifications:`). A
channel that fails is reported in the result, never raised: the lead is
already assigned and the CRM task exists.

`deliver(note, channel)` makes one attempt on one channel and says how it went;
routing calls it through its outbox (connector.routing.outbox), which records
each message before it is sent, marks it sent after, and retries failures with
backoff, at most once per assignment across workers. `send(note)` is the plain
form without an outbox: each channel claims an idempotency key (in Redis when
given one) before it sends, so it is at most once and never retried.

LEADSCORE_SMTP_URL: smtp://user:password@host:port?from=leads@example.com
(user, password and port are optional). `smtp://` upgrades the connection
with STARTTLS before anything else is said (default port 587) and refuses a
server that does not offer it or whose certificate is not trusted: the
password and the message never travel unencrypted. `smtps://` is implicit
TLS (default port 465). Only `?starttls=false` sends in clear text (default
port 25), for a relay on the same host or network.

The chat message is Slack-compatible JSON: {"text": ..., "blocks": [...]}.
"""

from __future__ import annotations

import re
import smtplib
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formataddr, make_msgid
from typing import Any, Literal, Protocol
from urllib.parse import parse_qs, unquote, urlparse

import httpx
import redis

from connector.config import Settings
from connector.errors import ConfigError
from connector.routing.keys import remember

NotificationKind = Literal[
    "assigned", "reassigned_to_you", "reassigned_away", "escalated", "rehot", "existing_owner", "unassigned"
]
Channel = Literal["email", "chat"]
Status = Literal["sent", "skipped", "failed", "duplicate"]

DEDUPE_PREFIX = "leadscore:notify:"
DEDUPE_TTL_S = 30 * 24 * 3600


@dataclass(frozen=True, slots=True)
class Notification:
    """One message about one lead for one rep. `key` is unique per message; channels append their name."""

    kind: NotificationKind
    key: str
    subject: str
    text: str
    rep_email: str | None = None  # where the e-mail goes; never stored (results name `rep_id`)
    rep_name: str = ""
    url: str | None = None
    facts: Mapping[str, str] = field(default_factory=dict)
    chat: bool = True  # also post to the team's chat channel
    rep_id: str | None = None  # the rep's CRM id: what results and logs name instead of the address
    index: str | None = None  # a Redis set listing the keys kept about the lead (claims, outbox entries)


@dataclass(frozen=True, slots=True)
class ChannelResult:
    channel: Channel
    status: Status
    detail: str = ""


class NotifierLike(Protocol):
    @property
    def channels(self) -> tuple[Channel, ...]: ...

    def skip_reason(self, note: Notification, channel: Channel) -> str | None: ...

    def deliver(self, note: Notification, channel: Channel) -> ChannelResult: ...


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    sender: str
    user: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    mode: Literal["plain", "starttls", "ssl"] = "plain"


_BOOLS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def parse_smtp_url(url: str) -> SmtpSettings:
    """LEADSCORE_SMTP_URL into settings; a malformed value fails naming the variable (never echoing the password)."""
    parsed = urlparse(url)
    if parsed.scheme not in ("smtp", "smtps") or not parsed.hostname:
        raise ConfigError("LEADSCORE_SMTP_URL must look like smtp://user:password@host:port?from=address.")
    query = parse_qs(parsed.query)
    unknown = set(query) - {"from", "starttls"}
    if unknown:
        names = ", ".join(sorted(unknown))
        raise ConfigError(f"LEADSCORE_SMTP_URL has unknown options: {names} (known: from, starttls).")
    try:
        port = parsed.port
    except ValueError:
        raise ConfigError("LEADSCORE_SMTP_URL has a port that is not a number.") from None
    flag = query.get("starttls", ["true"])[0].lower()
    if flag not in _BOOLS:
        raise ConfigError(f"LEADSCORE_SMTP_URL: starttls= must be true or false, not {flag!r}.")
    mode: Literal["plain", "starttls", "ssl"] = (
        "ssl" if parsed.scheme == "smtps" else "starttls" if _BOOLS[flag] else "plain"
    )
    sender = query.get("from", [f"leadscore@{parsed.hostname}"])[0]
    if "@" not in sender:
        raise ConfigError("LEADSCORE_SMTP_URL: from= must be an e-mail address.")
    return SmtpSettings(
        host=parsed.hostname,
        port=port or {"ssl": 465, "starttls": 587, "plain": 25}[mode],
        sender=sender,
        user=unquote(parsed.username) if parsed.username else None,
        password=unquote(parsed.password) if parsed.password else None,
        mode=mode,
    )


def chat_payload(note: Notification) -> dict[str, Any]:
    """Slack-compatible message: `text` for clients without blocks, `blocks` for the rest."""
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*{_escape(note.subject)}*"}},
    ]
    if note.facts:
        blocks.append(
            {
                "type": "section",
                "fields": [{"type": "mrkdwn", "text": f"*{_escape(k)}*\n{_escape(v)}"} for k, v in note.facts.items()],
            }
        )
    blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _escape(note.text)[:2900]}})
    if note.url:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": f"<{note.url}|Open in the CRM>"}]})
    return {"text": note.subject, "blocks": blocks}


def _who(note: Notification) -> str:
    return f"rep {note.rep_id}" if note.rep_id else "the rep"


def without_address(text: str, note: Notification) -> str:
    """A message with the rep's address replaced by their id: results are kept in Redis."""
    if note.rep_email:
        text = re.sub(re.escape(note.rep_email), _who(note), text, flags=re.IGNORECASE)
    return text


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class Notifier:
    """E-mail and chat, each optional, each at most once per notification key."""

    def __init__(
        self,
        *,
        smtp_url: str | None = None,
        chat_webhook_url: str | None = None,
        dedupe: redis.Redis | None = None,
        email: bool = True,
        chat: bool = True,
        timeout: float = 10.0,
        http: httpx.Client | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.smtp = parse_smtp_url(smtp_url) if smtp_url and email else None
        # How the mail server's certificate is checked: the system's CAs unless given (tests: a test CA).
        self._ssl = ssl_context
        self.chat_url = chat_webhook_url if chat else None
        self.dedupe = dedupe
        self.timeout = timeout
        self._seen: set[str] = set()
        self._http = http
        self._own_http = http is None

    @classmethod
    def from_settings(
        cls, settings: Settings, dedupe: redis.Redis | None, *, email: bool = True, chat: bool = True
    ) -> Notifier:
        return cls(
            smtp_url=settings.smtp_url,
            chat_webhook_url=settings.chat_webhook_url,
            dedupe=dedupe,
            email=email,
            chat=chat,
        )

    @property
    def channels(self) -> tuple[Channel, ...]:
        out: list[Channel] = []
        if self.smtp is not None:
            out.append("email")
        if self.chat_url is not None:
            out.append("chat")
        return tuple(out)

    def skip_reason(self, note: Notification, channel: Channel) -> str | None:
        """Why this channel carries nothing for the note (None: it has something to send)."""
        if channel == "email":
            return None if note.rep_email else "no recipient address"
        return None if note.chat else "not posted to chat"

    def deliver(self, note: Notification, channel: Channel) -> ChannelResult:
        """One attempt on one configured channel, no idempotency key: the caller's outbox keeps count."""
        why = self.skip_reason(note, channel)
        if why is not None:
            return ChannelResult(channel, "skipped", why)
        if channel == "email" and self.smtp is not None:
            return self._email(self.smtp, note)
        if channel == "chat" and self.chat_url is not None:
            return self._chat(self.chat_url, note)
        return ChannelResult(channel, "skipped", "channel not configured")

    def send(self, note: Notification) -> list[ChannelResult]:
        results: list[ChannelResult] = []
        for channel in self.channels:
            if self.skip_reason(note, channel) is not None:
                results.append(self.deliver(note, channel))
            elif not self._claim(channel, note.key, note.index):
                results.append(ChannelResult(channel, "duplicate", "already sent for this key"))
            else:
                results.append(self.deliver(note, channel))
        return results

    def close(self) -> None:
        if self._http is not None and self._own_http:
            self._http.close()
            self._http = None

    # ------------------------------------------------------------------ channels

    def _claim(self, channel: Channel, key: str, index: str | None = None) -> bool:
        full = f"{DEDUPE_PREFIX}{channel}:{key}"
        if self.dedupe is not None:
            pipe = self.dedupe.pipeline(transaction=False)
            pipe.set(full, "1", nx=True, ex=DEDUPE_TTL_S)
            if index is not None:
                remember(pipe, index, [full])  # so a deletion of the lead finds the claim
            return bool(pipe.execute()[0])
        if full in self._seen:
            return False
        self._seen.add(full)
        return True

    def _email(self, smtp: SmtpSettings, note: Notification) -> ChannelResult:
        assert note.rep_email
        msg = EmailMessage()
        msg["Subject"] = note.subject
        msg["From"] = smtp.sender
        msg["To"] = formataddr((note.rep_name, note.rep_email)) if note.rep_name else note.rep_email
        msg["Message-ID"] = make_msgid(domain=smtp.sender.rsplit("@", 1)[1])
        body = note.text
        if note.url:
            body += f"\n\nOpen in the CRM: {note.url}\n"
        msg.set_content(body)
        context = self._ssl or ssl.create_default_context()
        try:
            client: smtplib.SMTP
            if smtp.mode == "ssl":
                client = smtplib.SMTP_SSL(smtp.host, smtp.port, timeout=self.timeout, context=context)
            else:
                client = smtplib.SMTP(smtp.host, smtp.port, timeout=self.timeout)
            with client:
                if smtp.mode == "starttls":
                    client.ehlo()
                    if not client.has_extn("starttls"):
                        return ChannelResult(
                            "email",
                            "failed",
                            f"the mail server at {smtp.host}:{smtp.port} does not offer STARTTLS, so nothing was "
                            "sent; use smtps:// or a server with STARTTLS (or ?starttls=false to send unencrypted)",
                        )
                    client.starttls(context=context)
                if smtp.user:
                    client.login(smtp.user, smtp.password or "")
                client.send_message(msg)
        except (OSError, smtplib.SMTPException) as exc:
            return ChannelResult("email", "failed", without_address(f"{type(exc).__name__}: {exc}", note)[:300])
        return ChannelResult("email", "sent", _who(note))

    def _chat(self, url: str, note: Notification) -> ChannelResult:
        if self._http is None:
            self._http = httpx.Client(timeout=self.timeout)
        try:
            resp = self._http.post(url, json=chat_payload(note), timeout=self.timeout)
        except httpx.HTTPError as exc:
            return ChannelResult("chat", "failed", f"{type(exc).__name__}: {exc}"[:300])
        if resp.status_code >= 300:
            said = without_address(f"webhook answered {resp.status_code}: {resp.text[:200]}", note)
            return ChannelResult("chat", "failed", said)
        return ChannelResult("chat", "sent", str(resp.status_code))
