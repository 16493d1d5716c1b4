"""An nginx gateway in front of several data products, rendered from a list of routes.

Each product serves at its root; the gateway mounts it at its standard address
`/<business-area>/.../<product>/v<major>/` and strips that prefix before proxying. The
Authorization header goes through untouched, responses and uploads stream (no buffering),
unknown addresses get the project's JSON 404 and `GET /` lists the products as JSON.
Rendering is pure: nothing here starts nginx or touches the file system.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dataproduct.errors import ConfigurationError

DEFAULT_LISTEN = "127.0.0.1:8000"
DEFAULT_MAX_BODY = "1g"
KEEPALIVE_CONNECTIONS = 16
CONNECT_TIMEOUT = "10s"
STREAM_TIMEOUT = "3600s"  # between two reads or writes: long queries, slow large downloads
CLIENT_BODY_TIMEOUT = "300s"
TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")

SLUG = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
MAJOR = re.compile(r"v[0-9]+")
HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]")
SIZE = re.compile(r"[0-9]+[kKmMgG]?")

NOT_FOUND = {
    "error": {"code": "not_found", "message": "no data product at this address", "where": "path"}
}
GATEWAY_ERRORS = {
    413: ("payload_too_large", "the body is larger than this gateway accepts", "body"),
    502: ("upstream_unavailable", "the data product at this address does not answer", "path"),
    504: ("upstream_timeout", "the data product at this address did not answer in time", "path"),
}
METHOD_NOT_ALLOWED = {
    "error": {
        "code": "method_not_allowed",
        "message": "only GET lists the products",
        "where": "method",
    }
}
ACCESS_LOG_FORMAT = (
    '{"time":"$time_iso8601","remote_addr":"$remote_addr","method":"$request_method",'
    '"uri":"$request_uri","status":$status,"bytes":$body_bytes_sent,'
    '"request_time":$request_time,"upstream":"$upstream_addr"}'
)


@dataclass(frozen=True)
class GatewayRoute:
    """One product behind the gateway: its address prefix and where it really listens."""

    prefix: str  # e.g. "sales/eu/sales-eu/v1"
    upstream: str  # e.g. "http://127.0.0.1:8081"

    def __post_init__(self) -> None:
        _check_prefix(self.prefix)
        _check_upstream(self.upstream)

    @property
    def path(self) -> str:
        """The public address of the product on the gateway, with its trailing slash."""
        return f"/{self.prefix}/"

    @property
    def upstream_name(self) -> str:
        """The name of this route's nginx `upstream` block (unique per prefix)."""
        return "product." + self.prefix.replace("/", ".")


def _check_prefix(prefix: str) -> None:
    segments = prefix.split("/")
    if len(segments) < 3:
        raise ConfigurationError(
            f"the prefix {prefix!r} needs at least a business area, a product and a major "
            "version, like 'sales/eu/sales-eu/v1'",
            where="prefix",
        )
    for segment in segments:
        if not SLUG.fullmatch(segment):
            raise ConfigurationError(
                f"the prefix segment {segment!r} of {prefix!r} is not a lowercase slug "
                "(a-z, 0-9 and single hyphens, no leading or trailing slash)",
                where="prefix",
            )
    if not MAJOR.fullmatch(segments[-1]):
        raise ConfigurationError(
            f"the prefix {prefix!r} must end with the major version, like 'v1'",
            where="prefix",
        )


def _check_upstream(upstream: str) -> None:
    problem = _upstream_problem(upstream)
    if problem:
        raise ConfigurationError(
            f"the upstream {upstream!r} {problem}; expected http(s)://host:port",
            where="upstream",
        )


def _upstream_problem(upstream: str) -> str | None:
    parts = urlsplit(upstream)
    if parts.scheme not in ("http", "https"):
        return "is not an http or https URL"
    if "@" in parts.netloc:
        return "must not carry credentials"
    if parts.path or parts.query or parts.fragment or upstream.endswith(("?", "#")):
        return "must not have a path, a query or a fragment"
    host, _, port = parts.netloc.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        return "needs an explicit port between 1 and 65535"
    if not HOST.fullmatch(host):
        return "has no valid host"
    return None


def parse_route(text: str) -> GatewayRoute:
    """`PREFIX=UPSTREAM` (as given to `--route`) as a route; slashes around PREFIX are dropped."""
    prefix, separator, upstream = text.partition("=")
    if not separator:
        raise ConfigurationError(
            f"the route {text!r} is not PREFIX=UPSTREAM, "
            "like 'sales/eu/sales-eu/v1=http://127.0.0.1:8081'",
            where="route",
        )
    upstream = upstream.strip()
    if upstream.endswith("/") and urlsplit(upstream).path == "/":
        upstream = upstream[:-1]
    return GatewayRoute(prefix.strip().strip("/"), upstream)


def render_nginx(
    routes: Sequence[GatewayRoute],
    listen: str = DEFAULT_LISTEN,
    *,
    runtime_dir: Path | None = None,
    max_body: str = DEFAULT_MAX_BODY,
) -> str:
    """A complete nginx.conf serving every route at its address (run it with `daemon off;`).

    With `runtime_dir`, the pid file, both logs and every temporary path live there, so a
    user without root can run it; otherwise errors go to stderr and access lines to stdout.
    """
    _check_routes(routes)
    _check_listen(listen)
    _check_max_body(max_body)
    lines = [
        "worker_processes auto;",
        *_runtime_main(runtime_dir),
        "",
        "events {",
        "    worker_connections 1024;",
        "}",
        "",
        "http {",
        *_indent(_http_settings(runtime_dir, max_body)),
        "",
        *_indent(line for route in routes for line in [*_upstream(route), ""]),
        *_indent(_server(routes, listen)),
        "}",
    ]
    return "\n".join(lines) + "\n"


def _check_routes(routes: Sequence[GatewayRoute]) -> None:
    if not routes:
        raise ConfigurationError("the gateway needs at least one route", where="route")
    seen: set[str] = set()
    for route in routes:
        if route.prefix in seen:
            raise ConfigurationError(f"the prefix {route.prefix!r} is routed twice", where="route")
        seen.add(route.prefix)


def _check_listen(listen: str) -> None:
    host, _, port = listen.rpartition(":")
    if (host and not HOST.fullmatch(host)) or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigurationError(
            f"the listen address {listen!r} is not [host:]port, like 127.0.0.1:8000",
            where="listen",
        )


def _check_max_body(max_body: str) -> None:
    if not SIZE.fullmatch(max_body):
        raise ConfigurationError(
            f"the body limit {max_body!r} is not a size like 1g, 512m or 1048576",
            where="max_body",
        )


def _runtime_main(runtime_dir: Path | None) -> list[str]:
    if runtime_dir is None:
        return ["error_log stderr notice;"]
    return [
        f"pid {_path(runtime_dir, 'nginx.pid')};",
        f"error_log {_path(runtime_dir, 'error.log')} notice;",
    ]


def _http_settings(runtime_dir: Path | None, max_body: str) -> list[str]:
    access = "/dev/stdout" if runtime_dir is None else _path(runtime_dir, "access.log")
    temp = (
        []
        if runtime_dir is None
        else [f"{name}_temp_path {_path(runtime_dir, name)};" for name in TEMP_PATHS]
    )
    return [
        f"log_format dataproduct_json escape=json {_quote(ACCESS_LOG_FORMAT)};",
        f"access_log {access} dataproduct_json;",
        *temp,
        "default_type application/octet-stream;",
        "server_tokens off;",
        "absolute_redirect off;",
        f"client_max_body_size {max_body};",
        f"client_body_timeout {CLIENT_BODY_TIMEOUT};",
        f"send_timeout {STREAM_TIMEOUT};",
        "keepalive_timeout 75s;",
    ]


def _upstream(route: GatewayRoute) -> list[str]:
    address = urlsplit(route.upstream).netloc
    return [
        f"upstream {route.upstream_name} {{",
        f"    server {address};",
        f"    keepalive {KEEPALIVE_CONNECTIONS};",
        "}",
    ]


def _server(routes: Sequence[GatewayRoute], listen: str) -> list[str]:
    lines = [
        "server {",
        f"    listen {listen};",
        "    server_name _;",
        "",
        *[f"    error_page {status} @error_{status};" for status in GATEWAY_ERRORS],
        "",
        "    # the products behind this gateway, as JSON",
        "    location = / {",
        "        default_type application/json;",
        "        if ($request_method !~ ^(GET|HEAD)$) {",
        '            add_header Allow "GET, HEAD" always;',
        f"            return 405 {_json_literal(METHOD_NOT_ALLOWED)};",
        "        }",
        f"        return 200 {_json_literal(_listing(routes))};",
        "    }",
        "",
        "    # any other address: no product there",
        "    location / {",
        "        default_type application/json;",
        f"        return 404 {_json_literal(NOT_FOUND)};",
        "    }",
    ]
    for status, (code, message, where) in GATEWAY_ERRORS.items():
        lines += [
            "",
            f"    location @error_{status} {{",
            "        default_type application/json;",
            f"        return {status} {_json_literal(_error(code, message, where))};",
            "    }",
        ]
    for route in routes:
        lines += ["", *_indent(_locations(route))]
    lines.append("}")
    return lines


def _locations(route: GatewayRoute) -> list[str]:
    bare = route.path.rstrip("/")
    upstream = urlsplit(route.upstream)
    tls = [
        "    proxy_ssl_server_name on;",
        f"    proxy_ssl_name {upstream.hostname};",
    ]
    return [
        f"# {route.path} -> {route.upstream}",
        f"location = {bare} {{",
        f"    return 308 {route.path}$is_args$args;",
        "}",
        f"location {route.path} {{",
        f"    proxy_pass {upstream.scheme}://{route.upstream_name}/;  # strips {bare}",
        "    proxy_http_version 1.1;",
        '    proxy_set_header Connection "";',
        f"    proxy_set_header Host {upstream.netloc};",
        "    proxy_set_header Authorization $http_authorization;",
        "    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "    proxy_set_header X-Forwarded-Proto $scheme;",
        "    proxy_set_header X-Forwarded-Host $http_host;",
        f"    proxy_set_header X-Forwarded-Prefix {bare};",
        "    proxy_buffering off;",
        "    proxy_request_buffering off;",
        "    proxy_redirect off;",
        f"    proxy_connect_timeout {CONNECT_TIMEOUT};",
        f"    proxy_read_timeout {STREAM_TIMEOUT};",
        f"    proxy_send_timeout {STREAM_TIMEOUT};",
        *(tls if upstream.scheme == "https" else []),
        "}",
    ]


def _listing(routes: Sequence[GatewayRoute]) -> dict[str, Any]:
    return {"products": [{"path": r.path, "upstream": r.upstream} for r in routes]}


def _error(code: str, message: str, where: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "where": where}}


def _json_literal(document: dict[str, Any]) -> str:
    """A JSON document as an nginx string literal that nginx returns byte for byte.

    ASCII only (no newlines), `$` escaped in JSON so nginx sees no variable.
    """
    text = json.dumps(document, ensure_ascii=True, separators=(",", ":"))
    return _quote(text.replace("$", "\\u0024"))


def _quote(text: str) -> str:
    """An nginx single-quoted string: nginx unescapes `\\\\` and `\\'` inside quotes."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _path(directory: Path, name: str) -> str:
    path = str(directory.absolute() / name)
    if "$" in path or "\n" in path:
        raise ConfigurationError(
            f"the runtime directory {str(directory)!r} must not contain '$' or a newline",
            where="runtime_dir",
        )
    return _quote(path)


def _indent(lines: Iterable[str]) -> list[str]:
    return [f"    {line}" if line else "" for line in lines]


def add_gateway_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `gateway-config`: print the nginx.conf for `--route PREFIX=UPSTREAM`s."""
    gateway = commands.add_parser(
        "gateway-config",
        help="print an nginx configuration that serves products at their addresses",
    )
    gateway.add_argument("--listen", default=DEFAULT_LISTEN, help="[host:]port of the gateway")
    gateway.add_argument(
        "--route",
        action="append",
        default=[],
        metavar="PREFIX=UPSTREAM",
        help="repeatable, e.g. sales/eu/sales-eu/v1=http://127.0.0.1:8081",
    )
    gateway.add_argument(
        "--runtime-dir", type=Path, help="where pid, logs and temporary files go (no root)"
    )
    gateway.add_argument("--max-body", default=DEFAULT_MAX_BODY, help="largest request body")
    gateway.set_defaults(handler=_gateway_config)


def _gateway_config(args: argparse.Namespace) -> int:
    routes = [parse_route(text) for text in args.route]
    config = render_nginx(routes, args.listen, runtime_dir=args.runtime_dir, max_body=args.max_body)
    print(f"# Generated by `{gateway_command(args)}`; edit the command, not this file.")
    print(config, end="")
    return 0


def gateway_command(args: argparse.Namespace) -> str:
    """The canonical `dataproduct gateway-config ...` command line for these arguments."""
    words = ["dataproduct", "gateway-config", "--listen", args.listen]
    for text in args.route:
        words += ["--route", text]
    if args.runtime_dir is not None:
        words += ["--runtime-dir", str(args.runtime_dir)]
    words += ["--max-body", args.max_body]
    return shlex.join(words)
