"""Runtime settings, read from `DATAPRODUCT_*` environment variables and `/run/secrets`."""

from __future__ import annotations

import secrets
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from dataproduct.errors import ConfigurationError

SECRETS_DIR = Path("/run/secrets")
MIN_SECRET_LENGTH = 32  # HS256 keys shorter than the hash are weak (RFC 7518 3.2)


class DataproductSettings(BaseSettings):
    """How one product process runs. Every field is `DATAPRODUCT_<NAME>` in the environment."""

    model_config = SettingsConfigDict(
        env_prefix="DATAPRODUCT_",
        secrets_dir=str(SECRETS_DIR) if SECRETS_DIR.is_dir() else None,
        extra="ignore",
    )

    env: Literal["local", "production"] = "local"
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    public_url: str | None = None
    root_path: str = Field(default="", pattern=r"^(/[A-Za-z0-9._~-]+)*$")
    data_dir: Path = Path(".dataproduct")
    jwt_secret: str = ""
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_algorithms: list[str] = ["HS256"]
    oidc_issuer: str | None = None
    jwks_url: str | None = None
    jwt_groups_claim: str = "groups"
    jwt_roles_claim: str = "roles"
    admin_roles: list[str] = ["dataproduct-admin"]
    discovery_public: bool = True
    rate_limit_per_s: float = Field(default=50.0, ge=0)
    rate_limit_burst: int = Field(default=100, ge=1)
    query_timeout_s: float = Field(default=30.0, gt=0)
    result_cache_bytes: int = Field(default=64 * 1024 * 1024, ge=0)
    audit_buffer_records: int = Field(default=100_000, ge=100)
    cors_origins: list[str] = []
    security_headers: bool = True
    content_security_policy: str = (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
        "frame-ancestors 'none'"
    )
    hsts_seconds: int = Field(default=0, ge=0)
    max_upload_bytes: int = Field(default=1024 * 1024 * 1024, ge=1)
    max_json_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1)
    max_page_rows: int = Field(default=10_000, ge=1)
    default_page_rows: int = Field(default=100, ge=1)
    memory_limit: str | None = None
    threads: int | None = Field(default=None, ge=1)
    ingest_on_start: bool = True
    ingest_backoff_s: float = Field(default=0.5, ge=0)
    dataset_versions_kept: int = Field(default=3, ge=1)
    run_timeout_s: float | None = Field(default=None, gt=0)
    marketplace_url: str | None = None
    marketplace_token: str | None = None
    marketplace_heartbeat_s: float = Field(default=300.0, ge=1)
    openlineage_url: str | None = None
    openlineage_file: Path | None = None
    openlineage_namespace: str = "dataproduct"
    openlineage_api_key: str | None = None
    openlineage_timeout_s: float = Field(default=2.0, ge=0.1)
    log_level: str = "info"

    @field_validator("public_url")
    @classmethod
    def _strip_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else value

    def base_url(self) -> str:
        """The URL this product gives out in every link: `public_url` when it is behind a
        gateway, else its own address plus `root_path`."""
        if self.public_url:
            return self.public_url
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host  # noqa: S104
        return f"http://{host}:{self.port}{self.root_path}"

    def oidc_configured(self) -> bool:
        """Whether tokens may come from an OIDC issuer (an issuer or a JWKS URL is set)."""
        return bool(self.oidc_issuer or self.jwks_url)

    def require_secret(self) -> str:
        """The HS256 secret; a short one is refused, and an empty one outside local mode.

        In production with OIDC configured no secret is needed: "" then means "no HS256".
        """
        if len(self.jwt_secret) >= MIN_SECRET_LENGTH:
            return self.jwt_secret
        if self.env == "production" and self.oidc_configured() and not self.jwt_secret:
            return ""
        if self.env == "production":
            raise ConfigurationError(
                f"DATAPRODUCT_JWT_SECRET must be set to at least {MIN_SECRET_LENGTH} characters "
                "in production",
                where="DATAPRODUCT_JWT_SECRET",
            )
        if self.jwt_secret:
            raise ConfigurationError(
                f"DATAPRODUCT_JWT_SECRET is too short: use at least {MIN_SECRET_LENGTH} characters",
                where="DATAPRODUCT_JWT_SECRET",
            )
        return ""

    def with_session_secret(self) -> DataproductSettings:
        """A copy with a random secret for this session (local mode without a secret)."""
        return self.model_copy(update={"jwt_secret": secrets.token_urlsafe(32)})


@lru_cache
def get_settings() -> DataproductSettings:
    """The process-wide settings, read once. Tests build their own instances instead."""
    return DataproductSettings()
