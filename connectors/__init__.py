"""LedgerBridge connectors: a pure library, usable without the gateway.

``connectors.base`` is the contract every provider implements, ``connectors.models`` the unified
records, ``connectors.errors`` the error tree and ``connectors.http`` the one place where upstream calls
are retried. One sub-package per provider; ``connectors.registry`` lists them.
"""
