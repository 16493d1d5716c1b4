"""Broker message sources: NATS JetStream, RabbitMQ and MQTT.

Each connector receives messages in micro-batches (`batch_messages` messages or
`batch_seconds` after the first one, whichever comes first), hands a batch to the sink,
and acknowledges it only after the sink has committed it: at least once, with the sink
dropping ids it has already landed. A batch the sink refuses is not acknowledged (it is
negatively acknowledged where the broker allows it) and the error goes to the supervisor,
which reconnects with backoff.
"""

from __future__ import annotations

import hashlib
import time
from typing import Generic, Literal, TypeVar

from pydantic import Field

from dataproduct.connector import Message, SourceSpec
from dataproduct.errors import SourceUnavailableError
from dataproduct.message_store import NO_ID

Handle = TypeVar("Handle")

STOP_CHECK_S = 0.25  # how often a waiting consumer looks at the stop event

Dedupe = Literal["id", "content"]  # what identifies a message that has no id


class BrokerSpec(SourceSpec):
    """What every broker source has: it appends, in micro-batches."""

    mode: Literal["append"] = "append"
    batch_messages: int = Field(default=1000, ge=1, le=100_000)
    batch_seconds: float = Field(default=1.0, gt=0, le=3600)


def digest(*parts: bytes) -> str:
    """A message id made from its content (SHA-256, hex)."""
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(len(part).to_bytes(8, "big"))
        hasher.update(part)
    return hasher.hexdigest()


def id_without_identity(dedupe: Dedupe, *content: bytes) -> str:
    """The id of a message the broker and publisher gave none: a hash of its content when
    de-duplicating by content was chosen, else NO_ID (landed every time it arrives)."""
    return digest(*content) if dedupe == "content" else NO_ID


class Batch(Generic[Handle]):
    """Messages received since the last land, with what acknowledges each of them."""

    def __init__(self, max_messages: int, max_seconds: float) -> None:
        self.max_messages = max_messages
        self.max_seconds = max_seconds
        self.messages: list[Message] = []
        self.handles: list[Handle] = []
        self._first_at = 0.0

    def add(self, message: Message, handle: Handle) -> None:
        """Add one received message."""
        if not self.messages:
            self._first_at = time.monotonic()
        self.messages.append(message)
        self.handles.append(handle)

    def room(self) -> int:
        """How many more messages fit."""
        return self.max_messages - len(self.messages)

    def ready(self) -> bool:
        """Full, or its first message has waited `max_seconds`."""
        return bool(self.messages) and (self.room() <= 0 or self.wait_s() <= 0)

    def wait_s(self) -> float:
        """How long to wait for more before landing (a short poll when empty)."""
        if not self.messages:
            return STOP_CHECK_S
        left = self.max_seconds - (time.monotonic() - self._first_at)
        return max(0.0, min(left, STOP_CHECK_S))

    def clear(self) -> None:
        """Forget the messages (after they were landed and acknowledged)."""
        self.messages = []
        self.handles = []


def unavailable(source: str, what: str, error: BaseException) -> SourceUnavailableError:
    """A broker fault as the transient error the supervisor retries."""
    detail = str(error).strip() or type(error).__name__
    return SourceUnavailableError(f"{what}: {detail}", where=f"sources.{source}")
