"""Sage Business Cloud Accounting v3.1 connector."""

from connectors.sage_accounting.config import (
    SageAccountingApp,
    SageAccountingPatch,
    SageAccountingSettings,
    SageBusiness,
)
from connectors.sage_accounting.connector import SageAccountingConnector

__all__ = [
    "SageAccountingApp",
    "SageAccountingConnector",
    "SageAccountingPatch",
    "SageAccountingSettings",
    "SageBusiness",
]
