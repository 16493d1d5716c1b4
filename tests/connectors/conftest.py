"""Fixtures shared by the connector tests."""

from tests.connectors.upstream import country  # noqa: F401  (a fixture)
