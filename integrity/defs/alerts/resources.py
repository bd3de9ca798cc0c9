"""Where alerts go: the `alerts` resource, its destinations chosen by the environment.

A leaf (it imports no domain), so integrity.defs.resources can build it with the other
resources while the alert sensors, which import the jobs, import it too.
"""

# No `from __future__ import annotations` here, like the sensors that take this resource.

from typing import Any

import dagster as dg
from pydantic import Field

from integrity import settings
from integrity.alerts import (
    Destination,
    EmailDestination,
    SlackDestination,
    WebhookDestination,
)
from integrity.settings import Settings

ALERTS_RESOURCE = "alerts"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class AlertsResource(dg.ConfigurableResource):
    """Where alerts go. Any subset of destinations; secrets come from the environment (EnvVar)."""

    webhook_url: str | None = Field(
        default=None, description="Generic JSON webhook URL (a secret: never logged)."
    )
    slack_token: str | None = Field(default=None, description="Slack bot token (a secret).")
    slack_channel: str | None = Field(default=None, description="Slack channel, e.g. #data-ops.")
    slack_base_url: str | None = Field(
        default=None, description="Slack Web API base URL; unset means slack.com's."
    )
    smtp_host: str | None = Field(default=None, description="SMTP server host.")
    smtp_port: str | None = Field(default=None, description="SMTP port; unset means 25.")
    smtp_user: str | None = Field(default=None, description="SMTP login user; unset: no login.")
    smtp_password: str | None = Field(default=None, description="SMTP password (a secret).")
    smtp_starttls: str | None = Field(
        default=None, description="Force STARTTLS on (1) or off (0); unset: on for port 587."
    )
    email_from: str | None = Field(default=None, description="Sender address.")
    email_to: str | None = Field(default=None, description="Recipients, comma-separated.")
    ui_base_url: str | None = Field(
        default=None,
        description=f"Base URL of the Dagster UI for run links; unset means {settings.DEFAULT_UI_BASE_URL}.",
    )
    timeout: float = Field(default=5.0, description="Seconds per request to a destination.")
    attempts: int = Field(default=3, ge=1, description="Attempts per message and destination.")
    backoff: float = Field(default=0.5, ge=0, description="First retry pause, doubled each retry.")

    def destinations(self) -> tuple[list[Destination], list[str]]:
        """The usable destinations, and one line per destination that is only half configured."""
        found: list[Destination] = []
        problems: list[str] = []
        if self.webhook_url:
            found.append(
                WebhookDestination(
                    self.webhook_url,
                    timeout=self.timeout,
                    attempts=self.attempts,
                    backoff=self.backoff,
                )
            )
        if self.slack_token or self.slack_channel:
            if self.slack_token and self.slack_channel:
                found.append(SlackDestination(self._slack_client(), self.slack_channel))
            else:
                problems.append(
                    f"Slack needs both {settings.ENV_SLACK_TOKEN} and {settings.ENV_SLACK_CHANNEL}"
                )
        if self.smtp_host or self.email_to or self.email_from:
            email, problem = self._email()
            if email is not None:
                found.append(email)
            else:
                problems.append(problem)
        return found, problems

    def _slack_client(self) -> Any:
        from dagster_slack import SlackResource

        client = SlackResource(token=self.slack_token).get_client()
        client.timeout = max(1, round(self.timeout))
        if self.slack_base_url:
            client.base_url = self.slack_base_url.rstrip("/") + "/"
        return client

    def _email(self) -> tuple[EmailDestination | None, str]:
        recipients = [a.strip() for a in (self.email_to or "").split(",") if a.strip()]
        if not (self.smtp_host and self.email_from and recipients):
            return None, (
                f"email needs {settings.ENV_SMTP_HOST}, {settings.ENV_ALERT_EMAIL_FROM} and "
                f"{settings.ENV_ALERT_EMAIL_TO}"
            )
        try:
            port = int(self.smtp_port) if self.smtp_port else 25
        except ValueError:
            return None, f"{settings.ENV_SMTP_PORT} must be a port number"
        starttls = (self.smtp_starttls or "").strip().lower()
        if starttls and starttls not in _TRUE | _FALSE:
            return None, f"{settings.ENV_SMTP_STARTTLS} must be 1 or 0"
        return (
            EmailDestination(
                host=self.smtp_host,
                port=port,
                sender=self.email_from,
                recipients=recipients,
                user=self.smtp_user or None,
                password=self.smtp_password or None,
                starttls=(starttls in _TRUE) if starttls else None,
                timeout=self.timeout,
                attempts=min(self.attempts, 2),
                backoff=self.backoff,
            ),
            "",
        )


# The variable each field reads, as Settings names them.
_VARIABLES = {
    "webhook_url": settings.ENV_ALERT_WEBHOOK_URL,
    "slack_token": settings.ENV_SLACK_TOKEN,
    "slack_channel": settings.ENV_SLACK_CHANNEL,
    "smtp_host": settings.ENV_SMTP_HOST,
    "smtp_port": settings.ENV_SMTP_PORT,
    "smtp_user": settings.ENV_SMTP_USER,
    "smtp_password": settings.ENV_SMTP_PASSWORD,
    "smtp_starttls": settings.ENV_SMTP_STARTTLS,
    "email_from": settings.ENV_ALERT_EMAIL_FROM,
    "email_to": settings.ENV_ALERT_EMAIL_TO,
    "ui_base_url": settings.ENV_UI_BASE_URL,
}


def env_var_when_set(conf: Settings, name: str) -> dg.EnvVar | None:
    """EnvVar when the variable is set (resolved at run or tick time, shown as a variable name in
    the UI, never as its value), else None: the one `_from_env` of all the resources."""
    return dg.EnvVar(name) if conf.is_set(name) else None


def alerts_resource_from_env(conf: Settings | None = None) -> AlertsResource:
    """The destinations the environment names; nothing is contacted here."""
    conf = conf or Settings.from_env()
    return AlertsResource(**{f: env_var_when_set(conf, name) for f, name in _VARIABLES.items()})
