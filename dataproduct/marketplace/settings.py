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

    def base_url(self) -> str:
        """Where people and machines reach the marketplace."""
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")
