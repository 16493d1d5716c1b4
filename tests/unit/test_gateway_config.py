"""The nginx gateway configuration: routes, their validation and the rendered text."""

from __future__ import annotations

import argparse
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from dataproduct.errors import ConfigurationError
from dataproduct.gateway import (
    GatewayRoute,
    _json_literal,
    add_gateway_command,
    parse_route,
    render_nginx,
)

ROOT = Path(__file__).resolve().parents[2]
DEPLOYED = ROOT / "deploy" / "gateway" / "nginx.conf"
EU = GatewayRoute("sales/eu/sales-eu/v1", "http://127.0.0.1:8081")
US = GatewayRoute("sales/us/sales-us/v2", "http://127.0.0.1:8082")
NOT_FOUND = {
    "error": {"code": "not_found", "message": "no data product at this address", "where": "path"}
}
PROXY_HEADERS = (
    "proxy_set_header Authorization $http_authorization;",
    "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
    "proxy_set_header X-Forwarded-Proto $scheme;",
    "proxy_set_header X-Forwarded-Host $http_host;",
    'proxy_set_header Connection "";',
    "proxy_http_version 1.1;",
    "proxy_buffering off;",
    "proxy_request_buffering off;",
    "proxy_read_timeout 3600s;",
    "proxy_send_timeout 3600s;",
)


def block(config: str, opening: str) -> str:
    """The body of the `{ ... }` block that starts with the line `opening {`."""
    start = config.index(f"{opening} {{\n") + len(opening) + 3
    depth, position = 1, start
    while depth:
        depth += {"{": 1, "}": -1}.get(config[position], 0)
        position += 1
    return config[start : position - 1]


def nginx_unquote(literal: str) -> str:
    """What nginx makes of a single-quoted string (`ngx_conf_read_token`'s unescaping)."""
    assert literal[0] == literal[-1] == "'"
    special = {"t": "\t", "r": "\r", "n": "\n", '"': '"', "'": "'", "\\": "\\"}
    return re.sub(r"\\(.)", lambda m: special.get(m[1], m[0]), literal[1:-1], flags=re.DOTALL)


def returned(config: str, location: str, status: int) -> Any:
    """The JSON document a location answers with `return <status> '...'`."""
    body = block(config, f"location {location}")
    match = re.search(rf"^\s*return {status} ('(?:[^'\\]|\\.)*');$", body, re.MULTILINE)
    assert match, body
    return json.loads(nginx_unquote(match.group(1)))


# --- routes -----------------------------------------------------------------------------


def test_a_route_parses_from_prefix_equals_upstream() -> None:
    """`PREFIX=UPSTREAM`; slashes around the prefix and after the upstream are dropped."""
    assert parse_route("sales/eu/sales-eu/v1=http://127.0.0.1:8081") == EU
    assert parse_route(" /sales/eu/sales-eu/v1/ = http://127.0.0.1:8081/ ") == EU
    route = parse_route("finance/ledger/v12=https://ledger.internal:8443")
    assert route.path == "/finance/ledger/v12/"
    assert parse_route("a/b/v1=http://[::1]:8080").upstream == "http://[::1]:8080"


def test_a_route_without_an_equals_sign_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="PREFIX=UPSTREAM") as caught:
        parse_route("sales/eu/sales-eu/v1")
    assert caught.value.where == "route"


@pytest.mark.parametrize(
    ("prefix", "message"),
    [
        ("sales-eu/v1", "at least a business area"),
        ("Sales/eu/sales-eu/v1", "lowercase slug"),
        ("sales//sales-eu/v1", "lowercase slug"),
        ("sales/eu/sales_eu/v1", "lowercase slug"),
        ("sales/eu/-sales/v1", "lowercase slug"),
        ("sales/eu/sales-eu/v1/", "lowercase slug"),
        ("sales/eu/sales-eu", "major version"),
        ("sales/eu/sales-eu/1", "major version"),
        ("sales/eu/sales-eu/v1.2", "lowercase slug"),
        ("sales/eu/sales-eu/version1", "major version"),
    ],
)
def test_bad_prefixes_are_refused(prefix: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as caught:
        GatewayRoute(prefix, "http://127.0.0.1:8081")
    assert caught.value.where == "prefix"
    assert repr(prefix) in caught.value.message or "segment" in caught.value.message


@pytest.mark.parametrize(
    ("upstream", "message"),
    [
        ("127.0.0.1:8081", "not an http or https URL"),
        ("ftp://127.0.0.1:8081", "not an http or https URL"),
        ("http://127.0.0.1", "explicit port"),
        ("http://127.0.0.1:0", "explicit port"),
        ("http://127.0.0.1:65536", "explicit port"),
        ("http://127.0.0.1:http", "explicit port"),
        ("http://:8081", "no valid host"),
        ("http://bad_host:8081", "no valid host"),
        ("http://127.0.0.1:8081/", "path"),
        ("http://127.0.0.1:8081/api", "path"),
        ("http://127.0.0.1:8081?x=1", "query"),
        ("http://127.0.0.1:8081#top", "fragment"),
        ("http://user:pw@127.0.0.1:8081", "credentials"),
        ("http://127.0.0.1:8081;", "explicit port"),
    ],
)
def test_bad_upstreams_are_refused(upstream: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as caught:
        GatewayRoute("sales/eu/sales-eu/v1", upstream)
    assert caught.value.where == "upstream"
    assert "http(s)://host:port" in caught.value.message


def test_a_prefix_is_routed_once_and_there_is_at_least_one_route() -> None:
    with pytest.raises(ConfigurationError, match="routed twice"):
        render_nginx([EU, GatewayRoute(EU.prefix, "http://127.0.0.1:9999")])
    with pytest.raises(ConfigurationError, match="at least one route"):
        render_nginx([])


@pytest.mark.parametrize("listen", ["8000x", "127.0.0.1:", "127.0.0.1:99999", "a b:80", ""])
def test_bad_listen_addresses_are_refused(listen: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        render_nginx([EU], listen)
    assert caught.value.where == "listen"


@pytest.mark.parametrize("max_body", ["1 g", "1gb", "-1", "", "1g;"])
def test_bad_body_limits_are_refused(max_body: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        render_nginx([EU], max_body=max_body)
    assert caught.value.where == "max_body"


# --- the rendered configuration ---------------------------------------------------------


def test_every_route_is_proxied_with_its_prefix_stripped() -> None:
    """An upstream with keepalive per route; `proxy_pass .../` replaces the prefix by `/`."""
    config = render_nginx([EU, US])
    for route, port in ((EU, 8081), (US, 8082)):
        upstream = block(config, f"upstream {route.upstream_name}")
        assert f"server 127.0.0.1:{port};" in upstream
        assert "keepalive 16;" in upstream
        location = block(config, f"location {route.path}")
        assert f"proxy_pass http://{route.upstream_name}/;" in location
        assert f"proxy_set_header Host 127.0.0.1:{port};" in location
        assert f"proxy_set_header X-Forwarded-Prefix /{route.prefix};" in location
        for line in PROXY_HEADERS:
            assert line in location, line


def test_a_bare_prefix_redirects_to_its_slash() -> None:
    config = render_nginx([EU])
    bare = block(config, "location = /sales/eu/sales-eu/v1")
    assert bare.strip() == "return 308 /sales/eu/sales-eu/v1/$is_args$args;"
    assert "absolute_redirect off;" in config


def test_https_upstreams_send_their_own_server_name() -> None:
    config = render_nginx([parse_route("fin/ledger/v1=https://ledger.internal:8443")])
    location = block(config, "location /fin/ledger/v1/")
    assert "proxy_pass https://product.fin.ledger.v1/;" in location
    assert "proxy_ssl_server_name on;" in location
    assert "proxy_ssl_name ledger.internal;" in location
    assert "proxy_ssl" not in render_nginx([EU])


def test_unknown_addresses_answer_the_json_404() -> None:
    config = render_nginx([EU])
    assert "default_type application/json;" in block(config, "location /")
    assert returned(config, "/", 404) == NOT_FOUND


def test_the_root_lists_every_product() -> None:
    config = render_nginx([EU, US])
    assert returned(config, "= /", 200) == {
        "products": [
            {"path": "/sales/eu/sales-eu/v1/", "upstream": "http://127.0.0.1:8081"},
            {"path": "/sales/us/sales-us/v2/", "upstream": "http://127.0.0.1:8082"},
        ]
    }
    assert returned(config, "= /", 405)["error"]["code"] == "method_not_allowed"


def test_errors_nginx_makes_itself_are_json_too() -> None:
    config = render_nginx([EU])
    for status, code in ((413, "payload_too_large"), (502, "upstream_unavailable")):
        assert f"error_page {status} @error_{status};" in config
        assert returned(config, f"@error_{status}", status)["error"]["code"] == code


@pytest.mark.parametrize(
    "text", ["it's", 'a "quote"', "back\\slash", "$host and ${x}", "new\nline", "é ü ✓"]
)
def test_json_literals_reach_clients_byte_for_byte(text: str) -> None:
    """nginx unescapes quoted strings and expands `$`: neither may change the JSON."""
    literal = _json_literal({"text": text})
    assert "$" not in literal and "\n" not in literal
    assert json.loads(nginx_unquote(literal)) == {"text": text}


def test_limits_listen_address_and_streaming_settings() -> None:
    config = render_nginx([EU], "127.0.0.1:9000", max_body="250m")
    assert "listen 127.0.0.1:9000;" in config
    assert "client_max_body_size 250m;" in config
    assert "client_max_body_size 1g;" in render_nginx([EU])
    assert "listen 8000;" in render_nginx([EU], "8000")
    assert "daemon" not in config  # left to the command line


def test_the_access_log_is_json_lines() -> None:
    config = render_nginx([EU])
    match = re.search(r"log_format dataproduct_json escape=json ('[^']*');", config)
    assert match
    line = nginx_unquote(match.group(1))
    for variable in ("$time_iso8601", "$remote_addr", "$request_method", "$request_uri"):
        assert f'"{variable}"' in line
    for variable in ("$status", "$body_bytes_sent", "$request_time", "$upstream_addr"):
        assert variable in line
    sample = re.sub(r"\$\w+", "1", line)  # every variable a number: still JSON
    assert set(json.loads(sample)) == {
        "time", "remote_addr", "method", "uri", "status", "bytes", "request_time", "upstream"
    }  # fmt: skip


def test_a_runtime_dir_holds_pid_logs_and_temporary_files(tmp_path: Path) -> None:
    config = render_nginx([EU], runtime_dir=tmp_path)
    assert f"pid '{tmp_path}/nginx.pid';" in config
    assert f"error_log '{tmp_path}/error.log' notice;" in config
    assert f"access_log '{tmp_path}/access.log' dataproduct_json;" in config
    for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        assert f"{name}_temp_path '{tmp_path}/{name}';" in config
    assert "/var/" not in config


def test_without_a_runtime_dir_logs_go_to_the_console() -> None:
    config = render_nginx([EU])
    assert "error_log stderr notice;" in config
    assert "access_log /dev/stdout dataproduct_json;" in config
    assert "pid " not in config and "_temp_path" not in config


def test_a_runtime_dir_with_a_dollar_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as caught:
        render_nginx([EU], runtime_dir=tmp_path / "$x")
    assert caught.value.where == "runtime_dir"


def test_braces_balance() -> None:
    config = render_nginx([EU, US], runtime_dir=Path("/tmp/gw"))
    depth = 0
    for character in re.sub(r"'(?:[^'\\]|\\.)*'", "''", config):
        depth += {"{": 1, "}": -1}.get(character, 0)
        assert depth >= 0
    assert depth == 0


# --- the command ------------------------------------------------------------------------


def run_command(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    parser = argparse.ArgumentParser(prog="dataproduct")
    add_gateway_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    assert args.handler(args) == 0
    return capsys.readouterr().out


def test_gateway_config_prints_the_configuration(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    argv = ["gateway-config", "--listen", "127.0.0.1:9000", "--runtime-dir", str(tmp_path)]
    argv += ["--route", "sales/eu/sales-eu/v1=http://127.0.0.1:8081"]
    argv += ["--route", "/sales/us/sales-us/v2/=http://127.0.0.1:8082/"]
    argv += ["--max-body", "2g"]
    header, _, config = run_command(argv, capsys).partition("\n")
    assert header == (
        "# Generated by `dataproduct gateway-config --listen 127.0.0.1:9000 "
        "--route sales/eu/sales-eu/v1=http://127.0.0.1:8081 "
        "--route /sales/us/sales-us/v2/=http://127.0.0.1:8082/ "
        f"--runtime-dir {tmp_path} --max-body 2g`; edit the command, not this file."
    )
    assert config == render_nginx([EU, US], "127.0.0.1:9000", runtime_dir=tmp_path, max_body="2g")


def test_the_deployed_example_is_what_its_command_renders(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """deploy/gateway/nginx.conf is exactly the output of the command in its header."""
    deployed = DEPLOYED.read_text()
    match = re.match(r"# Generated by `dataproduct ([^`]+)`", deployed)
    assert match, deployed[:200]
    assert run_command(shlex.split(match.group(1)), capsys) == deployed
