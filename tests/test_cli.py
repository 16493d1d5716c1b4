"""The `dataproduct` command: validate, init, token (in-process and as the console script)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dataproduct.cli import example_dir, main
from dataproduct.errors import AuthenticationError
from dataproduct.security import verify_token
from dataproduct.settings import DataproductSettings, get_settings
from pipelines.runtime import ProductRuntime
from tests.conftest import SECRET

CONSOLE_SCRIPT = Path(sys.executable).parent / "dataproduct"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No DATAPRODUCT_* from outside, data in this test's folder, settings read afresh."""
    for name in list(os.environ):
        if name.startswith("DATAPRODUCT_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DATAPRODUCT_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_validate_the_example(example_product: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A valid folder: exit 0 and a one-line summary."""
    assert main(["validate", str(example_product)]) == 0
    out = capsys.readouterr().out
    assert "sales-eu 1.0.0: valid" in out
    assert "3 sources, 3 models, 2 documented datasets" in out


def test_validate_names_file_path_and_reason(
    example_product: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad field: exit non-zero; the file, the path inside it and the reason are printed."""
    descriptor = example_product / "dataproduct.yaml"
    text = descriptor.read_text(encoding="utf-8")
    descriptor.write_text(text.replace("version: 1.0.0", "version: one"), encoding="utf-8")
    assert main(["validate", str(example_product)]) != 0
    err = capsys.readouterr().err
    assert str(descriptor) in err
    assert f"{descriptor}: version" in err
    assert "pattern" in err


def test_validate_reports_yaml_syntax_with_line_and_column(
    example_product: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Broken YAML points at the line and column."""
    descriptor = example_product / "dataproduct.yaml"
    descriptor.write_text("name: x\nowner: {name: [unclosed\n", encoding="utf-8")
    assert main(["validate", str(example_product)]) != 0
    err = capsys.readouterr().err
    assert f"{descriptor}:3:1" in err
    assert "not valid YAML" in err


def test_validate_reports_a_rejected_model(
    example_product: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A model reading something it may not: model, rule and position of every problem."""
    (example_product / "pipeline" / "leak.sql").write_text(
        "SELECT *\nFROM read_csv('/etc/passwd')\n", encoding="utf-8"
    )
    assert main(["validate", str(example_product)]) != 0
    err = capsys.readouterr().err
    assert "error (model leak, line 2, column 6)" in err
    assert "no_outside_functions" in err
    assert "also: model leak, line 2, column 6: only_layer_tables:" in err
    assert "{'" not in err


def test_validate_reports_every_problem_readably(
    example_product: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Several problems: one line each, naming the path, no Python reprs."""
    descriptor = example_product / "dataproduct.yaml"
    text = descriptor.read_text(encoding="utf-8")
    broken = text.replace("version: 1.0.0", "version: one").replace(
        "domain: sales/europe", "domain: Sales Europe"
    )
    descriptor.write_text(broken, encoding="utf-8")
    assert main(["validate", str(example_product)]) != 0
    err = capsys.readouterr().err
    assert "domain" in err and "version" in err
    assert "{'" not in err


def test_validate_a_folder_without_descriptor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An empty folder is refused, naming the file it looked for."""
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["validate", str(empty)]) != 0
    assert "dataproduct.yaml" in capsys.readouterr().err


def test_init_writes_a_product_that_validates_and_serves(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The folder `init` writes passes validate and starts: ingested, run, published."""
    target = tmp_path / "new-product"
    assert main(["init", str(target)]) == 0
    assert f"dataproduct serve {target}" in capsys.readouterr().out
    assert (target / "dataproduct.yaml").is_file()
    assert main(["validate", str(target)]) == 0
    settings = DataproductSettings(data_dir=tmp_path / "serve-data", jwt_secret=SECRET)
    runtime = ProductRuntime.open(target, settings)
    try:
        runtime.startup()
        assert runtime.readiness.ready.is_set()
        assert runtime.readiness.problems == []
        with runtime.storage.reader() as cursor:
            names = cursor.execute(
                "SELECT name FROM meta.datasets WHERE layer = 'output' ORDER BY name"
            ).fetchall()
            rows = cursor.execute("SELECT count(*) FROM output.daily_sales").fetchall()
    finally:
        runtime.close()
    assert names == [("customer_revenue",), ("daily_sales",)]
    assert rows[0][0] > 0


def test_init_refuses_a_non_empty_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Existing work is never overwritten."""
    target = tmp_path / "busy"
    target.mkdir()
    (target / "notes.txt").write_text("mine", encoding="utf-8")
    assert main(["init", str(target)]) != 0
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in target.iterdir()] == ["notes.txt"]


def test_token_is_accepted_with_its_scope(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The printed token verifies with the secret and holds the requested scope only."""
    monkeypatch.setenv("DATAPRODUCT_JWT_SECRET", SECRET)
    assert main(["token", "--sub", "x", "--scope", "output:read", "--group", "analysts"]) == 0
    printed = capsys.readouterr().out.strip()
    principal = verify_token(DataproductSettings(jwt_secret=SECRET), printed)
    assert principal.subject == "x"
    assert principal.scopes == frozenset({"output:read"})
    assert principal.groups == frozenset({"analysts"})
    with pytest.raises(AuthenticationError):
        verify_token(
            DataproductSettings(jwt_secret="another-secret-that-is-long-enough-0123"), printed
        )


def test_token_carries_issuer_and_audience_when_configured(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With an issuer and audience set, the token passes a verifier that checks them."""
    monkeypatch.setenv("DATAPRODUCT_JWT_SECRET", SECRET)
    monkeypatch.setenv("DATAPRODUCT_JWT_ISSUER", "https://issuer.example")
    monkeypatch.setenv("DATAPRODUCT_JWT_AUDIENCE", "sales-eu")
    assert main(["token", "--sub", "x", "--scope", "control:admin"]) == 0
    printed = capsys.readouterr().out.strip()
    checking = DataproductSettings(
        jwt_secret=SECRET, jwt_issuer="https://issuer.example", jwt_audience="sales-eu"
    )
    assert verify_token(checking, printed).scopes == frozenset({"control:admin"})
    other_audience = checking.model_copy(update={"jwt_audience": "someone-else"})
    with pytest.raises(AuthenticationError):
        verify_token(other_audience, printed)


@pytest.mark.parametrize(
    ("environment", "message"),
    [
        ({}, "DATAPRODUCT_JWT_SECRET"),
        ({"DATAPRODUCT_JWT_SECRET": "short"}, "too short"),
        ({"DATAPRODUCT_ENV": "production"}, "production"),
    ],
    ids=["no secret", "short secret", "production without secret"],
)
def test_token_is_refused_without_a_usable_secret(
    environment: dict[str, str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """No token is printed when there is no secret to sign it with."""
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert main(["token", "--sub", "x", "--scope", "output:read"]) != 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert message in captured.err


def test_console_script_validates_the_example(tmp_path: Path) -> None:
    """The installed `dataproduct` script runs as a real process."""
    product = tmp_path / "copy"
    shutil.copytree(example_dir(), product, ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATAPRODUCT_")}
    ok = subprocess.run(
        [str(CONSOLE_SCRIPT), "validate", str(product)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, check=False,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "sales-eu 1.0.0: valid" in ok.stdout
    (product / "dataproduct.yaml").write_text("name: Not A Slug\n", encoding="utf-8")
    bad = subprocess.run(
        [str(CONSOLE_SCRIPT), "validate", str(product)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, check=False,
    )  # fmt: skip
    assert bad.returncode != 0
    assert "dataproduct.yaml" in bad.stderr
    assert "Traceback" not in bad.stderr
