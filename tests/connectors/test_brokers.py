"""Broker message sources against the real NATS JetStream, RabbitMQ and Mosquitto.

Each test uses its own stream, queue or topic; outages are staged on brokers the tests
start themselves (or on a proxy in front of the shared RabbitMQ), never on the shared ones.
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pika
import pytest
from paho.mqtt.client import Client as MqttClient
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from dataproduct.connector import Message, MessageConnector, SourceContext, build_connector
from dataproduct.descriptor import SourceConfig
from dataproduct.errors import DataproductError, DescriptorError, SourceUnavailableError
from dataproduct.messages import InputSink, MessageSupervisor, parse_records
from dataproduct.settings import DataproductSettings
from pipelines.runtime import ProductRuntime
from tests.connectors.broker_servers import (
    MosquittoServer,
    NatsServer,
    TcpProxy,
    mosquitto_server,
    nats_server,
    rabbit_proxy,
    require_service,
)
from tests.server.conftest import free_port

__all__ = ["mosquitto_server", "nats_server", "rabbit_proxy"]  # fixtures used by name

WAIT_S = 15.0
BATCHING = {"batch_messages": 16, "batch_seconds": 0.2}
Published = Sequence[tuple[str | None, bytes]]  # (id, body); None: published without id


def record(seq: int) -> dict[str, Any]:
    """The record of message `m-<seq>`."""
    return {"msg_id": f"m-{seq}", "seq": seq, "name": f"item {seq}", "price": seq * 1.5}


def messages(seqs: Sequence[int]) -> list[tuple[str, bytes]]:
    """(id, body) of one single-record message per seq."""
    return [(f"m-{s}", json.dumps(record(s)).encode()) for s in seqs]


# the brokers ------------------------------------------------------------------------------


class NatsHarness:
    """A stream and a subject of its own on a NATS server."""

    kind = "nats"

    def __init__(self, url: str = "nats://127.0.0.1:4222") -> None:
        tag = uuid.uuid4().hex[:10]
        self.url = url
        self.stream = f"DPT_{tag}"
        self.subject = f"dpt.{tag}"
        self.durable = f"dpt_{tag}"
        self._run(self._create())

    def options(self) -> dict[str, Any]:
        """The source's options."""
        return {"type": "nats", "url": self.url, "stream": self.stream,
                "subject": self.subject, "durable": self.durable, "ack_wait_s": 2}  # fmt: skip

    def publish(self, published: Published) -> None:
        """Publish with Nats-Msg-Id headers (JetStream keeps duplicates only 100 ms)."""
        self._run(self._publish(published))

    def cleanup(self) -> None:
        """Delete the stream."""
        self._run(self._delete())

    @staticmethod
    def _run(work: Any) -> None:
        asyncio.run(work)

    async def _create(self) -> None:
        import nats
        from nats.js.api import StreamConfig

        client = await nats.connect(self.url)
        config = StreamConfig(name=self.stream, subjects=[self.subject], duplicate_window=0.1)
        await client.jetstream().add_stream(config)
        await client.close()

    async def _publish(self, published: Published) -> None:
        import nats

        client = await nats.connect(self.url, connect_timeout=5)
        jetstream = client.jetstream()
        for msg_id, body in published:
            headers = {"Nats-Msg-Id": msg_id} if msg_id else None
            await jetstream.publish(self.subject, body, headers=headers)
        await client.close()

    async def _delete(self) -> None:
        import nats

        client = await nats.connect(self.url)
        await client.jetstream().delete_stream(self.stream)
        await client.close()


class RabbitHarness:
    """A durable queue of its own on RabbitMQ (reached through `port`)."""

    kind = "rabbitmq"

    def __init__(self, port: int = 5672) -> None:
        self.port = port
        self.queue = f"dpt-{uuid.uuid4().hex[:10]}"
        with self._channel() as channel:
            channel.queue_declare(self.queue, durable=True)

    def options(self) -> dict[str, Any]:
        """The source's options."""
        url = f"amqp://guest:guest@127.0.0.1:{self.port}/"
        return {"type": "rabbitmq", "url": url, "queue": self.queue}

    def publish(self, published: Published) -> None:
        """Persistent messages, with a message_id property unless the id is None (straight
        to the broker)."""
        with self._channel() as channel:
            for msg_id, body in published:
                properties = pika.BasicProperties(message_id=msg_id, delivery_mode=2)
                channel.basic_publish("", self.queue, body, properties)

    def cleanup(self) -> None:
        """Delete the queue."""
        with self._channel() as channel:
            channel.queue_delete(self.queue)

    @contextmanager
    def _channel(self) -> Iterator[Any]:
        connection = pika.BlockingConnection(
            pika.URLParameters("amqp://guest:guest@127.0.0.1:5672/")
        )
        try:
            yield connection.channel()
        finally:
            connection.close()


class MqttHarness:
    """A topic and a session of its own on an MQTT broker."""

    kind = "mqtt"

    def __init__(self, port: int = 1883) -> None:
        tag = uuid.uuid4().hex[:10]
        self.port = port
        self.topic = f"dpt/{tag}"
        self.client_id = f"dpt-{tag}"

    def options(self) -> dict[str, Any]:
        """The source's options (ids from the payload's msg_id)."""
        return {
            "type": "mqtt",
            "port": self.port,
            "topic": self.topic,
            "client_id": self.client_id,
            "id_field": "msg_id",
            "session_expiry_s": 120,
        }

    def publish(self, published: Published) -> None:
        """QoS 1, each one acknowledged by the broker."""
        client = self._client()
        client.connect("127.0.0.1", self.port)
        client.loop_start()
        try:
            for _, body in published:
                client.publish(self.topic, body, qos=1).wait_for_publish(5)
        finally:
            client.disconnect()
            client.loop_stop()

    def cleanup(self) -> None:
        """End the consumer's persistent session."""
        client = self._client(self.client_id)
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = 0
        client.connect("127.0.0.1", self.port, clean_start=True, properties=properties)
        client.loop_start()
        time.sleep(0.1)
        client.disconnect()
        client.loop_stop()

    @staticmethod
    def _client(client_id: str = "") -> MqttClient:
        return MqttClient(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5
        )


Harness = NatsHarness | RabbitHarness | MqttHarness
SHARED_PORTS = {"nats": (4222, "NATS"), "rabbitmq": (5672, "RabbitMQ"), "mqtt": (1883, "Mosquitto")}


@pytest.fixture(params=["nats", "rabbitmq", "mqtt"])
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    """A stream/queue/topic of this test's own on each shared broker."""
    port, name = SHARED_PORTS[request.param]
    require_service(port, name)
    made: Harness = {"nats": NatsHarness, "rabbitmq": RabbitHarness, "mqtt": MqttHarness}[
        request.param
    ]()
    yield made
    made.cleanup()


# the product and its consumer -------------------------------------------------------------


def open_product(
    tmp_path: Path, settings: DataproductSettings, source: dict[str, Any], **extra: Any
) -> ProductRuntime:
    """A product whose one source `events` is `source` (JSON is YAML)."""
    product = tmp_path / "product"
    product.mkdir(exist_ok=True)
    descriptor = {
        "name": "broker-events",
        "domain": "tests",
        "version": "1.0.0",
        "owner": {"name": "Test", "email": "test@example.com"},
        "sources": {"events": {**source, **BATCHING}},
        **extra,
    }
    (product / "dataproduct.yaml").write_text(json.dumps(descriptor), encoding="utf-8")
    return ProductRuntime.open(product, settings)


@pytest.fixture
def product(
    tmp_path: Path, settings: DataproductSettings, harness: Harness
) -> Iterator[ProductRuntime]:
    """The product reading `harness`'s broker, opened (its own consumers not started)."""
    runtime = open_product(tmp_path, settings, harness.options())
    yield runtime
    runtime.close()


def events_connector(runtime: ProductRuntime) -> MessageConnector:
    """The product's `events` source, a message connector."""
    connector = runtime.connectors["events"]
    assert isinstance(connector, MessageConnector)
    return connector


@contextmanager
def consuming(
    runtime: ProductRuntime, sink: InputSink | None = None
) -> Iterator[MessageSupervisor]:
    """A supervisor running the `events` consumer into `sink`, connected; stopped on exit."""
    supervisor = MessageSupervisor(
        {"events": events_connector(runtime)},
        lambda name: sink or InputSink(name, runtime.storage, runtime.load),
        first_backoff_s=0.05,
        max_backoff_s=0.5,
    )
    supervisor.start()
    try:
        wait_until(lambda: supervisor.status()["events"]["connected"], "the consumer connects")
        yield supervisor
    finally:
        supervisor.stop()


def wait_until(check: Callable[[], Any], what: str, timeout_s: float = WAIT_S) -> None:
    """Poll `check` until it is truthy."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting until {what}")


def rows(
    runtime: ProductRuntime, sql: str = "SELECT seq, name, price FROM input.events"
) -> list[Any]:
    """Rows of the input table, sorted (none while it does not exist)."""
    try:
        with runtime.storage.reader() as cursor:
            return sorted(cursor.execute(sql).fetchall())
    except DataproductError:
        return []


def row_count(runtime: ProductRuntime) -> int:
    """How many rows landed."""
    return len(rows(runtime))


def expected(seqs: Sequence[int]) -> list[tuple[int, str, float]]:
    """The rows the records of these seqs become."""
    return [(s, f"item {s}", s * 1.5) for s in sorted(seqs)]


def seqs(runtime: ProductRuntime) -> list[int]:
    """The seq of every landed row, sorted."""
    return [r[0] for r in rows(runtime, "SELECT seq FROM input.events")]


def settle(runtime: ProductRuntime, harness: Harness, sentinel: int) -> None:
    """Publish the sentinel message `m-<sentinel>` and wait until it lands: whatever the
    broker had delivered before it has been landed (or skipped) by then."""
    publish_retrying(harness, messages([sentinel]))
    wait_until(lambda: sentinel in seqs(runtime), f"the sentinel m-{sentinel} lands", 30)


class FailsFirstLand(InputSink):
    """Raises on its first land, before anything is committed."""

    failed_ids: list[str]

    def land(self, messages: Sequence[Message]) -> int:
        """Fail once, then land."""
        if not hasattr(self, "failed_ids"):
            self.failed_ids = [m.id for m in messages]
            raise SourceUnavailableError("disk full (test)")
        return super().land(messages)


class LosesFirstAck(InputSink):
    """Commits its first batch, then raises as if the acknowledgement were lost."""

    first_ids: list[str]

    def land(self, messages: Sequence[Message]) -> int:
        """Land; the first time, fail after the commit."""
        first = not hasattr(self, "first_ids")
        if first:
            self.first_ids = [m.id for m in messages]
        landed = super().land(messages)
        if first:
            raise SourceUnavailableError("ack lost (test)")
        return landed


def sink_of(runtime: ProductRuntime, sink_class: type[InputSink]) -> InputSink:
    """A sink of this class landing in the product's `events`."""
    return sink_class("events", runtime.storage, runtime.load)


# landing ----------------------------------------------------------------------------------


def test_messages_land_with_their_values(product: ProductRuntime, harness: Harness) -> None:
    single = messages(range(40))
    array = ("m-array", json.dumps([record(40), record(41)]).encode())
    ndjson = ("m-ndjson", f"{json.dumps(record(42))}\n{json.dumps(record(43))}\n".encode())
    with consuming(product) as supervisor:
        harness.publish([*single, array, ndjson])
        wait_until(lambda: supervisor.status()["events"]["rows_landed"] >= 44, "44 rows land")
        status = supervisor.status()["events"]
    assert rows(product) == expected(range(44))
    with product.storage.reader() as cursor:
        types = dict(cursor.execute("SELECT column_name, data_type FROM "
                                    "information_schema.columns WHERE table_schema = 'input' "
                                    "AND table_name = 'events'").fetchall())  # fmt: skip
        ingestions = cursor.execute(
            "SELECT count(*), sum(rows) FROM meta.ingestions "
            "WHERE source = 'events' AND status = 'succeeded'"
        ).fetchone()
    assert types == {"msg_id": "VARCHAR", "seq": "BIGINT", "name": "VARCHAR", "price": "DOUBLE"}
    assert ingestions is not None and ingestions[1] == 44 and ingestions[0] >= 3  # 16 per batch
    assert status["messages_received"] == 42
    assert status["rows_landed"] == 44
    assert status["last_error"] is None


def test_a_republished_id_lands_once(product: ProductRuntime, harness: Harness) -> None:
    with consuming(product) as supervisor:
        harness.publish(messages(range(5)))
        wait_until(lambda: row_count(product) == 5, "the first 5 rows land")
        time.sleep(0.15)  # past JetStream's own 100 ms duplicate window
        harness.publish(messages([0, 1, 2, 3, 4, 5, 5]))
        wait_until(lambda: supervisor.status()["events"]["duplicates"] >= 5, "duplicates seen")
        wait_until(lambda: row_count(product) >= 6, "the new message lands")
        settle(product, harness, 99)  # a late duplicate would land before the sentinel
    assert rows(product) == expected([*range(6), 99])
    with product.storage.reader() as cursor:
        ids = cursor.execute(
            "SELECT id FROM meta.message_ids WHERE source = 'events' ORDER BY id"
        ).fetchall()
    assert [i[0] for i in ids] == [f"m-{s}" for s in [*range(6), 99]]


def test_a_failed_land_is_not_acknowledged_and_comes_again(
    product: ProductRuntime, harness: Harness
) -> None:
    sink = sink_of(product, FailsFirstLand)
    assert isinstance(sink, FailsFirstLand)
    with consuming(product, sink) as supervisor:
        harness.publish(messages(range(10)))
        wait_until(lambda: row_count(product) == 10, "all 10 rows land after the failure")
        status = supervisor.status()["events"]
    assert sink.failed_ids  # the first batch failed ...
    landed = {r[0] for r in rows(product, "SELECT msg_id FROM input.events")}
    assert set(sink.failed_ids) <= landed  # ... and was delivered again
    assert rows(product) == expected(range(10))
    assert status["last_error"]["code"] == "source_unavailable"
    assert status["last_error"]["message"] == "disk full (test)"
    assert status["reconnects"] >= 1


def test_a_batch_landed_but_not_acknowledged_does_not_land_twice(
    product: ProductRuntime, harness: Harness
) -> None:
    sink = sink_of(product, LosesFirstAck)
    assert isinstance(sink, LosesFirstAck)
    with consuming(product, sink) as supervisor:
        harness.publish(messages(range(10)))
        wait_until(lambda: row_count(product) == 10, "10 rows land")
        wait_until(
            lambda: supervisor.status()["events"]["duplicates"] >= len(sink.first_ids),
            "the unacknowledged batch comes again",
        )
        settle(product, harness, 99)
    assert rows(product) == expected([*range(10), 99])


def test_a_bad_message_is_dead_lettered_and_the_stream_goes_on(
    tmp_path: Path, settings: DataproductSettings, harness: Harness
) -> None:
    columns = {"seq": {"type": "BIGINT", "required": True}, "price": {"type": "DOUBLE"}}
    runtime = open_product(tmp_path, settings, {**harness.options(), "columns": columns})
    cheap = {**record(1), "price": "cheap"}
    published = [
        *messages([0]),
        ("m-bad-json", b"{not json"),
        ("m-1", json.dumps(cheap).encode()),
        ("m-scalar", b"42"),
        *messages([2]),
    ]
    try:
        with consuming(runtime) as supervisor:
            harness.publish(published)
            wait_until(lambda: supervisor.status()["events"]["dead_letters"] == 3, "3 dead letters")
            wait_until(lambda: row_count(runtime) == 2, "the good messages land")
            harness.publish(messages([3]))
            wait_until(lambda: row_count(runtime) == 3, "a later message lands")
        assert rows(runtime) == expected([0, 2, 3])
        with runtime.storage.reader() as cursor:
            dead = cursor.execute(
                "SELECT body, error FROM meta.dead_letters WHERE source = 'events' ORDER BY body"
            ).fetchall()
        by_body = {bytes(body): error for body, error in dead}
        assert by_body[b"{not json"].startswith("cannot read the body: line 1: ")
        assert by_body[b"42"] == "cannot read the body: record 1 is a int, not an object"
        assert "column 'price' expects DOUBLE" in by_body[json.dumps(cheap).encode()]
    finally:
        runtime.close()


DEEP = b"[" * 50000  # json.loads raises RecursionError on it, not ValueError


def test_a_deeply_nested_message_is_dead_lettered_and_the_stream_goes_on(
    product: ProductRuntime, harness: Harness
) -> None:
    with consuming(product) as supervisor:
        harness.publish([("m-deep", DEEP), *messages([0, 1])])
        wait_until(lambda: row_count(product) == 2, "the good messages after it land")
        settle(product, harness, 2)
        status = supervisor.status()["events"]
    assert rows(product) == expected([0, 1, 2])
    assert status["dead_letters"] == 1 and status["last_error"] is None
    with product.storage.reader() as cursor:
        dead = cursor.execute(
            "SELECT id, body, error FROM meta.dead_letters WHERE source = 'events'"
        ).fetchall()
    # MQTT takes ids from the payload's msg_id, which an unreadable payload has not
    expected_id = None if harness.kind == "mqtt" else "m-deep"
    assert [(i, bytes(b), e) for i, b, e in dead] == [
        (expected_id, DEEP, "cannot read the body: the JSON is nested too deeply")
    ]


@pytest.fixture(params=["rabbitmq", "mqtt"])
def idless_harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    """A queue or topic whose messages carry no id (RabbitMQ and MQTT; NATS always has
    the stream sequence)."""
    port, name = SHARED_PORTS[request.param]
    require_service(port, name)
    made: Harness = RabbitHarness() if request.param == "rabbitmq" else MqttHarness()
    yield made
    made.cleanup()


@pytest.mark.parametrize(("dedupe", "landed"), [(None, [7, 7, 8]), ("content", [7, 8])])
def test_identical_messages_without_id(
    tmp_path: Path,
    settings: DataproductSettings,
    idless_harness: Harness,
    dedupe: str | None,
    landed: list[int],
) -> None:
    """By default both land (two events); with `dedupe: content` only one does."""
    options = {k: v for k, v in idless_harness.options().items() if k != "id_field"}
    if dedupe:
        options["dedupe"] = dedupe
    runtime = open_product(tmp_path, settings, options)
    body = json.dumps(record(7)).encode()
    try:
        with consuming(runtime) as supervisor:
            idless_harness.publish([(None, body), (None, body)])
            settle(runtime, idless_harness, 8)  # published after: both 7s were handled
            status = supervisor.status()["events"]
        assert rows(runtime) == expected(landed)
        assert status["messages_received"] == 3
        assert status["duplicates"] == 3 - len(landed)
        with runtime.storage.reader() as cursor:
            ids = cursor.execute("SELECT count(*) FROM meta.message_ids").fetchall()
        hashed = 1 if dedupe else 0  # the 7s' content hash
        sentinel = 1 if dedupe or idless_harness.kind == "rabbitmq" else 0  # its message_id
        assert ids == [(hashed + sentinel,)]
    finally:
        runtime.close()


# outages ----------------------------------------------------------------------------------


def publish_retrying(harness: Harness, published: Published, timeout_s: float = 10.0) -> None:
    """Publish to a broker that may still be starting."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            harness.publish(published)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def assert_exactly_once_after_outage(
    runtime: ProductRuntime, supervisor: MessageSupervisor, harness: Harness, total: int
) -> None:
    """Every message landed once, and the consumer noticed the outage and came back."""
    try:
        wait_until(lambda: row_count(runtime) >= total, f"{total} rows land", timeout_s=30)
    except AssertionError:
        missing = sorted(set(range(total)) - {r[0] for r in rows(runtime)})
        raise AssertionError(f"missing seqs {missing}; {supervisor.status()}") from None
    wait_until(lambda: supervisor.status()["events"]["connected"], "the consumer reconnects")
    settle(runtime, harness, total)  # a redelivered duplicate would land before it
    assert rows(runtime) == expected(range(total + 1))
    status = supervisor.status()["events"]
    assert status["reconnects"] >= 1
    assert status["last_error"]["code"] == "source_unavailable"


@pytest.mark.slow
def test_nats_server_killed_mid_stream(
    tmp_path: Path, settings: DataproductSettings, nats_server: NatsServer
) -> None:
    harness = NatsHarness(nats_server.url)
    runtime = open_product(tmp_path, settings, harness.options())
    try:
        with consuming(runtime) as supervisor:
            harness.publish(messages(range(200)))
            wait_until(lambda: row_count(runtime) > 0, "landing starts")
            nats_server.restart()  # SIGKILL: JetStream's file store keeps stream and consumer
            publish_retrying(harness, messages(range(200, 300)))
            assert_exactly_once_after_outage(runtime, supervisor, harness, 300)
    finally:
        runtime.close()


@pytest.mark.slow
def test_mosquitto_restarted_mid_stream(
    tmp_path: Path, settings: DataproductSettings, mosquitto_server: MosquittoServer
) -> None:
    harness = MqttHarness(mosquitto_server.port)
    runtime = open_product(tmp_path, settings, harness.options())
    try:
        with consuming(runtime) as supervisor:
            harness.publish(messages(range(200)))
            wait_until(lambda: row_count(runtime) > 0, "landing starts")
            mosquitto_server.restart(signal.SIGTERM)  # it saves the session as it exits
            publish_retrying(harness, messages(range(200, 300)))
            assert_exactly_once_after_outage(runtime, supervisor, harness, 300)
    finally:
        runtime.close()


@pytest.mark.slow
def test_rabbitmq_connection_cut_mid_stream(
    tmp_path: Path, settings: DataproductSettings, rabbit_proxy: TcpProxy
) -> None:
    harness = RabbitHarness(rabbit_proxy.port)  # the consumer goes through the proxy
    runtime = open_product(tmp_path, settings, harness.options())
    try:
        with consuming(runtime) as supervisor:
            harness.publish(messages(range(200)))
            wait_until(lambda: row_count(runtime) > 0, "landing starts")
            rabbit_proxy.cut()
            wait_until(lambda: not supervisor.status()["events"]["connected"], "the loss is seen")
            harness.publish(messages(range(200, 300)))  # straight to the broker
            time.sleep(0.3)  # the consumer retries against the closed port meanwhile
            rabbit_proxy.restore()
            assert_exactly_once_after_outage(runtime, supervisor, harness, 300)
    finally:
        runtime.close()
        harness.cleanup()


# supervision ------------------------------------------------------------------------------


def unreachable_sources() -> list[Any]:
    port = free_port()
    return [
        pytest.param(
            {
                "type": "nats",
                "url": f"nats://127.0.0.1:{port}",
                "stream": "S",
                "subject": "s",
                "durable": "d",
            },
            "source_unavailable",
            f"cannot reach nats://127.0.0.1:{port}",
            id="nats-down",
        ),
        pytest.param(
            {"type": "rabbitmq", "url": f"amqp://guest:guest@127.0.0.1:{port}/", "queue": "q"},
            "source_unavailable",
            f"cannot reach amqp://guest:***@127.0.0.1:{port}/",
            id="rabbitmq-down",
        ),
        pytest.param(
            {"type": "mqtt", "port": port, "topic": "t", "client_id": "dpt-down"},
            "source_unavailable",
            f"cannot reach 127.0.0.1:{port}",
            id="mqtt-down",
        ),
        pytest.param(
            {
                "type": "rabbitmq",
                "url": "amqp://guest:${env:DPT_WRONG}@127.0.0.1:5672/",
                "queue": "q",
            },
            "source_error",
            "RabbitMQ at amqp://guest:${env:DPT_WRONG}@",
            id="rabbitmq-bad-password",
        ),
    ]


@pytest.mark.parametrize(("source", "code", "message"), unreachable_sources())
def test_an_unreachable_broker_is_retried_with_backoff_and_reported(
    tmp_path: Path,
    settings: DataproductSettings,
    monkeypatch: pytest.MonkeyPatch,
    source: dict[str, Any],
    code: str,
    message: str,
) -> None:
    if code == "source_error":
        require_service(5672, "RabbitMQ")
    monkeypatch.setenv("DPT_WRONG", "not-the-password-7f3a")
    runtime = open_product(tmp_path, settings, source)
    supervisor = MessageSupervisor(
        {"events": events_connector(runtime)},
        lambda name: InputSink(name, runtime.storage, runtime.load),
        first_backoff_s=0.05,
        max_backoff_s=0.2,
    )
    try:
        supervisor.start()
        wait_until(lambda: supervisor.status()["events"]["reconnects"] >= 3, "3 retries")
        status = supervisor.status()["events"]
        started = time.monotonic()
        supervisor.stop()
        stopped_in = time.monotonic() - started
    finally:
        supervisor.stop()
        runtime.close()
    assert status["running"] is True and status["connected"] is False
    assert status["last_error"]["code"] == code
    assert status["last_error"]["message"].startswith(message)
    assert "not-the-password-7f3a" not in json.dumps(status)
    assert stopped_in < 1.0
    assert supervisor.status()["events"]["running"] is False


def test_a_product_lands_messages_from_startup_to_close(
    tmp_path: Path, settings: DataproductSettings
) -> None:
    require_service(4222, "NATS")
    harness = NatsHarness()
    totals = "SELECT count(*) AS events, sum(price) AS total FROM input.events"
    pipeline = [{"name": "event_totals", "layer": "output", "sql": totals}]
    runtime = open_product(
        tmp_path, settings, {**harness.options(), "trigger_run": True}, pipeline=pipeline
    )
    try:
        runtime.startup()
        wait_until(lambda: runtime.messages.status()["events"]["connected"], "it subscribes")
        harness.publish(messages(range(20)))
        wait_until(lambda: row_count(runtime) == 20, "20 rows land")
        wait_until(
            lambda: (
                rows(runtime, "SELECT events, total FROM output.event_totals")
                == [(20, sum(s * 1.5 for s in range(20)))]
            ),
            "a run triggered by the landing publishes the totals",
        )
        status = runtime.messages.status()["events"]
    finally:
        runtime.close()
        harness.cleanup()
    assert status["running"] and status["rows_landed"] == 20 and status["messages_received"] == 20
    assert runtime.messages.status()["events"]["running"] is False
    assert not [t for t in threading.enumerate() if t.name == "messages-events"]


# the pieces -------------------------------------------------------------------------------


def test_describe_never_shows_credentials(tmp_path: Path) -> None:
    context = SourceContext(tmp_path, tmp_path / "data")
    found = {
        kind: build_connector("events", SourceConfig.model_validate(options), context).describe()
        for kind, options in {
            "nats": {
                "type": "nats",
                "url": "nats://app:s3cret-n@broker:4222",
                "stream": "S",
                "subject": "s.>",
                "durable": "d",
                "token": "tok-s3cret",
            },
            "rabbitmq": {
                "type": "rabbitmq",
                "url": "amqp://app:s3cret-r@broker:5672/v",
                "queue": "q",
            },
            "mqtt": {
                "type": "mqtt",
                "host": "broker",
                "topic": "a/#",
                "username": "app",
                "password": "s3cret-m",
            },
        }.items()
    }
    assert found["nats"]["url"] == "nats://app:***@broker:4222"
    assert found["rabbitmq"]["url"] == "amqp://app:***@broker:5672/v"
    assert found["mqtt"] == {
        "type": "mqtt", "mode": "append", "host": "broker", "port": 1883, "topic": "a/#",
        "qos": 1, "batch_messages": 1000, "batch_seconds": 1.0,
    }  # fmt: skip
    assert "s3cret" not in json.dumps(found)


def test_a_message_source_only_appends(tmp_path: Path) -> None:
    context = SourceContext(tmp_path, tmp_path / "data")
    config = SourceConfig.model_validate({"type": "rabbitmq", "queue": "q", "mode": "replace"})
    with pytest.raises(DescriptorError, match=r"sources\.events\.mode: Input should be 'append'"):
        build_connector("events", config, context)


@pytest.mark.parametrize(
    ("body", "records"),
    [
        (b'{"a": 1}', [{"a": 1}]),
        (b'[{"a": 1}, {"a": 2}]', [{"a": 1}, {"a": 2}]),
        (b'{"a": 1}\n\n{"a": 2}\n', [{"a": 1}, {"a": 2}]),
        (b"[]", []),
    ],
)
def test_bodies_are_objects_arrays_or_ndjson(body: bytes, records: list[Any]) -> None:
    assert parse_records(body) == records


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "the body is empty"),
        (b'{"a": 1}\n{"a": ', "line 2: Expecting value (column 6)"),
        (b'[{"a": 1}, 2]', "record 2 is a int, not an object"),
        (b"[" * 50000, "the JSON is nested too deeply"),
        (b'{"a": 1}\n' + b"[" * 50000, "the JSON is nested too deeply"),
        (b"\xff\xfe", "'utf-8' codec can't decode byte 0xff in position 0: invalid start byte"),
    ],
)
def test_unreadable_bodies_say_why(body: bytes, reason: str) -> None:
    with pytest.raises(ValueError) as raised:
        parse_records(body)
    assert str(raised.value) == reason
