"""State shared by the XML gateway and the REST API: companies, sessions, tokens and the clock."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime

from .config import SimConfig
from .functions import Session
from .seed import seed_company
from .store import CompanyState
from .values import utc

XML_PATH = "/ia/xml/xmlgw.phtml"


@dataclass
class Token:
    company_id: str
    user_id: str
    entity: str
    client_id: str
    expires_at: float


class SimState:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.companies: dict[str, CompanyState] = {}
        self.sessions: dict[str, Session] = {}
        self.access_tokens: dict[str, Token] = {}
        self.refresh_tokens: dict[str, Token] = {}
        now = self.now_dt()
        for company_config in config.companies:
            company = CompanyState(company_config, max_cursors=config.max_cursors)
            if company_config.seed:
                seed_company(company, now)
            self.companies[company_config.company_id] = company

    def now(self) -> float:
        return self.config.clock()

    def now_dt(self) -> datetime:
        """UTC wall time without zone: "Dates in Sage Intacct do not have associated timezones" (§2.8)."""
        return utc(self.now()).replace(tzinfo=None, microsecond=0)

    @property
    def endpoint(self) -> str:
        return self.config.public_url.rstrip("/") + XML_PATH

    def open_session(self, company_id: str, user_id: str, entity: str) -> Session:
        # Recorded session ids end in ".." (fixture xml_getapisession_success.xml, docs example).
        session_id = secrets.token_urlsafe(24) + ".."
        session = Session(session_id, company_id, user_id, entity, self.now() + self.config.session_ttl)
        self.sessions[session_id] = session
        return session

    def live_session(self, session_id: str) -> Session | None:
        """The session if it has not timed out; a call before the timeout slides it (§1.3)."""
        session = self.sessions.get(session_id)
        if session is None:
            return None
        now = self.now()
        if now >= session.expires_at:
            del self.sessions[session_id]
            return None
        session.expires_at = now + self.config.session_ttl
        return session

    def expire_sessions(self) -> int:
        count = len(self.sessions)
        self.sessions.clear()
        return count

    def expire_tokens(self) -> int:
        count = len(self.access_tokens)
        self.access_tokens.clear()
        return count

    def company_of_session(self, session_id: str) -> str | None:
        session = self.sessions.get(session_id)
        return session.company_id if session else None
