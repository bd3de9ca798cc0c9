"""Where alerts go: a JSON webhook, a Slack channel, an email list.

Every destination holds its secrets (the webhook URL, the Slack token, the SMTP password) and
never says them: its description and its errors name at most the scheme and host. A failed
send raises AlertDeliveryError with one line; `deliver` tries every destination and reports
which took the message, so one broken destination does not silence the others.
"""

from __future__ import annotations

import http.client
import json
import smtplib
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email import policy as email_policy
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

from integrity.alerts.message import AlertMessage
from integrity.errors import IntegrityError

if TYPE_CHECKING:
    from slack_sdk import WebClient

DEFAULT_TIMEOUT = 10.0
DEFAULT_ATTEMPTS = 3
DEFAULT_BACKOFF = 0.5
_MAX_BACKOFF = 8.0
_EMAIL_POLICY = email_policy.SMTP.clone(max_line_length=200)


class AlertDeliveryError(IntegrityError):
    """A destination did not take a message; the line names the destination, never its secret."""


class Destination(Protocol):
    name: str

    @property
    def description(self) -> str: ...

    def send(self, message: AlertMessage) -> None: ...


def safe_origin(url: str) -> str:
    """Scheme and host of a URL (no user, path, query or token): all a log may show of it."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparsable URL>"
    return f"{parts.scheme or '?'}://{host}{port}"


def _scrub(text: str, secrets: Sequence[str | None]) -> str:
    """One line with every secret replaced, in case a library echoed one."""
    line = " ".join(str(text).split())
    for secret in secrets:
        if secret:
            line = line.replace(secret, "***")
    return line


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return f"{type(exc.reason).__name__}: {exc.reason}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _pause(attempt: int, backoff: float) -> None:
    time.sleep(min(backoff * 2**attempt, _MAX_BACKOFF))


@dataclass
class WebhookDestination:
    """POSTs the message's JSON to a URL; retries 5xx, 429, timeouts and connection errors."""

    url: str = field(repr=False)
    timeout: float = DEFAULT_TIMEOUT
    attempts: int = DEFAULT_ATTEMPTS
    backoff: float = DEFAULT_BACKOFF
    name: str = "webhook"

    @property
    def description(self) -> str:
        return f"webhook {safe_origin(self.url)}"

    def send(self, message: AlertMessage) -> None:
        body = json.dumps(message.to_json()).encode()
        last = "no attempt made"
        for attempt in range(max(1, self.attempts)):
            if attempt:
                _pause(attempt - 1, self.backoff)
            request = urllib.request.Request(
                self.url,
                data=body,
                method="POST",
                headers={"Content-Type": "application/json", "User-Agent": "integrity-alerts"},
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    response.read()
                return
            except urllib.error.HTTPError as exc:
                last = _reason(exc)
                if exc.code < 500 and exc.code != 429:
                    break
            except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
                last = _reason(exc)
            except ValueError as exc:  # a URL urllib cannot use
                last = _reason(exc)
                break
        raise AlertDeliveryError(
            f"{self.description}: {_scrub(last, [self.url])} (after {attempt + 1} attempt(s))"
        )


@dataclass
class SlackDestination:
    """Posts the message's text to a channel through a slack_sdk WebClient (from dagster-slack)."""

    client: WebClient = field(repr=False)
    channel: str
    name: str = "slack"

    def __post_init__(self) -> None:
        from slack_sdk.http_retry.builtin_handlers import (
            RateLimitErrorRetryHandler,
            ServerErrorRetryHandler,
        )

        kinds = {type(handler) for handler in self.client.retry_handlers}
        extra = [ServerErrorRetryHandler(max_retry_count=2), RateLimitErrorRetryHandler(1)]
        self.client.retry_handlers.extend(h for h in extra if type(h) not in kinds)

    @property
    def description(self) -> str:
        return f"slack {self.channel}"

    def send(self, message: AlertMessage) -> None:
        from slack_sdk.errors import SlackApiError

        try:
            self.client.chat_postMessage(
                channel=self.channel, text=message.text, unfurl_links=False
            )
        except SlackApiError as exc:
            error = exc.response.get("error") if exc.response is not None else None
            status = getattr(exc.response, "status_code", "?")
            raise AlertDeliveryError(
                f"{self.description}: Slack said {error or 'an error'} (HTTP {status})"
            ) from None
        except Exception as exc:
            raise AlertDeliveryError(
                f"{self.description}: {_scrub(_reason(exc), [self.client.token])}"
            ) from None


@dataclass
class EmailDestination:
    """Sends a plain-text email through SMTP: STARTTLS on port 587 or when asked, implicit TLS on
    465, login when a user is set. Connection errors and 4xx replies are retried."""

    host: str
    sender: str
    recipients: list[str]
    port: int = 25
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    starttls: bool | None = None
    timeout: float = DEFAULT_TIMEOUT
    attempts: int = 2
    backoff: float = DEFAULT_BACKOFF
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False)
    name: str = "email"

    @property
    def uses_starttls(self) -> bool:
        return self.starttls if self.starttls is not None else self.port == 587

    @property
    def description(self) -> str:
        return f"email via {self.host}:{self.port} to {len(self.recipients)} recipient(s)"

    def build(self, message: AlertMessage) -> EmailMessage:
        # A longer line than the default 78, so a typical subject is not folded before its
        # first word (which some clients then show with a leading space).
        email = EmailMessage(policy=_EMAIL_POLICY)
        email["Subject"] = message.subject
        email["From"] = self.sender
        email["To"] = ", ".join(self.recipients)
        email["Date"] = formatdate(localtime=False, usegmt=True)
        email["Message-ID"] = make_msgid(domain=self.sender.rpartition("@")[2] or None)
        email.set_content(message.text + "\n")
        return email

    def _send_once(self, email: EmailMessage) -> None:
        context = self.ssl_context or ssl.create_default_context()
        if self.port == 465 and self.starttls is not True:
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                self.host, self.port, timeout=self.timeout, context=context
            )
        else:
            smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        with smtp:
            smtp.ehlo()
            if self.uses_starttls:
                smtp.starttls(context=context)
                smtp.ehlo()
            if self.user:
                smtp.login(self.user, self.password or "")
            smtp.send_message(email, from_addr=self.sender, to_addrs=self.recipients)

    def send(self, message: AlertMessage) -> None:
        email = self.build(message)
        last = "no attempt made"
        for attempt in range(max(1, self.attempts)):
            if attempt:
                _pause(attempt - 1, self.backoff)
            try:
                self._send_once(email)
                return
            except smtplib.SMTPAuthenticationError as exc:
                last = f"login refused ({exc.smtp_code})"
                break
            except smtplib.SMTPResponseException as exc:
                last = f"SMTP {exc.smtp_code} {exc.smtp_error!r}"
                if not 400 <= exc.smtp_code < 500:
                    break
            except smtplib.SMTPRecipientsRefused as exc:
                last = f"recipients refused: {', '.join(sorted(exc.recipients))}"
                break
            except (smtplib.SMTPException, OSError) as exc:
                last = _reason(exc)
        raise AlertDeliveryError(
            f"{self.description}: {_scrub(last, [self.password])} (after {attempt + 1} attempt(s))"
        )


@dataclass
class DeliveryResult:
    delivered: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """At least one destination took the message."""
        return bool(self.delivered)


def deliver(
    destinations: Sequence[Destination],
    message: AlertMessage,
    log: Callable[[str], None] | None = None,
) -> DeliveryResult:
    """Send to every destination; one line per failure through `log`, never an exception."""
    result = DeliveryResult()
    for destination in destinations:
        try:
            destination.send(message)
        except AlertDeliveryError as exc:
            line = str(exc)
        except Exception as exc:  # a destination must never take the sensor down
            line = f"{destination.description}: {type(exc).__name__}"
        else:
            result.delivered.append(destination.description)
            continue
        result.failures.append(line)
        if log is not None:
            log(f"alert {message.event} not delivered to {line}")
    return result
