"""How the marketplace service runs. Every field is `DATAPRODUCT_MARKETPLACE_<NAME>`.

Credentials are checked like a product checks them (the organisation's shared secret or
OIDC issuer, from the `DATAPRODUCT_JWT_*` and `DATAPRODUCT_OIDC_*` settings): products and
the marketplace trust the same issuer.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from dataproduct.marketplace.publication import MAX_PUBLICATION_BYTES

PUBLISH_SCOPE = "marketplace:publish"
ADMIN_SCOPE = "marketplace:admin"


class MarketplaceSettings(BaseSettings):
    """The marketplace's address, store and limits."""

    model_config = SettingsConfigDict(env_prefix="DATAPRODUCT_MARKETPLACE_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8090, ge=1, le=65535)
    database_url: str = "sqlite:///.dataproduct/marketplace.db"
    public_url: str | None = None
    public_read: bool = False
    stale_after_s: float = Field(default=3600.0, gt=0)
    max_publication_bytes: int = Field(default=MAX_PUBLICATION_BYTES, ge=1024)
    # Access requests: the credential used on products' control ports (scope control:admin,
    # issued by the organisation), who approves besides a product's owner, and the sweep.
    product_token: str | None = Field(default=None, repr=False)
    approver_groups: list[str] = []
    # where products' control ports may be: the marketplace's credential is sent nowhere else
    # (empty: anywhere, for local use; set it in production, e.g. https://mesh.example.com/)
    product_url_prefixes: list[str] = []
    access_sweep_s: float = Field(default=30.0, gt=0)
    grant_timeout_s: float = Field(default=10.0, gt=0)
    grant_retry_base_s: float = Field(default=5.0, gt=0)
    grant_retry_max_s: float = Field(default=3600.0, gt=0)
    # Sign-in of people (web pages) through the organisation's OIDC issuer; the issuer
    # defaults to DATAPRODUCT_OIDC_ISSUER. An empty session secret means a random one per
    # process (sessions end when it restarts).
    oidc_issuer: str | None = None
    oidc_client_id: str = "dataproduct-marketplace"
    oidc_client_secret: str | None = None
    oidc_scopes: str = "openid email profile"
    oidc_algorithms: list[str] = ["RS256", "ES256"]
    session_secret: str = ""
    session_ttl_s: int = Field(default=8 * 3600, ge=60)
    # Crawling products that cannot push, and the staleness sweep (`crawler.py`).
    admin_groups: list[str] = []
    crawl_token: str | None = None
    crawl_interval_s: float = Field(default=3600.0, ge=1)
    crawl_timeout_s: float = Field(default=10.0, gt=0, le=120)
    crawl_max_bytes: int = Field(default=MAX_PUBLICATION_BYTES, ge=1024)
    unreachable_after_s: float = Field(default=86400.0, gt=0)
    sweep_interval_s: float = Field(default=60.0, gt=0)

    def base_url(self) -> str:
        """Where people and machines reach the marketplace."""
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")
