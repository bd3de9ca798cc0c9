"""The few SQS calls the event sensors make on one queue, with readable errors."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from integrity.errors import QueueError

SQS_BATCH = 10


@dataclass(frozen=True)
class InboxMessage:
    """One received SQS message."""

    message_id: str
    receipt_handle: str
    body: str
    receive_count: int = 1


def queue_name(url: str) -> str:
    """The queue's name, safe to print."""
    return url.rstrip("/").rsplit("/", 1)[-1]


def _client_error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", "error"))
    return type(exc).__name__


@dataclass
class DeleteOutcome:
    deleted: int = 0
    gone: int = 0  # receipt handles SQS no longer accepts: the message will be received again
    retry: list[str] = field(default_factory=list)  # handles to try again next tick
    errors: list[str] = field(default_factory=list)


class SqsInbox:
    """The few SQS calls a sensor makes on one queue, with readable errors."""

    def __init__(self, client: Any, queue_url: str, *, visibility_timeout: int = 600) -> None:
        self.client = client
        self.queue_url = queue_url
        self.visibility_timeout = visibility_timeout

    @property
    def name(self) -> str:
        return queue_name(self.queue_url)

    def receive(
        self, *, batches: int, deadline: float, wait_seconds: int = 0
    ) -> list[InboxMessage]:
        """Up to `batches` receives of 10 messages, stopping early on an empty answer or the deadline.

        Each message stays invisible to other receivers for the visibility timeout, which must
        cover the time until the next tick deletes it; when it expires first, the message comes
        back and is requested again under the same run key (harmless).
        """
        out: list[InboxMessage] = []
        seen: set[str] = set()
        for number in range(batches):
            if number and time.monotonic() >= deadline:
                break
            try:
                response = self.client.receive_message(
                    QueueUrl=self.queue_url,
                    MaxNumberOfMessages=SQS_BATCH,
                    VisibilityTimeout=self.visibility_timeout,
                    WaitTimeSeconds=wait_seconds if number == 0 else 0,
                    MessageSystemAttributeNames=["ApproximateReceiveCount"],
                )
            except Exception as exc:
                if out:
                    break  # keep what was received; the next tick continues
                raise QueueError(
                    f"receiving from SQS queue {self.name} failed: {_client_error_code(exc)}"
                ) from None
            messages = response.get("Messages", [])
            for m in messages:
                if m["MessageId"] in seen:
                    continue
                seen.add(m["MessageId"])
                count = m.get("Attributes", {}).get("ApproximateReceiveCount", "1")
                out.append(
                    InboxMessage(
                        m["MessageId"],
                        m["ReceiptHandle"],
                        m.get("Body", ""),
                        int(count) if str(count).isdigit() else 1,
                    )
                )
            if not messages:
                break
        return out

    def delete(self, handles: Sequence[str]) -> DeleteOutcome:
        """Delete by receipt handle, 10 a request. Handles SQS rejects are counted as gone."""
        outcome = DeleteOutcome()
        handles = list(dict.fromkeys(handles))
        for start in range(0, len(handles), SQS_BATCH):
            chunk = handles[start : start + SQS_BATCH]
            entries = [{"Id": str(i), "ReceiptHandle": h} for i, h in enumerate(chunk)]
            try:
                response = self.client.delete_message_batch(
                    QueueUrl=self.queue_url, Entries=entries
                )
            except Exception as exc:
                outcome.retry.extend(chunk)
                outcome.errors.append(_client_error_code(exc))
                continue
            outcome.deleted += len(response.get("Successful", []))
            for failed in response.get("Failed", []):
                handle = chunk[int(failed["Id"])]
                if failed.get("SenderFault", True):
                    outcome.gone += 1
                else:
                    outcome.retry.append(handle)
                outcome.errors.append(failed.get("Code", "error"))
        return outcome

    def send(self, body: str, *, reason: str, source_id: str) -> None:
        """Send a copy of a message (to a dead-letter queue) with the reason as an attribute."""
        kwargs: dict[str, Any] = {
            "QueueUrl": self.queue_url,
            "MessageBody": body if body else "(empty)",
            "MessageAttributes": {
                "integrity.reason": {"DataType": "String", "StringValue": reason[:1000]},
                "integrity.source_message_id": {"DataType": "String", "StringValue": source_id},
            },
        }
        if self.queue_url.endswith(".fifo"):
            kwargs.update(MessageGroupId="integrity-dead-letters", MessageDeduplicationId=source_id)
        try:
            self.client.send_message(**kwargs)
        except Exception as exc:
            raise QueueError(
                f"sending to SQS queue {self.name} failed: {_client_error_code(exc)}"
            ) from None
