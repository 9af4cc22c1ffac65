"""Sage Intacct connector (XML gateway and REST)."""

from connectors.sage_intacct.config import (
    SageIntacctApp,
    SageIntacctCredentials,
    SageIntacctRestCredentials,
    SageIntacctSettings,
)
from connectors.sage_intacct.connector import SageIntacctConnector
from connectors.sage_intacct.xml import XmlResponse, parse_response

__all__ = [
    "SageIntacctApp",
    "SageIntacctConnector",
    "SageIntacctCredentials",
    "SageIntacctRestCredentials",
    "SageIntacctSettings",
    "XmlResponse",
    "parse_response",
]
