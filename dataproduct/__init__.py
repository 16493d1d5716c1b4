"""dataproduct: one data product as one small, secure, self-describing service."""

__version__ = "0.1.0"
