"""Simulator of Sage Business Cloud Accounting v3.1 (OAuth server + ``/v3.1`` API), per
``../shared/docs/sage-accounting-wire.md``. See ``SageAccountingSimulator`` for the routes and controls."""

from .app import SageAccountingSimulator, SimulatedDisconnect
from .config import SimBusiness, SimConfig, SimUser

__all__ = ["SageAccountingSimulator", "SimBusiness", "SimConfig", "SimUser", "SimulatedDisconnect"]
