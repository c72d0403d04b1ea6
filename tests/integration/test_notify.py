"""Notifications over real sockets: a local SMTP server (aiosmtpd) and a local chat webhook server.

The SMTP server offers STARTTLS with a certificate from a test CA (trustme), as a
real submission server does; the notifier is given a context that trusts that CA.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Iterator
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import redis
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from connector.config import load_settings
from connector.errors import ConfigError
from connector.notify import Notification, Notifier, chat_payload, parse_smtp_url
from connector.routing.service import Router
from tests.conftest import free_port
from tests.integration.test_routing_redis import NOW, FakeCrm, Score, dump, make_config, make_reps

CA = trustme.CA()
SERVER_CERT = CA.issue_cert("127.0.0.1")


def client_context() -> ssl.SSLContext:
    """What the notifier uses to check the server: trusts the test CA (a real one trusts the system's CAs)."""
    ctx = ssl.create_default_context()
    CA.configure_trust(ctx)
    return ctx


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.encrypted: list[bool] = []  # per message: whether it came over TLS
        self.logins: list[tuple[bytes, bytes, bool]] = []  # (user, password, over TLS)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address.startswith("gone"):
            return "550 5.1.1 <" + address + ">: no such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        self.encrypted.append(session.ssl is not None)
        return "250 OK"

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        assert isinstance(data, LoginPassword)
        self.logins.append((data.login, data.password, session.ssl is not None))
        return AuthResult(success=data.password == b"s3cret")


def mail_server(*, starttls: bool, port: int | None = None) -> tuple[Controller, int, Inbox]:
    inbox = Inbox()
    port = port or free_port()
    tls: dict[str, Any] = {}
    if starttls:
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        SERVER_CERT.configure_cert(server_ctx)
        tls = {"tls_context": server_ctx}
    controller = Controller(
        inbox, hostname="127.0.0.1", port=port, authenticator=inbox.authenticate, auth_require_tls=False, **tls
    )
    controller.start()
    return controller, port, inbox


@pytest.fixture
def smtp() -> Iterator[tuple[str, Inbox]]:
    """A submission server that offers STARTTLS."""
    controller, port, inbox = mail_server(starttls=True)
    yield f"smtp://127.0.0.1:{port}?from=leads@corp.example", inbox
    controller.stop()


@pytest.fixture
def plain_smtp() -> Iterator[tuple[int, Inbox]]:
    """An old server that offers no STARTTLS at all."""
    controller, port, inbox = mail_server(starttls=False)
    yield port, inbox
    controller.stop()


class Hook:
    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.accepted: list[dict[str, Any]] = []  # the bodies answered with a 2xx: what the channel shows
        self.status = 200


@pytest.fixture
def webhook() -> Iterator[tuple[str, Hook]]:
    hook = Hook()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            body = json.loads(self.rfile.read(length))
            hook.bodies.append(body)
            if hook.status < 300:
                hook.accepted.append(body)
            self.send_response(hook.status)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hooks/sales", hook
    server.shutdown()
    server.server_close()


def note(key: str = "k1") -> Notification:
    return Notification(
        kind="assigned",
        key=key,
        subject="Hot lead: Anna Muster (Acme GmbH), score 87",
        text="Hot lead: please follow up now.",
        rep_email="d1@corp.example",
        rep_name="Rep d1",
        url="https://crm.test/contacts/1",
        facts={"Region": "DACH", "Score": "87"},
    )


def test_an_assignment_sends_one_email_and_one_chat_message_even_when_sent_twice(
    smtp: tuple[str, Inbox], webhook: tuple[str, Hook], redis_client: redis.Redis
) -> None:
    notifier = Notifier(
        smtp_url=smtp[0], chat_webhook_url=webhook[0], dedupe=redis_client, ssl_context=client_context()
    )
    first = notifier.send(note())
    second = notifier.send(note())
    notifier.close()
    assert [(r.channel, r.status) for r in first] == [("email", "sent"), ("chat", "sent")]
    assert [(r.channel, r.status) for r in second] == [("email", "duplicate"), ("chat", "duplicate")]
    [(sender, rcpts, raw)] = smtp[1].messages
    assert (sender, rcpts) == ("leads@corp.example", ["d1@corp.example"])
    mail = message_from_bytes(raw)
    assert mail["Subject"] == "Hot lead: Anna Muster (Acme GmbH), score 87"
    assert "https://crm.test/contacts/1" in mail.get_payload()
    [body] = webhook[1].bodies
    assert body["text"] == "Hot lead: Anna Muster (Acme GmbH), score 87"
    assert body["blocks"][0]["text"]["text"] == "*Hot lead: Anna Muster (Acme GmbH), score 87*"


def test_the_router_sends_exactly_one_email_and_chat_message_per_assignment(
    smtp: tuple[str, Inbox], webhook: tuple[str, Hook], redis_client: redis.Redis
) -> None:
    crm = FakeCrm(reps=make_reps())
    notifier = Notifier(
        smtp_url=smtp[0], chat_webhook_url=webhook[0], dedupe=redis_client, ssl_context=client_context()
    )
    router = Router(make_config(), redis_client, lambda _crm: crm, notifier, clock=lambda: NOW)
    for lead_id in ("1", "2"):
        lead = crm.add_lead(lead_id)
        for _ in range(3):  # a retried task, a duplicate webhook
            router.assign_hot_lead(lead, "contact", Score(), NOW)
    notifier.close()
    assert [rcpts for _, rcpts, _ in smtp[1].messages] == [["d1@corp.example"], ["d2@corp.example"]]
    assert len(webhook[1].bodies) == 2
    record = router.routing_record("hubspot:contact:1")[0]
    assert record["notifications"] == [
        {"kind": "assigned", "channels": [["email", "sent", "rep d1"], ["chat", "sent", "200"]]}
    ]
    assert "@corp.example" not in dump(redis_client)  # the rep's id is kept, never the address


def test_a_failing_channel_is_reported_and_not_retried(
    smtp: tuple[str, Inbox], webhook: tuple[str, Hook], redis_client: redis.Redis
) -> None:
    webhook[1].status = 500
    dead_smtp = f"smtp://127.0.0.1:{free_port()}?from=leads@corp.example"
    notifier = Notifier(smtp_url=dead_smtp, chat_webhook_url=webhook[0], dedupe=redis_client, timeout=2)
    results = notifier.send(note())
    assert [(r.channel, r.status) for r in results] == [("email", "failed"), ("chat", "failed")]
    assert results[0].detail.startswith("ConnectionRefusedError")
    assert results[1].detail == "webhook answered 500: ok"
    assert [r.status for r in notifier.send(note())] == ["duplicate", "duplicate"]
    assert len(webhook[1].bodies) == 1
    notifier.close()


def test_a_failing_channel_does_not_fail_the_assignment(redis_client: redis.Redis) -> None:
    crm = FakeCrm(reps=make_reps())
    notifier = Notifier(chat_webhook_url=f"http://127.0.0.1:{free_port()}/hook", dedupe=redis_client, timeout=2)
    router = Router(make_config(), redis_client, lambda _crm: crm, notifier, clock=lambda: NOW)
    d = router.assign_hot_lead(crm.add_lead("1"), "contact", Score(), NOW)
    notifier.close()
    assert (d.outcome, d.chosen, len(crm.tasks)) == ("assigned", "d1", 1)
    [entry] = router.routing_record("hubspot:contact:1")[0]["notifications"]
    assert entry["channels"][0][:2] == ["chat", "failed"]


def test_channels_switched_off_in_routing_yaml_or_not_configured_send_nothing() -> None:
    settings = load_settings({"LEADSCORE_SMTP_URL": "smtp://mail.test:2525?from=a@b.example"})
    assert Notifier.from_settings(settings, None).channels == ("email",)
    assert Notifier.from_settings(settings, None, email=False).channels == ()
    assert Notifier().send(note()) == []


def test_the_smtp_url_is_parsed_and_a_bad_one_names_the_variable_without_the_password() -> None:
    s = parse_smtp_url("smtps://user%40corp:p%2Fss@mail.test?from=leads@corp.example")
    assert (s.host, s.port, s.user, s.password, s.sender, s.mode) == (
        "mail.test",
        465,
        "user@corp",
        "p/ss",
        "leads@corp.example",
        "ssl",
    )
    assert parse_smtp_url("smtp://mail.test:587?starttls=true").mode == "starttls"
    with pytest.raises(ConfigError) as err:
        parse_smtp_url("http://user:secret@mail.test")
    assert "LEADSCORE_SMTP_URL" in str(err.value)
    assert "secret" not in str(err.value)
    with pytest.raises(ConfigError, match="unknown options: tls"):
        parse_smtp_url("smtp://mail.test?tls=1")


def test_the_chat_payload_is_slack_compatible_and_escaped() -> None:
    payload = chat_payload(note())
    assert set(payload) == {"text", "blocks"}
    assert [b["type"] for b in payload["blocks"]] == ["section", "section", "section", "context"]
    assert payload["blocks"][3]["elements"][0]["text"] == "<https://crm.test/contacts/1|Open in the CRM>"
    odd = chat_payload(Notification(kind="assigned", key="k", subject="R&D <ops>", text="x"))
    assert odd["blocks"][0]["text"]["text"] == "*R&amp;D &lt;ops&gt;*"


def _workers(client: redis.Redis, crm: FakeCrm, notifiers: list[Notifier]) -> list[Router]:
    """One worker's router per notifier (its own connections), all on one Redis."""
    return [Router(make_config(), client, lambda _crm: crm, n, clock=lambda: NOW) for n in notifiers]


def test_a_rep_gets_exactly_one_message_when_mail_and_chat_are_down_for_a_while(
    webhook: tuple[str, Hook], redis_client: redis.Redis
) -> None:
    hook_url, hook = webhook
    port = free_port()  # the mail server is down: nothing listens there yet
    hook.status = 503
    crm = FakeCrm(reps=make_reps())
    smtp_url = f"smtp://127.0.0.1:{port}?from=leads@corp.example"  # STARTTLS, as by default
    notifiers = [
        Notifier(smtp_url=smtp_url, chat_webhook_url=hook_url, timeout=2, ssl_context=client_context())
        for _ in range(2)
    ]
    first, second = _workers(redis_client, crm, notifiers)

    first.assign_hot_lead(crm.add_lead("1"), "contact", Score(), NOW)
    [entry] = first.routing_record("hubspot:contact:1")[0]["notifications"]
    assert [c[:2] for c in entry["channels"]] == [["email", "failed"], ["chat", "failed"]]
    assert "retrying in 30 s" in entry["channels"][0][2]
    t = time.time()
    assert second.send_notifications(t + 5) == {}, "not due before its backoff"
    assert second.send_notifications(t + 31) == {"failed": 2}, "still down at the first retry"

    controller, _, inbox = mail_server(starttls=True, port=port)  # both come back
    hook.status = 200
    try:
        done: list[dict[str, int]] = []
        sweeps = [threading.Thread(target=lambda r=r: done.append(r.send_notifications(t + 31 + 61)))
                  for r in (first, second)]  # fmt: skip
        for sweep in sweeps:
            sweep.start()
        for sweep in sweeps:
            sweep.join()
        assert sum(c.get("sent", 0) for c in done) == 2, done
        assert first.send_notifications(t + 24 * 3600) == {}
        first.assign_hot_lead(crm.get_leads("contact", ["1"])[0], "contact", Score(), NOW)  # a replayed task
    finally:
        controller.stop()
        for notifier in notifiers:
            notifier.close()
    assert [rcpts for _, rcpts, _ in inbox.messages] == [["d1@corp.example"]]
    assert inbox.encrypted == [True]
    assert "@corp.example" not in dump(redis_client)  # the outbox keeps the rep's id, never the address
    assert [body["text"] for body in hook.accepted] == ["Hot lead: Anna Muster1 (Acme GmbH), score 87"]
    assert len(hook.bodies) == 3, "two refused attempts, one accepted"


def test_a_sweep_counts_as_sent_only_what_it_sent_itself(redis_client: redis.Redis) -> None:
    from connector.notify import Channel, ChannelResult
    from connector.routing.outbox import Outbox

    class Flaky:
        channels: tuple[Channel, ...] = ("email", "chat")

        def __init__(self) -> None:
            self.down = True
            self.sent: list[tuple[str, Channel]] = []

        def skip_reason(self, note: Notification, channel: Channel) -> str | None:
            return None

        def deliver(self, note: Notification, channel: Channel) -> ChannelResult:
            if self.down:
                return ChannelResult(channel, "failed", "down")
            self.sent.append((note.key, channel))
            return ChannelResult(channel, "sent", f"rep {note.rep_id}")

    notifier = Flaky()
    mine, theirs = Outbox(redis_client, "t:", notifier), Outbox(redis_client, "t:", notifier)
    msg = Notification(kind="assigned", key="hubspot:contact:1|1|r0|assigned|d1", subject="s", text="t",
                       rep_email="d1@corp.example", rep_id="d1")  # fmt: skip
    t = 1_000_000.0
    assert [r.status for r in mine.send(msg, pending_key="p", round_=0, now=t)] == ["failed", "failed"]
    notifier.down = False
    other_sweep: dict[str, int] = {}

    def rebuild(_entry: object) -> Notification:
        if not other_sweep:  # another worker's sweep runs while this one rebuilds its first message
            other_sweep.update(theirs.send_due(lambda _e: msg, t + 31))
        return msg

    this_sweep = mine.send_due(rebuild, t + 31)

    assert other_sweep == {"sent": 2}
    assert this_sweep.get("sent", 0) == 0, this_sweep
    assert sorted(channel for _, channel in notifier.sent) == ["chat", "email"], "each channel exactly once"


def test_a_retry_is_not_sent_to_a_rep_who_lost_the_lead_meanwhile(
    webhook: tuple[str, Hook], redis_client: redis.Redis
) -> None:
    hook_url, hook = webhook
    hook.status = 503
    crm = FakeCrm(reps=make_reps())
    notifier = Notifier(chat_webhook_url=hook_url, timeout=2)
    [router] = _workers(redis_client, crm, [notifier])
    first = router.assign_hot_lead(crm.add_lead("1"), "contact", Score(), NOW)
    [moved] = router.check_sla(NOW + 31 * 60)  # d1 did not act: the lead goes to the next rep
    hook.status = 200

    counts = router.send_notifications(time.time() + 3600)
    notifier.close()

    assert (first.chosen, moved.chosen) == ("d1", "d2")
    assert counts == {"dropped": 1, "sent": 1}, "d1's message is superseded; d2's goes out"
    assert [b["text"].split(":")[0] for b in hook.accepted] == ["Hot lead reassigned to you"]


# --------------------------------------------------------------------------- SMTP transport security


def test_smtp_urls_upgrade_with_starttls_unless_they_say_otherwise() -> None:
    assert (parse_smtp_url("smtp://mail.test").mode, parse_smtp_url("smtp://mail.test").port) == ("starttls", 587)
    assert parse_smtp_url("smtp://u:p@mail.test:25").mode == "starttls"
    plain = parse_smtp_url("smtp://mail.test?starttls=false")
    assert (plain.mode, plain.port) == ("plain", 25)
    assert parse_smtp_url("smtps://mail.test").mode == "ssl"
    with pytest.raises(ConfigError, match="starttls= must be true or false"):
        parse_smtp_url("smtp://mail.test?starttls=maybe")


def test_smtp_with_credentials_logs_in_only_after_starttls(smtp: tuple[str, Inbox]) -> None:
    url = smtp[0].replace("smtp://", "smtp://leads%40corp.example:s3cret@")
    notifier = Notifier(smtp_url=url, ssl_context=client_context())
    [result] = notifier.send(note())
    assert (result.channel, result.status) == ("email", "sent")
    inbox = smtp[1]
    assert inbox.logins == [(b"leads@corp.example", b"s3cret", True)]
    assert inbox.encrypted == [True]


def test_a_server_without_starttls_gets_neither_the_password_nor_the_message(plain_smtp: tuple[int, Inbox]) -> None:
    port, inbox = plain_smtp
    notifier = Notifier(smtp_url=f"smtp://leads:s3cret@127.0.0.1:{port}?from=leads@corp.example", timeout=5)
    [result] = notifier.send(note())
    assert (result.channel, result.status) == ("email", "failed")
    assert result.detail == (
        f"the mail server at 127.0.0.1:{port} does not offer STARTTLS, so nothing was sent; "
        "use smtps:// or a server with STARTTLS (or ?starttls=false to send unencrypted)"
    )
    assert inbox.logins == []
    assert inbox.messages == []


def test_an_untrusted_certificate_is_refused_before_logging_in(smtp: tuple[str, Inbox]) -> None:
    url = smtp[0].replace("smtp://", "smtp://leads:s3cret@")
    [result] = Notifier(smtp_url=url, timeout=5).send(note())  # the system's CAs do not know the test CA
    assert (result.channel, result.status) == ("email", "failed")
    assert "certificate" in result.detail.lower()
    assert smtp[1].logins == []
    assert smtp[1].messages == []


def test_starttls_false_sends_unencrypted_when_the_url_says_so(plain_smtp: tuple[int, Inbox]) -> None:
    port, inbox = plain_smtp
    notifier = Notifier(smtp_url=f"smtp://127.0.0.1:{port}?from=leads@corp.example&starttls=false", timeout=5)
    assert [(r.channel, r.status) for r in notifier.send(note())] == [("email", "sent")]
    assert inbox.encrypted == [False]


def test_a_refused_recipient_is_reported_by_rep_id_without_the_address(
    smtp: tuple[str, Inbox], redis_client: redis.Redis
) -> None:
    gone = Notification(kind="assigned", key="k9", subject="s", text="t", rep_email="gone.rep@corp.example",
                        rep_id="0051", rep_name="Gone Rep")  # fmt: skip
    [result] = Notifier(smtp_url=smtp[0], ssl_context=client_context(), dedupe=redis_client).send(gone)
    assert (result.channel, result.status) == ("email", "failed")
    assert "gone.rep" not in result.detail
    assert "rep 0051" in result.detail
