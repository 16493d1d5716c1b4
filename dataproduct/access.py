"""Access control of one product: credentials, grants, policy, audit, metrics and limits.

The ports call this for every request: `authenticate` turns a credential (a JWT or an API
key) into a principal, `read_access` / `require_write` / `require_admin` decide, and the
audit log and metrics record what happened.
"""

from __future__ import annotations

import secrets
import time

from sqlglot import exp

from dataproduct.apikeys import ApiKeyStore, looks_like_key
from dataproduct.audit import AuditLog
from dataproduct.catalog import PublishedDataset
from dataproduct.descriptor import ProductDescriptor
from dataproduct.errors import PermissionDeniedError, ValidationError
from dataproduct.grants import GrantSpec, GrantStore, check_row_filter
from dataproduct.metrics import Metrics
from dataproduct.policy import DatasetAccess, Policy
from dataproduct.ratelimit import RateLimiter
from dataproduct.security import Principal, verify_token
from dataproduct.settings import DataproductSettings
from dataproduct.storage import Storage, fetch_value

TOKEN_MEMORY_S = 60.0  # a verified JWT is trusted this long (never past its expiry)
MAX_KNOWN_TOKENS = 10_000
DECISION_MEMORY_S = 1.0
SECRETS_DDL = "CREATE TABLE IF NOT EXISTS meta.secrets (name VARCHAR PRIMARY KEY, value VARCHAR)"


class AccessControl:
    """Who is calling and what they may see, for one product."""

    def __init__(
        self, descriptor: ProductDescriptor, storage: Storage, settings: DataproductSettings
    ) -> None:
        self.descriptor = descriptor
        self.settings = settings
        self.grants = GrantStore(storage)
        self.grants.sync_descriptor(list(descriptor.access))
        self.api_keys = ApiKeyStore(storage)
        self.audit = AuditLog(storage, max_buffered=settings.audit_buffer_records)
        self.metrics = Metrics(storage)
        self.limiter = RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)
        self._salt = _mask_salt(storage)
        self._policy: Policy | None = None
        self._tokens: dict[str, tuple[Principal, float]] = {}
        self._decisions: dict[tuple[int, Principal, str], tuple[DatasetAccess | None, float]] = {}

    @property
    def policy(self) -> Policy:
        """The policy over the current grants (rebuilt when they change)."""
        grants = self.grants.all()
        if self._policy is None or self._policy.grants is not grants:
            self._policy = Policy(
                self.descriptor,
                grants,
                admin_roles=frozenset(self.settings.admin_roles),
                salt=self._salt,
            )
        return self._policy

    def authenticate(self, credential: str) -> Principal:
        """The principal of a bearer JWT or an API key; AuthenticationError otherwise."""
        if looks_like_key(credential):
            return self.api_keys.verify(credential)  # never cached: revocation is at once
        known = self.known_token(credential)
        if known is not None:
            return known
        principal = verify_token(self.settings, credential)
        if len(self._tokens) >= MAX_KNOWN_TOKENS:
            self._tokens.clear()
        until = min(principal.expires_at or 0.0, time.time() + TOKEN_MEMORY_S)
        self._tokens[credential] = (principal, until)
        return principal

    def known_token(self, credential: str) -> Principal | None:
        """A JWT verified moments ago (still unexpired), without checking it again; or an
        API key, which costs one hash to check."""
        if looks_like_key(credential):
            return self.api_keys.verify(credential)
        known = self._tokens.get(credential)
        if known is None or known[1] <= time.time():
            return None
        return known[0]

    def require_admin(self, principal: Principal) -> None:
        """PermissionDeniedError unless the principal administers the product."""
        if not self.policy.is_admin(principal):
            raise PermissionDeniedError(
                "this needs the administrator role (the scope 'control:admin' or one of the "
                f"roles {', '.join(self.settings.admin_roles)})",
                where="scope",
            )

    def read_access(self, principal: Principal, dataset: str) -> DatasetAccess:
        """How the principal reads the dataset; PermissionDeniedError without a grant.

        A decision is remembered for a second (grants expire to the second) and forgotten
        at once when the grants change.
        """
        key = (self.grants.version, principal, dataset)
        now = time.monotonic()
        known = self._decisions.get(key)
        if known is not None and known[1] > now:
            access = known[0]
        else:
            access = self.policy.read_access(principal, dataset)
            if len(self._decisions) >= MAX_KNOWN_TOKENS:
                self._decisions.clear()
            self._decisions[key] = (access, now + DECISION_MEMORY_S)
        if access is None:
            raise PermissionDeniedError(
                f"'{principal.subject}' has no read grant on the dataset '{dataset}'; "
                "ask its owner for access",
                where=f"datasets/{dataset}",
            )
        return access

    def require_write(self, principal: Principal, source: str) -> None:
        """PermissionDeniedError unless the principal may push to the source."""
        if not self.policy.can_write(principal, source):
            raise PermissionDeniedError(
                f"'{principal.subject}' has no write grant on the source '{source}'",
                where=f"sources/{source}",
            )

    def check_grants(self, specs: list[GrantSpec], published: list[PublishedDataset]) -> None:
        """Refuse grants naming unknown sources, or masks and filters on unknown columns."""
        columns = {d.name: {c["name"] for c in d.columns} for d in published}
        for index, spec in enumerate(specs):
            where = f"grants[{index}]"
            if spec.source is not None and spec.source not in self.descriptor.sources:
                raise ValidationError(f"unknown source '{spec.source}'", where=f"{where}.source")
            known = columns.get(spec.dataset or "")
            if known is None:
                continue
            named = set(spec.masks)
            if spec.row_filter:
                named |= {c.name for c in check_row_filter(spec.row_filter).find_all(exp.Column)}
            unknown = sorted(named - known)
            if unknown:
                raise ValidationError(
                    f"{spec.dataset} has no column(s) {', '.join(unknown)}",
                    where=f"{where}.masks" if set(unknown) & set(spec.masks) else where,
                )

    def close(self) -> None:
        """Write the audit records still buffered."""
        self.audit.close()


def _mask_salt(storage: Storage) -> str:
    """The product's key for hashed masks: random, made once, kept in `meta`."""
    with storage.transaction() as cursor:
        cursor.execute(SECRETS_DDL)
        salt = fetch_value(cursor, "SELECT value FROM meta.secrets WHERE name = 'mask_salt'")
        if salt is None:
            salt = secrets.token_hex(16)
            cursor.execute("INSERT INTO meta.secrets VALUES ('mask_salt', ?)", [salt])
    return str(salt)
