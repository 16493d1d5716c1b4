"""MQTT (version 5, paho-mqtt 2): a persistent session subscribed to one topic filter.

The session outlives the connection (`clean_start` false, a session expiry), so QoS 1
messages published while the product is away wait in the broker. Messages are
acknowledged by hand after the sink has committed them. MQTT has no negative
acknowledgement: when a land fails the consumer disconnects, and the broker sends the
unacknowledged messages again when it reconnects. MQTT gives a message no lasting
identity (packet ids are reused), so the message id is `id_field` of the JSON payload when
configured and present; without it see `MqttSpec.dedupe`.
"""

from __future__ import annotations

import json
import queue
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
from dataproduct.errors import SourceError, SourceUnavailableError
from dataproduct.message_status import mark_connected

RECEIVE_MAXIMUM = 65535  # MQTT 5 limit on unacknowledged messages the broker may send us
BAD_CREDENTIALS = {0x86, 0x87, 0x8C}  # bad user name or password, not authorized, bad auth


class MqttSpec(BrokerSpec):
    """`{type: mqtt, host: broker, topic: "shops/+/orders", client_id: sales-eu-orders}`.

    `client_id` names the persistent session: keep it stable and unique per product and
    source. QoS 0 is at most once (nothing waits while the product is away).

    `dedupe` says what happens to a message without id (no `id_field`, or the payload
    lacks it). With `id` (default) it lands every time it arrives: two identical readings
    are two events, and a redelivery after a lost acknowledgement lands again (at least
    once). With `content` a SHA-256 of topic and payload is its id: identical messages
    within the retention land once.
    """

    type: Literal["mqtt"] = "mqtt"
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    topic: str = Field(min_length=1)
    qos: Literal[0, 1] = 1
    client_id: str | None = Field(default=None, min_length=1, max_length=64)
    username: str | None = None
    password: str | None = None
    id_field: str | None = None
    session_expiry_s: int = Field(default=7 * 86400, ge=60, le=0xFFFFFFFF)
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    connect_timeout_s: float = Field(default=5.0, gt=0, le=60)
    dedupe: Dedupe = "id"


class _Session:
    """What paho's network thread tells the consumer thread."""

    def __init__(self) -> None:
        self.inbox: queue.Queue[Any] = queue.Queue()
        self.connack: queue.Queue[Any] = queue.Queue()
        self.suback: queue.Queue[Any] = queue.Queue()
        self.lost = threading.Event()
        self.reason = "disconnected"


class MqttConnector(MessageConnector):
    """Lands the messages of an MQTT topic filter."""

    spec_class = MqttSpec

    @property
    def mqtt_spec(self) -> MqttSpec:
        """The spec, typed."""
        assert isinstance(self.spec, MqttSpec)
        return self.spec

    @property
    def client_id(self) -> str:
        """The session's client id: configured, or derived from product folder and source."""
        derived = f"dataproduct-{self.context.product_dir.name}-{self.name}"
        return self.mqtt_spec.client_id or derived

    def describe(self) -> dict[str, Any]:
        """Type, broker, topic, QoS and batching (never the credentials)."""
        spec = self.mqtt_spec
        return {
            **super().describe(),
            "host": spec.host,
            "port": spec.port,
            "topic": spec.topic,
            "qos": spec.qos,
            "batch_messages": spec.batch_messages,
            "batch_seconds": spec.batch_seconds,
        }

    def consume(self, sink: MessageSink, stop: threading.Event) -> None:
        """Receive, land and acknowledge micro-batches until `stop` is set."""
        session = _Session()
        client = self._client(session)
        try:
            self._connect(client, session)
            mark_connected(sink, True)
            self._receive(client, session, sink, stop)
        finally:
            mark_connected(sink, False)
            with suppress(Exception):
                client.disconnect()
            client.loop_stop()

    def _client(self, session: _Session) -> Any:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

        spec = self.mqtt_spec
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
            manual_ack=True,
        )
        if spec.username:
            password = self.secret(spec.password) if spec.password else None
            client.username_pw_set(self.secret(spec.username), password)
        client.on_connect = lambda _c, _u, _f, reason, _p: session.connack.put(reason)
        client.on_subscribe = lambda _c, _u, _m, reasons, _p: session.suback.put(reasons)
        client.on_message = lambda _c, _u, message: session.inbox.put(message)
        client.on_disconnect = lambda _c, _u, _f, reason, _p: self._lost(session, reason)
        return client

    @staticmethod
    def _lost(session: _Session, reason: Any) -> None:
        session.reason = str(reason)
        session.lost.set()

    def _connect(self, client: Any, session: _Session) -> None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        spec = self.mqtt_spec
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = spec.session_expiry_s
        properties.ReceiveMaximum = min(RECEIVE_MAXIMUM, max(spec.batch_messages, 20))
        try:
            client.connect(
                spec.host, spec.port, spec.keepalive_s, clean_start=False, properties=properties
            )
        except OSError as error:
            raise unavailable(self.name, f"cannot reach {spec.host}:{spec.port}", error) from None
        client.loop_start()
        reason = self._answer(session.connack, "the broker did not accept the connection")
        if reason.is_failure:
            if reason.value in BAD_CREDENTIALS:
                raise SourceError(
                    f"the MQTT broker refused the connection: {reason}",
                    where=f"sources.{self.name}.username",
                )
            raise unavailable(self.name, "the MQTT broker refused the connection", reason)
        client.subscribe(spec.topic, qos=spec.qos)
        granted = self._answer(session.suback, "the broker did not answer the subscription")
        if granted[0].is_failure:
            raise SourceError(
                f"the MQTT broker refused the subscription to '{spec.topic}': {granted[0]}",
                where=f"sources.{self.name}.topic",
            )

    def _answer(self, answers: queue.Queue[Any], what: str) -> Any:
        try:
            return answers.get(timeout=self.mqtt_spec.connect_timeout_s)
        except queue.Empty:
            raise SourceUnavailableError(what, where=f"sources.{self.name}") from None

    def _receive(
        self, client: Any, session: _Session, sink: MessageSink, stop: threading.Event
    ) -> None:
        batch: Batch[tuple[int, int]] = Batch(
            self.mqtt_spec.batch_messages, self.mqtt_spec.batch_seconds
        )
        while True:
            if batch.ready() or (stop.is_set() and batch.messages):
                sink.land(batch.messages)  # if it raises nothing is acknowledged
                for mid, qos in batch.handles:
                    client.ack(mid, qos)
                batch.clear()
            if stop.is_set():
                return
            if session.lost.is_set():
                cause = ConnectionError(session.reason)
                raise unavailable(self.name, "lost the MQTT broker", cause)
            try:
                received = session.inbox.get(timeout=batch.wait_s())
            except queue.Empty:
                continue
            batch.add(self._message(received), (received.mid, received.qos))

    def _message(self, received: Any) -> Message:
        topic: str = received.topic
        payload: bytes = received.payload
        found = self._payload_id(payload) if self.mqtt_spec.id_field else None
        if found is None:
            found = id_without_identity(self.mqtt_spec.dedupe, topic.encode(), payload)
        return Message(found, payload, {"topic": topic})

    def _payload_id(self, payload: bytes) -> str | None:
        with suppress(ValueError, RecursionError):  # the sink dead-letters what it cannot read
            record = json.loads(payload)
            if isinstance(record, dict) and record.get(self.mqtt_spec.id_field) is not None:
                return str(record[self.mqtt_spec.id_field])
        return None
