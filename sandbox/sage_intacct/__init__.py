"""Simulated Sage Intacct: the XML Web Services gateway and the REST API over shared in-memory companies.

Behaviour follows ``shared/docs/sage-intacct-wire.md`` and the recorded fixtures in
``shared/fixtures/intacct/``; comments cite the section each rule comes from.
"""

from .app import SageIntacctSimulator, SimulatedConnectionDrop
from .config import CompanyConfig, SimConfig, SimError

__all__ = ["CompanyConfig", "SageIntacctSimulator", "SimConfig", "SimError", "SimulatedConnectionDrop"]
