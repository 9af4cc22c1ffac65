"""The providers LedgerBridge knows, by name."""

from __future__ import annotations

from functools import cache

from connectors.base import Connector


@cache
def providers() -> dict[str, type[Connector]]:
    from connectors.sage_accounting import SageAccountingConnector
    from connectors.sage_intacct import SageIntacctConnector

    return {cls.info.name: cls for cls in (SageAccountingConnector, SageIntacctConnector)}


def get(name: str) -> type[Connector] | None:
    return providers().get(name)
