"""The alerting core against real servers: an HTTP server on loopback for the webhook and for
Slack's Web API (slack_sdk's WebClient pointed at it), and aiosmtpd for email (plain + login,
and STARTTLS with a certificate made here). No client is mocked."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes
from email import policy as email_policy
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from integrity.alerts import (
    CHECK_FAILED,
    CHECK_RECOVERED,
    MAX_EXAMPLES,
    RUN_FAILED,
    AlertCursor,
    AlertDeliveryError,
    AlertMessage,
    CheckBatch,
    CheckOutcome,
    EmailDestination,
    SlackDestination,
    WebhookDestination,
    deliver,
    evaluate,
    run_tick,
    run_url,
    safe_origin,
)

SECRET_PATH = "/hooks/T0KEN-s3cret-path"


# --------------------------------------------------------------------------- servers


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class RecordingServer:
    """An HTTP server on a free loopback port that records requests and answers from a script."""

    statuses: list[int] = field(default_factory=list)
    default_status: int = 200
    body: bytes = b'{"ok": true}'
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> RecordingServer:
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with recorder.lock:
                    recorder.received.append(
                        Received("POST", self.path, dict(self.headers.items()), body)
                    )
                    status = recorder.statuses.pop(0) if recorder.statuses else None
                status = status or recorder.default_status
                payload = recorder.body if status < 400 else b'{"ok": false}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        return self

    @property
    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def posts(self) -> list[Received]:
        with self.lock:
            return list(self.received)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def http_server() -> Iterator[RecordingServer]:
    server = RecordingServer().start()
    yield server
    server.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MailRecorder:
    """aiosmtpd handler that keeps every message it is given."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], Message]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.messages.append(
            (
                envelope.mail_from,
                list(envelope.rcpt_tos),
                message_from_bytes(envelope.content, policy=email_policy.default),
            )
        )
        return "250 OK"


@dataclass
class MailServer:
    port: int
    recorder: MailRecorder
    logins: list[str]


def _authenticator(logins: list[str]):
    from aiosmtpd.smtp import AuthResult, LoginPassword

    def authenticate(server, session, envelope, mechanism, auth_data) -> AuthResult:
        if isinstance(auth_data, LoginPassword) and auth_data.password == b"smtp-pass-word":
            logins.append(auth_data.login.decode())
            return AuthResult(success=True)
        return AuthResult(success=False, handled=False)

    return authenticate


@contextmanager
def running_smtp() -> Iterator[MailServer]:
    """Plain SMTP with AUTH offered without TLS (a relay inside a private network)."""
    from aiosmtpd.controller import Controller

    recorder, logins, port = MailRecorder(), [], free_port()
    controller = Controller(
        recorder,
        hostname="127.0.0.1",
        port=port,
        authenticator=_authenticator(logins),
        auth_require_tls=False,
    )
    controller.start()
    try:
        yield MailServer(port, recorder, logins)
    finally:
        controller.stop()


@pytest.fixture
def smtp_server() -> Iterator[MailServer]:
    with running_smtp() as server:
        yield server


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made here (no network, no openssl binary)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


# --------------------------------------------------------------------------- messages


def outcome(
    passed: bool,
    record_id: int,
    severity: str = "ERROR",
    partition: str | None = "org-1",
    check: str = "missing_original",
) -> CheckOutcome:
    return CheckOutcome(
        asset="reconciliation_report",
        check=check,
        partition=partition,
        passed=passed,
        severity=severity,
        record_id=record_id,
        run_id=f"run-{record_id}",
        counts={"count": 3 if not passed else 0, "ratio": 0.25},
        examples=[f"documents/org-1/missing-{i}.pdf" for i in range(8)],
    )


def failed_message(**overrides: Any) -> AlertMessage:
    fields: dict[str, Any] = {
        "event": CHECK_FAILED,
        "check": "missing_original",
        "asset": "reconciliation_report",
        "partition": "org-1",
        "severity": "ERROR",
        "counts": {"count": 3000, "ratio": 0.3},
        "examples": [f"documents/org-1/{i}.pdf" for i in range(9)],
        "run_id": "abc123",
        "run_url": run_url("http://dagster.example:3000/", "abc123"),
    }
    fields.update(overrides)
    return AlertMessage(**fields)


def test_message_caps_examples_and_links_the_run() -> None:
    message = failed_message()
    body = message.to_json()
    assert len(body["examples"]) == MAX_EXAMPLES == 5
    assert body["examples"][0] == "documents/org-1/0.pdf"
    assert body["run_url"] == "http://dagster.example:3000/runs/abc123"
    assert {"event", "check", "asset", "partition", "severity", "counts", "examples"} <= set(body)
    assert body["event"] == "check_failed" and body["counts"] == {"count": 3000, "ratio": 0.3}
    text = message.text
    assert "missing_original" in text and "reconciliation_report" in text and "org-1" in text
    assert "severity: ERROR" in text and "count=3000" in text
    assert "documents/org-1/4.pdf" in text and "documents/org-1/5.pdf" not in text
    assert text.endswith("run: http://dagster.example:3000/runs/abc123")
    json.dumps(body)  # serialisable as is


def test_run_url_defaults_to_the_local_ui() -> None:
    assert run_url(None, "r1") == "http://localhost:3000/runs/r1"
    assert run_url("https://dagster.example/", None) is None


def test_run_failed_message_keeps_the_first_line_of_the_error() -> None:
    message = AlertMessage(
        event=RUN_FAILED,
        job="reconcile",
        partition="org-1",
        error="\nSQLite database /x.sqlite does not exist\nTraceback (most recent call last):\n  ...",
        run_id="r9",
        run_url=run_url(None, "r9"),
    )
    assert message.error == "SQLite database /x.sqlite does not exist"
    assert "Traceback" not in message.text
    assert message.subject == "integrity: run of reconcile failed [org-1]"
    assert message.to_json()["event"] == "run_failed"
    assert "run: http://localhost:3000/runs/r9" in message.text


# --------------------------------------------------------------------------- transitions


def test_pass_fail_stay_recover_fail_again() -> None:
    cursor = AlertCursor()
    events = []
    for passed, record_id in [(True, 1), (False, 2), (False, 3), (False, 4), (True, 5), (True, 6)]:
        transition, state = evaluate(cursor.failing.get("k"), outcome(passed, record_id))
        events.append(transition.event if transition else None)
        if state is None:
            cursor.failing.pop("k", None)
        else:
            cursor.failing["k"] = state
    assert events == [None, CHECK_FAILED, None, None, CHECK_RECOVERED, None]
    transition, _ = evaluate(None, outcome(False, 7))
    assert transition is not None and transition.event == CHECK_FAILED


def test_first_failure_alerts_and_warn_to_error_escalates_once() -> None:
    transition, state = evaluate(None, outcome(False, 1, severity="WARN"))
    assert transition.event == CHECK_FAILED and state == "WARN"
    transition, state = evaluate(state, outcome(False, 2, severity="ERROR"))
    assert transition.event == CHECK_FAILED and transition.previous_severity == "WARN"
    assert state == "ERROR"
    assert "escalated WARN -> ERROR" in transition.message(None).subject
    # Back to WARN: still failing, silent, remembered as ERROR so WARN -> ERROR cannot re-page.
    transition, state = evaluate(state, outcome(False, 3, severity="WARN"))
    assert transition is None and state == "ERROR"
    transition, state = evaluate(state, outcome(False, 4, severity="ERROR"))
    assert transition is None and state == "ERROR"


def _tick(
    cursor: AlertCursor,
    outcomes: list[CheckOutcome],
    accept: bool = True,
    max_messages: int = 20,
    hold_before: int | None = None,
) -> tuple[list[AlertMessage], Any]:
    sent: list[AlertMessage] = []

    def send(message: AlertMessage) -> bool:
        sent.append(message)
        return accept

    newest = max((o.record_id for o in outcomes), default=None)
    batch = CheckBatch("reconciliation_report:missing_original", outcomes, newest, hold_before)
    summary = run_tick(cursor, [batch], send, "http://ui:3000", max_messages)
    return sent, summary


def test_tick_alerts_once_per_partition_and_not_again_while_failing() -> None:
    cursor = AlertCursor()
    sent, _ = _tick(
        cursor, [outcome(False, 1, partition="org-1"), outcome(True, 2, partition="org-2")]
    )
    assert [(m.event, m.partition) for m in sent] == [(CHECK_FAILED, "org-1")]
    assert sent[0].run_url == "http://ui:3000/runs/run-1"
    assert cursor.after == {"reconciliation_report:missing_original": 2}
    sent, _ = _tick(cursor, [outcome(False, 3, partition="org-1")])
    assert sent == []
    sent, _ = _tick(cursor, [outcome(True, 4, partition="org-1")])
    assert [(m.event, m.partition) for m in sent] == [(CHECK_RECOVERED, "org-1")]
    assert cursor.failing == {}
    # The cursor survives JSON, and an unreadable one starts afresh.
    assert AlertCursor.from_json(cursor.to_json()) == cursor
    assert AlertCursor.from_json("{not json") == AlertCursor()


def test_only_the_newest_evaluation_of_a_key_counts_in_one_tick() -> None:
    cursor = AlertCursor()
    sent, _ = _tick(cursor, [outcome(True, 9), outcome(False, 5), outcome(False, 7)])
    assert sent == [] and cursor.failing == {}


def test_undelivered_transition_is_retried_next_tick() -> None:
    cursor = AlertCursor()
    sent, summary = _tick(
        cursor, [outcome(False, 1, partition="a"), outcome(False, 2, partition="b")], accept=False
    )
    assert len(sent) == 1 and len(summary.undelivered) == 1  # stops after the first failure
    assert cursor.failing == {} and cursor.after == {"reconciliation_report:missing_original": 0}
    sent, summary = _tick(
        cursor, [outcome(False, 1, partition="a"), outcome(False, 2, partition="b")]
    )
    assert [m.partition for m in sent] == ["a", "b"] and not summary.undelivered
    assert set(cursor.failing) == {
        "reconciliation_report|missing_original|a",
        "reconciliation_report|missing_original|b",
    }


def test_message_budget_defers_the_rest_without_losing_it() -> None:
    cursor = AlertCursor()
    outcomes = [outcome(False, i, partition=f"t{i}") for i in range(1, 6)]
    sent, summary = _tick(cursor, outcomes, max_messages=2)
    assert [m.partition for m in sent] == ["t1", "t2"] and summary.deferred == 1
    assert cursor.after["reconciliation_report:missing_original"] == 2
    sent, _ = _tick(cursor, outcomes[2:], max_messages=2)
    assert [m.partition for m in sent] == ["t3", "t4"]


def test_time_budget_defers_sends_once_spent() -> None:
    cursor = AlertCursor()
    sent: list[str | None] = []

    def slow_send(message: AlertMessage) -> bool:
        time.sleep(0.05)
        sent.append(message.partition)
        return True

    outcomes = [outcome(False, i, partition=f"t{i}") for i in range(1, 4)]
    batch = CheckBatch("reconciliation_report:missing_original", outcomes, 3)
    summary = run_tick(cursor, [batch], slow_send, None, max_messages=20, max_seconds=0.01)
    assert sent == ["t1"] and summary.deferred == 1
    assert cursor.after["reconciliation_report:missing_original"] == 1


def test_cursor_holds_before_an_evaluation_still_running() -> None:
    cursor = AlertCursor()
    sent, _ = _tick(cursor, [outcome(False, 5)], hold_before=3)
    assert len(sent) == 1 and cursor.after["reconciliation_report:missing_original"] == 2
    sent, _ = _tick(cursor, [outcome(False, 5)])  # read again: no repeat
    assert sent == []


# --------------------------------------------------------------------------- webhook


def test_webhook_posts_the_json_body(http_server: RecordingServer) -> None:
    WebhookDestination(http_server.base_url + SECRET_PATH).send(failed_message())
    [post] = http_server.posts
    assert post.path == SECRET_PATH
    assert post.headers["Content-Type"] == "application/json"
    body = post.json()
    assert body["event"] == "check_failed" and body["check"] == "missing_original"
    assert body["partition"] == "org-1" and len(body["examples"]) == 5
    assert body["run_url"].endswith("/runs/abc123") and "text" in body


def test_webhook_retries_5xx_with_backoff(http_server: RecordingServer) -> None:
    http_server.statuses = [503, 500]
    started = time.perf_counter()
    WebhookDestination(http_server.base_url + SECRET_PATH, backoff=0.05).send(failed_message())
    assert len(http_server.posts) == 3
    assert time.perf_counter() - started >= 0.05 + 0.1  # 0.05 then 0.1


def test_webhook_gives_up_with_a_line_that_hides_the_path(http_server: RecordingServer) -> None:
    http_server.default_status = 502
    url = http_server.base_url + SECRET_PATH + "?token=abc"
    with pytest.raises(AlertDeliveryError) as raised:
        WebhookDestination(url, attempts=3, backoff=0.01).send(failed_message())
    line = str(raised.value)
    assert len(http_server.posts) == 3
    assert "HTTP 502" in line and http_server.base_url in line
    assert "T0KEN" not in line and "hooks" not in line and "abc" not in line
    assert "\n" not in line


def test_webhook_4xx_is_not_retried(http_server: RecordingServer) -> None:
    http_server.default_status = 404
    with pytest.raises(AlertDeliveryError, match="HTTP 404"):
        WebhookDestination(http_server.base_url + SECRET_PATH, backoff=0.01).send(failed_message())
    assert len(http_server.posts) == 1


def test_webhook_connection_refused_is_retried_then_reported_without_the_url() -> None:
    url = f"http://user:pw@127.0.0.1:{free_port()}{SECRET_PATH}"
    with pytest.raises(AlertDeliveryError) as raised:
        WebhookDestination(url, attempts=2, backoff=0.01, timeout=2).send(failed_message())
    line = str(raised.value)
    assert "after 2 attempt(s)" in line and "127.0.0.1" in line
    assert "T0KEN" not in line and "pw" not in line and "user" not in line


def test_safe_origin_keeps_only_scheme_and_host() -> None:
    assert (
        safe_origin("https://u:p@hooks.example.com:8443/a/b?t=1")
        == "https://hooks.example.com:8443"
    )
    assert safe_origin("https://hooks.slack.com/services/T/B/X") == "https://hooks.slack.com"


def test_deliver_reports_each_destination_and_succeeds_if_one_took_it(
    http_server: RecordingServer,
) -> None:
    broken = WebhookDestination(f"http://127.0.0.1:{free_port()}{SECRET_PATH}", attempts=1)
    working = WebhookDestination(http_server.base_url + "/ok")
    lines: list[str] = []
    result = deliver([broken, working], failed_message(), log=lines.append)
    assert result.ok and len(http_server.posts) == 1
    assert result.delivered == [f"webhook {http_server.base_url}"]
    assert len(lines) == 1 and "T0KEN" not in lines[0] and "not delivered" in lines[0]
    assert not deliver([broken], failed_message()).ok


# --------------------------------------------------------------------------- Slack


def slack_client(server: RecordingServer, token: str = "xoxb-secret-token"):
    from dagster_slack import SlackResource

    client = SlackResource(token=token).get_client()
    client.base_url = server.base_url + "/api/"
    return client


def test_slack_posts_text_with_the_link_through_the_web_api(http_server: RecordingServer) -> None:
    http_server.body = b'{"ok": true, "channel": "C1", "ts": "1.0"}'
    SlackDestination(slack_client(http_server), "#data-ops").send(failed_message())
    [post] = http_server.posts
    assert post.path == "/api/chat.postMessage"
    assert post.headers["Authorization"] == "Bearer xoxb-secret-token"
    body = post.json()
    assert body["channel"] == "#data-ops"
    assert "missing_original" in body["text"]
    assert "http://dagster.example:3000/runs/abc123" in body["text"]


def test_slack_error_is_one_line_without_the_token(http_server: RecordingServer) -> None:
    http_server.body = b'{"ok": false, "error": "channel_not_found"}'
    with pytest.raises(AlertDeliveryError) as raised:
        SlackDestination(slack_client(http_server), "#nowhere").send(failed_message())
    line = str(raised.value)
    assert "channel_not_found" in line and "xoxb" not in line and "\n" not in line


def test_slack_retries_server_errors(http_server: RecordingServer) -> None:
    http_server.statuses = [500]
    http_server.body = b'{"ok": true, "channel": "C1", "ts": "1.0"}'
    SlackDestination(slack_client(http_server), "#data-ops").send(failed_message())
    assert len(http_server.posts) == 2


# --------------------------------------------------------------------------- email


def test_email_with_login_reaches_the_smtp_server(smtp_server: MailServer) -> None:
    destination = EmailDestination(
        host="127.0.0.1",
        port=smtp_server.port,
        sender="integrity@example.com",
        recipients=["ops@example.com", "oncall@example.com"],
        user="alerts",
        password="smtp-pass-word",
    )
    assert not destination.uses_starttls
    destination.send(failed_message())
    [(sender, recipients, email)] = smtp_server.recorder.messages
    assert smtp_server.logins == ["alerts"]
    assert sender == "integrity@example.com"
    assert recipients == ["ops@example.com", "oncall@example.com"]
    assert (
        email["Subject"]
        == "integrity: missing_original on reconciliation_report failed (ERROR) [org-1]"
    )
    body = email.get_payload(decode=True).decode()
    assert "count=3000" in body and "http://dagster.example:3000/runs/abc123" in body


def test_email_login_refused_is_one_line_without_the_password(smtp_server: MailServer) -> None:
    destination = EmailDestination(
        host="127.0.0.1",
        port=smtp_server.port,
        sender="integrity@example.com",
        recipients=["ops@example.com"],
        user="alerts",
        password="wrong-pass-word",
    )
    with pytest.raises(AlertDeliveryError) as raised:
        destination.send(failed_message())
    line = str(raised.value)
    assert "login refused" in line and "wrong-pass-word" not in line
    assert smtp_server.recorder.messages == []


def test_email_over_starttls(tmp_path: Path) -> None:
    from aiosmtpd.controller import Controller

    cert, key = self_signed(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    recorder, logins, port = MailRecorder(), [], free_port()
    controller = Controller(
        recorder,
        hostname="127.0.0.1",
        port=port,
        tls_context=server_context,
        require_starttls=True,
        authenticator=_authenticator(logins),
    )
    controller.start()
    try:
        plain = EmailDestination(
            host="127.0.0.1", port=port, sender="a@example.com", recipients=["b@example.com"]
        )
        with pytest.raises(AlertDeliveryError):  # the server insists on STARTTLS
            plain.send(failed_message())
        destination = EmailDestination(
            host="127.0.0.1",
            port=port,
            sender="a@example.com",
            recipients=["b@example.com"],
            user="alerts",
            password="smtp-pass-word",
            starttls=True,
            ssl_context=ssl.create_default_context(cafile=str(cert)),
        )
        destination.send(failed_message(event=CHECK_RECOVERED))
    finally:
        controller.stop()
    [(_, _, email)] = recorder.messages
    assert logins == ["alerts"]  # AUTH only after TLS (aiosmtpd's default)
    assert "recovered" in email["Subject"]


def test_email_starttls_follows_the_port() -> None:
    common = {"host": "h", "sender": "a@x", "recipients": ["b@x"]}
    assert EmailDestination(port=587, **common).uses_starttls
    assert not EmailDestination(port=25, **common).uses_starttls
    assert EmailDestination(port=2525, starttls=True, **common).uses_starttls
    assert not EmailDestination(port=587, starttls=False, **common).uses_starttls
