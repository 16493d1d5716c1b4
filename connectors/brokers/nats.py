"""NATS JetStream: a durable pull consumer on one stream and subject.

nats-py is asyncio: `consume` runs its own event loop in the consumer thread. The message
id is the `Nats-Msg-Id` header when the publisher set one, else the stream sequence.
"""

from __future__ import annotations

import asyncio
import threading
from contextlib import suppress
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from connectors.brokers import Batch, BrokerSpec, unavailable
from dataproduct.connector import Message, MessageConnector, MessageSink
from dataproduct.errors import SourceError
from dataproduct.message_status import mark_connected
from dataproduct.secrets import mask_url

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext

MSG_ID_HEADER = "Nats-Msg-Id"


class NatsSpec(BrokerSpec):
    """`{type: nats, stream: ORDERS, subject: orders.>, durable: product-orders}`.

    The stream must exist; the durable consumer is created on first use. `token`, or a
    user and password in the URL, authenticate (write them as `${env:...}` references).
    """

    type: Literal["nats"] = "nats"
    url: str = "nats://127.0.0.1:4222"
    stream: str = Field(min_length=1)
    subject: str = Field(min_length=1)
    durable: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_-]+$")
    token: str | None = None
    ack_wait_s: float = Field(default=30.0, gt=0, le=3600)
    connect_timeout_s: float = Field(default=2.0, gt=0, le=60)


class NatsConnector(MessageConnector):
    """Lands a JetStream stream's messages through a durable pull consumer."""

    spec_class = NatsSpec

    @property
    def nats_spec(self) -> NatsSpec:
        """The spec, typed."""
        assert isinstance(self.spec, NatsSpec)
        return self.spec

    def describe(self) -> dict[str, Any]:
        """Type, URL (without password), stream, subject, consumer and batching."""
        spec = self.nats_spec
        return {
            **super().describe(),
            "url": mask_url(spec.url),
            "stream": spec.stream,
            "subject": spec.subject,
            "durable": spec.durable,
            "batch_messages": spec.batch_messages,
            "batch_seconds": spec.batch_seconds,
        }

    def consume(self, sink: MessageSink, stop: threading.Event) -> None:
        """Fetch, land and acknowledge micro-batches until `stop` is set."""
        asyncio.run(self._consume(sink, stop))

    async def _consume(self, sink: MessageSink, stop: threading.Event) -> None:
        lost: list[BaseException] = []  # the error (or the disconnection) that ended it
        client = await self._connect(lost)
        try:
            subscription = await self._subscribe(client.jetstream())
            mark_connected(sink, True)
            batch: Batch[Msg] = Batch(self.nats_spec.batch_messages, self.nats_spec.batch_seconds)
            while True:
                if batch.ready() or (stop.is_set() and batch.messages):
                    await self._land(client, sink, batch)
                if stop.is_set():
                    return
                if client.is_closed or lost:
                    cause = lost[0] if lost else ConnectionError("connection closed")
                    raise unavailable(self.name, "lost the NATS server", cause)
                await self._fetch(subscription, batch)
        finally:
            mark_connected(sink, False)
            with suppress(Exception):
                await client.close()

    async def _connect(self, lost: list[BaseException]) -> Client:
        import nats
        import nats.errors

        spec = self.nats_spec

        errors: list[Exception] = []

        async def on_error(error: Exception) -> None:
            errors[:] = [error]

        async def on_disconnect() -> None:
            lost.append(errors[-1] if errors else ConnectionError("disconnected"))

        try:
            return await nats.connect(
                servers=[self.secret(spec.url)],
                token=self.secret(spec.token) if spec.token else None,
                name=f"dataproduct-{self.name}",
                allow_reconnect=False,
                max_reconnect_attempts=1,  # 0 would try the first connection forever
                reconnect_time_wait=0,
                connect_timeout=spec.connect_timeout_s,
                ping_interval=5,
                max_outstanding_pings=2,
                error_cb=on_error,
                disconnected_cb=on_disconnect,
            )
        except (nats.errors.AuthorizationError, nats.errors.InvalidUserCredentialsError) as error:
            raise SourceError(
                f"NATS refused the credentials: {error}", where=f"sources.{self.name}.url"
            ) from None
        except (TimeoutError, nats.errors.Error, OSError) as error:
            raise unavailable(self.name, f"cannot reach {mask_url(spec.url)}", error) from None

    async def _subscribe(self, jetstream: JetStreamContext) -> JetStreamContext.PullSubscription:
        import nats.errors
        import nats.js.errors
        from nats.js.api import AckPolicy, ConsumerConfig

        spec = self.nats_spec
        config = ConsumerConfig(
            durable_name=spec.durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=spec.ack_wait_s,
            max_ack_pending=max(1000, 2 * spec.batch_messages),
        )
        try:
            return await jetstream.pull_subscribe(
                spec.subject, durable=spec.durable, stream=spec.stream, config=config
            )
        except nats.js.errors.NotFoundError:
            raise SourceError(
                f"the JetStream stream '{spec.stream}' does not exist",
                where=f"sources.{self.name}.stream",
            ) from None
        except nats.js.errors.BadRequestError as error:
            raise SourceError(
                f"JetStream refused the consumer '{spec.durable}': {error.description}",
                where=f"sources.{self.name}",
            ) from None
        except (TimeoutError, nats.errors.Error, OSError) as error:
            raise unavailable(self.name, "cannot create the JetStream consumer", error) from None

    async def _fetch(
        self, subscription: JetStreamContext.PullSubscription, batch: Batch[Msg]
    ) -> None:
        import nats.errors

        try:
            received = await subscription.fetch(
                batch=batch.room(), timeout=max(batch.wait_s(), 0.05)
            )
        except TimeoutError:  # nats.errors.TimeoutError is one too
            return
        except (nats.errors.Error, OSError) as error:
            raise unavailable(self.name, "fetching from JetStream failed", error) from None
        for msg in received:
            batch.add(self._message(msg), msg)

    @staticmethod
    def _message(msg: Msg) -> Message:
        headers = dict(msg.headers or {})
        found = headers.get(MSG_ID_HEADER)
        return Message(found or str(msg.metadata.sequence.stream), msg.data, headers)

    async def _land(self, client: Client, sink: MessageSink, batch: Batch[Msg]) -> None:
        """Land, then acknowledge; negatively acknowledge everything if the land fails."""
        try:
            await asyncio.to_thread(sink.land, batch.messages)
        except BaseException:
            for msg in batch.handles:
                with suppress(Exception):
                    await msg.nak()
            raise
        await self._acknowledge(client, batch)
        batch.clear()

    async def _acknowledge(self, client: Client, batch: Batch[Msg]) -> None:
        import nats.errors

        try:
            for msg in batch.handles:
                await msg.ack()
            await client.flush(timeout=5)
        except (TimeoutError, nats.errors.Error, OSError) as error:
            # the rows are committed; JetStream delivers again and the sink skips them
            raise unavailable(self.name, "acknowledging to JetStream failed", error) from None
