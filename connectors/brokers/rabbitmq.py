"""RabbitMQ (AMQP 0-9-1): one durable queue, consumed with pika's blocking adapter.

The message id is the `message_id` property when the publisher set one. A message without
one has no identity: by default it is landed every time it arrives, so two identical
messages both land (see `RabbitMqSpec.dedupe`). A landed batch is acknowledged with one
`basic_ack(multiple=True)`; a batch the sink refuses is negatively acknowledged and
requeued.
"""

from __future__ import annotations

import logging
import threading
from contextlib import suppress
from typing import Any, Literal

from pydantic import Field

from connectors.brokers import (
    Batch,
    BrokerSpec,
    Dedupe,
    id_without_identity,
    unavailable,
)
from dataproduct.connector import Message, MessageConnector, MessageSink
from dataproduct.errors import SourceError
from dataproduct.message_status import mark_connected
from dataproduct.message_store import NO_ID
from dataproduct.secrets import mask_url

log = logging.getLogger("dataproduct.messages")

POLL_S = 0.1  # how long pika waits for a message before the loop looks at the clock
PRECONDITION_FAILED = 406
NOT_FOUND = 404
ACCESS_REFUSED = 403


class RabbitMqSpec(BrokerSpec):
    """`{type: rabbitmq, url: "amqp://app:${env:MQ_PASSWORD}@mq:5672/", queue: orders}`.

    The queue is declared durable if it does not exist. `prefetch` bounds the messages
    delivered but not yet acknowledged (default: `batch_messages`).

    `dedupe` says what happens to a message without `message_id`. With `id` (default) it
    lands every time it arrives: two identical messages are two events. The only way such
    a message arrives twice is a redelivery (`redelivered` flag) after its batch was
    committed but the connection was lost before the acknowledgement; it cannot be told
    apart from an identical message that never landed, so it is landed again (at least
    once: a rare duplicate rather than a silent loss) and logged. With `content` a SHA-256
    of the body is its id: identical bodies within the retention land once.
    """

    type: Literal["rabbitmq"] = "rabbitmq"
    url: str = "amqp://guest:guest@127.0.0.1:5672/"
    queue: str = Field(min_length=1, max_length=255)
    prefetch: int | None = Field(default=None, ge=1, le=65535)
    connect_timeout_s: float = Field(default=5.0, gt=0, le=60)
    dedupe: Dedupe = "id"


class RabbitMqConnector(MessageConnector):
    """Lands a RabbitMQ queue's messages."""

    spec_class = RabbitMqSpec

    @property
    def rabbit_spec(self) -> RabbitMqSpec:
        """The spec, typed."""
        assert isinstance(self.spec, RabbitMqSpec)
        return self.spec

    def describe(self) -> dict[str, Any]:
        """Type, URL (without password), queue and batching."""
        spec = self.rabbit_spec
        return {
            **super().describe(),
            "url": mask_url(spec.url),
            "queue": spec.queue,
            "batch_messages": spec.batch_messages,
            "batch_seconds": spec.batch_seconds,
        }

    def consume(self, sink: MessageSink, stop: threading.Event) -> None:
        """Receive, land and acknowledge micro-batches until `stop` is set."""
        import pika.exceptions

        connection = self._connect()
        try:
            channel = connection.channel()
            self._declare(channel)
            spec = self.rabbit_spec
            channel.basic_qos(prefetch_count=min(spec.prefetch or spec.batch_messages, 65535))
            mark_connected(sink, True)
            self._receive(channel, sink, stop)
        except pika.exceptions.ChannelClosedByBroker as error:
            raise self._refused(error) from None
        except (pika.exceptions.AMQPError, OSError) as error:
            raise unavailable(self.name, "lost the RabbitMQ connection", error) from None
        finally:
            mark_connected(sink, False)
            with suppress(Exception):  # closing requeues what was not acknowledged
                connection.close()

    def _connect(self) -> Any:
        import pika
        import pika.exceptions

        spec = self.rabbit_spec
        parameters = pika.URLParameters(self.secret(spec.url))
        parameters.connection_attempts = 1
        parameters.socket_timeout = spec.connect_timeout_s
        parameters.blocked_connection_timeout = 60
        parameters.client_properties = {"connection_name": f"dataproduct-{self.name}"}
        try:
            return pika.BlockingConnection(parameters)
        except (
            pika.exceptions.ProbableAuthenticationError,
            pika.exceptions.AuthenticationError,
            pika.exceptions.ProbableAccessDeniedError,
        ):
            raise SourceError(
                f"RabbitMQ at {mask_url(spec.url)} refused the credentials or the virtual host",
                where=f"sources.{self.name}.url",
            ) from None
        except (pika.exceptions.AMQPError, OSError) as error:
            raise unavailable(self.name, f"cannot reach {mask_url(spec.url)}", error) from None

    def _declare(self, channel: Any) -> None:
        channel.queue_declare(queue=self.rabbit_spec.queue, durable=True)

    def _refused(self, error: Any) -> SourceError:
        code = getattr(error, "reply_code", 0)
        text = getattr(error, "reply_text", str(error))
        if code in (PRECONDITION_FAILED, NOT_FOUND, ACCESS_REFUSED):
            return SourceError(
                f"RabbitMQ refused queue '{self.rabbit_spec.queue}': {text}",
                where=f"sources.{self.name}.queue",
            )
        return unavailable(self.name, "RabbitMQ closed the channel", error)

    def _receive(self, channel: Any, sink: MessageSink, stop: threading.Event) -> None:
        spec = self.rabbit_spec
        batch: Batch[int] = Batch(spec.batch_messages, spec.batch_seconds)
        try:
            for method, properties, body in channel.consume(
                spec.queue, inactivity_timeout=min(POLL_S, spec.batch_seconds)
            ):
                if method is not None:
                    message = self._message(properties, body, method.redelivered)
                    batch.add(message, method.delivery_tag)
                if batch.ready() or (stop.is_set() and batch.messages):
                    self._land(channel, sink, batch)
                if stop.is_set():
                    return
        finally:
            with suppress(Exception):
                channel.cancel()

    def _message(self, properties: Any, body: bytes, redelivered: bool) -> Message:
        headers = {str(k): str(v) for k, v in (properties.headers or {}).items()}
        if properties.message_id:
            return Message(properties.message_id, body, headers)
        found = id_without_identity(self.rabbit_spec.dedupe, body)
        if redelivered and found == NO_ID:
            log.warning("source %s: a redelivered message without message_id lands again "
                        "(a duplicate if its first delivery was committed)", self.name)  # fmt: skip
        return Message(found, body, headers)

    @staticmethod
    def _land(channel: Any, sink: MessageSink, batch: Batch[int]) -> None:
        """Land, then acknowledge the batch; requeue it if the land fails."""
        last = batch.handles[-1]
        try:
            sink.land(batch.messages)
        except BaseException:
            with suppress(Exception):
                channel.basic_nack(delivery_tag=last, multiple=True, requeue=True)
            raise
        channel.basic_ack(delivery_tag=last, multiple=True)
        batch.clear()
