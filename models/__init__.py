"""SQLAlchemy 2 tables. Tables only: no behaviour, no imports of the gateway or the connectors."""

from models.tables import (
    ApiKey,
    Base,
    Connection,
    Credential,
    IdempotencyRecord,
    OAuthState,
    RateLimitBucket,
    RateLimitSlot,
    RequestLog,
    Tenant,
    WriteIntent,
)

__all__ = [
    "ApiKey",
    "Base",
    "Connection",
    "Credential",
    "IdempotencyRecord",
    "OAuthState",
    "RateLimitBucket",
    "RateLimitSlot",
    "RequestLog",
    "Tenant",
    "WriteIntent",
]
