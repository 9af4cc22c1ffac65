"""The XML Web Services gateway: envelope, control and authentication levels, function dispatch.

Levels and their failures follow sage-intacct-wire.md §1.4–§1.5: a control failure answers with a
top-level ``<errormessage>`` and no ``<operation>``; an authentication failure with an operation-level
``<errormessage>`` and no ``<result>``; a function failure with a ``<result>``-level one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from lxml import etree

from .config import SimError
from .functions import FUNCTIONS, GENERIC, Ctx, FnResult, Session
from .state import SimState
from .values import iso_offset
from .xmlio import (
    child_text,
    elements,
    errormessage,
    log_entries,
    new_parser,
    parse_error,
    serialize,
    sub,
    validate_request,
)

ROLLED_BACK = SimError(
    "XL03000009", "The entire transaction in this operation has been rolled back due to an error."
)


@dataclass
class Call:
    controlid: str
    name: str
    body: etree._Element
    objects: list[str]

    def counter_keys(self) -> list[str]:
        if self.name in GENERIC and self.objects:
            return [f"XML {self.name}:{name}" for name in self.objects]
        return [f"XML {self.name}"]


@dataclass
class Operation:
    transaction: bool
    authentication: etree._Element
    calls: list[Call]


@dataclass
class Prepared:
    """A parsed request, ready to execute once faults and limits have been applied."""

    senderid: str = ""
    sender_password: str = ""
    controlid: str = ""
    uniqueid_text: str = "true"
    dtdversion: str = "3.0"
    pretty: bool = True
    operations: list[Operation] = field(default_factory=list)
    company_id: str | None = None
    immediate: bytes | None = None
    rejected_keys: list[str] = field(default_factory=list)

    @property
    def unique(self) -> bool:
        # factcheck #15: "When set to true, which is the default, a request cannot be repeated."
        return self.uniqueid_text.strip().lower() != "false"

    def counter_keys(self) -> list[str]:
        keys = [key for op in self.operations for call in op.calls for key in call.counter_keys()]
        return keys or self.rejected_keys


@dataclass
class AuthResult:
    ctx: Ctx | None
    userid: str
    companyid: str
    errors: list[SimError]


class XmlGateway:
    def __init__(self, state: SimState) -> None:
        self.state = state

    # ------------------------------------------------------------------------------------------ parsing

    def prepare(self, body: bytes) -> Prepared:
        parser = new_parser()
        try:
            root = etree.fromstring(body, parser)
        except etree.XMLSyntaxError:
            errors = [
                parse_error(e) for e in log_entries(parser.error_log) if e.level_name in ("FATAL", "ERROR")
            ]
            prepared = self._echo_control(body)
            return self._control_failure(
                prepared, errors or [SimError("XL03000003", "XML Parse schema error")]
            )
        prepared = self._read_control(root)
        if getattr(root.getroottree().docinfo, "doctype", ""):
            # The gateway never needs a DTD; refusing it closes XXE and entity expansion (STYLE.md).
            return self._control_failure(
                prepared,
                [
                    SimError(
                        "XL03000003",
                        "XML Parse schema error: Fatal Error 0: DOCTYPE is not allowed. Line: 1, column: 0.",
                    )
                ],
            )
        schema_errors = validate_request(root)
        if schema_errors:
            # The functions were sent even though none runs: count them for the fault switches.
            for function in root.iterfind("operation/content/function"):
                for body_el in elements(function)[:1]:
                    call = Call(function.get("controlid", ""), str(body_el.tag), body_el, [])
                    call.objects = self._objects(call, None)
                    prepared.rejected_keys += call.counter_keys()
            return self._control_failure(prepared, schema_errors)
        for operation in root.iterfind("operation"):
            authentication = operation.find("authentication")
            assert authentication is not None  # guaranteed by the envelope schema
            calls: list[Call] = []
            for function in operation.iterfind("content/function"):
                body_el = elements(function)[0]
                calls.append(Call(function.get("controlid", ""), str(body_el.tag), body_el, []))
            prepared.operations.append(
                Operation(operation.get("transaction") == "true", authentication, calls)
            )
        prepared.company_id = self._company_hint(prepared)
        for op in prepared.operations:
            company = self._auth_company(op.authentication)
            for call in op.calls:
                call.objects = self._objects(call, company)
        return prepared

    def _read_control(self, root: etree._Element) -> Prepared:
        prepared = Prepared()
        control = root.find("control")
        if control is not None:
            prepared.senderid = child_text(control, "senderid") or ""
            prepared.sender_password = child_text(control, "password") or ""
            prepared.controlid = child_text(control, "controlid") or ""
            prepared.uniqueid_text = child_text(control, "uniqueid") or "true"
            prepared.dtdversion = child_text(control, "dtdversion") or "3.0"
            prepared.pretty = (child_text(control, "includewhitespace") or "true").lower() != "false"
        return prepared

    def _echo_control(self, body: bytes) -> Prepared:
        """Best-effort echo of the control block of a malformed request, as in fixture
        xml_control_failure_xml_parse_error.xml (senderid and controlid still echoed)."""
        parser = etree.XMLParser(
            recover=True, resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False
        )
        try:
            root = etree.fromstring(body, parser)
        except etree.XMLSyntaxError:
            return Prepared()
        return Prepared() if root is None else self._read_control(root)

    def _auth_company(self, authentication: etree._Element) -> str | None:
        login = authentication.find("login")
        if login is not None:
            company, _ = split_companyid(child_text(login, "companyid") or "")
            return company if company in self.state.companies else None
        session_id = child_text(authentication, "sessionid")
        return self.state.company_of_session(session_id) if session_id else None

    def _company_hint(self, prepared: Prepared) -> str | None:
        for op in prepared.operations:
            company = self._auth_company(op.authentication)
            if company:
                return company
        return None

    def _objects(self, call: Call, company_id: str | None) -> list[str]:
        if call.name in ("create", "update"):
            seen: list[str] = []
            for element in elements(call.body):
                if str(element.tag) not in seen:
                    seen.append(str(element.tag))
            return seen
        if call.name == "readMore":
            result_id = child_text(call.body, "resultId")
            company = self.state.companies.get(company_id or "")
            cursor = company.cursors.get(result_id) if company and result_id else None
            if cursor is not None:
                return [cursor.object_name]
        name = (child_text(call.body, "object") or "").upper()
        return [name] if name and call.name in GENERIC else []

    # ------------------------------------------------------------------------------------------ responses

    def _control_failure(self, prepared: Prepared, errors: list[SimError]) -> Prepared:
        root = etree.Element("response")
        self._control(root, prepared, "failure")
        errormessage(root, errors)
        prepared.immediate = serialize(root, prepared.pretty)
        return prepared

    def _control(self, root: etree._Element, prepared: Prepared, status: str) -> None:
        control = sub(root, "control", None)
        sub(control, "status", status)
        sub(control, "senderid", prepared.senderid)
        sub(control, "controlid", prepared.controlid)
        sub(control, "uniqueid", prepared.uniqueid_text)
        sub(control, "dtdversion", prepared.dtdversion)

    def execute(self, prepared: Prepared) -> bytes:
        if prepared.immediate is not None:
            return prepared.immediate
        senders = self.state.config.senders
        if senders.get(prepared.senderid) != prepared.sender_password or not prepared.senderid:
            # §1.5: wrong sender id/password is a control-level failure.
            return (
                self._control_failure(
                    prepared, [SimError("XL03000006", "Incorrect Intacct XML Partner ID or password.")]
                ).immediate
                or b""
            )
        root = etree.Element("response")
        self._control(root, prepared, "success")
        for op in prepared.operations:
            op_el = sub(root, "operation", None)
            auth = self._authenticate(op.authentication, prepared.senderid)
            auth_el = sub(op_el, "authentication", None)
            if auth.ctx is None:
                sub(auth_el, "status", "failure")
                sub(auth_el, "userid", auth.userid)
                sub(auth_el, "companyid", auth.companyid)
                errormessage(op_el, auth.errors)
                continue
            ctx = auth.ctx
            expires = (
                ctx.session.expires_at if ctx.session else self.state.now() + self.state.config.session_ttl
            )
            sub(auth_el, "status", "success")
            sub(auth_el, "userid", ctx.user_id)
            sub(auth_el, "companyid", ctx.company.company_id)
            sub(auth_el, "locationid", ctx.entity)
            sub(auth_el, "sessiontimestamp", iso_offset(self.state.now()))
            sub(auth_el, "sessiontimeout", iso_offset(expires))
            for call, result in zip(op.calls, self._run(ctx, op, prepared.unique), strict=True):
                self._result(op_el, call, result)
        return serialize(root, prepared.pretty)

    def _result(self, parent: etree._Element, call: Call, result: FnResult) -> None:
        # DTD order: status, function, controlid, key?, data?, errormessage? (§1.4)
        element = sub(parent, "result", None)
        sub(element, "status", result.status)
        sub(element, "function", call.name)
        sub(element, "controlid", call.controlid)
        if result.key is not None:
            sub(element, "key", result.key)
        if result.data is not None:
            element.append(result.data)
        if result.errors:
            errormessage(element, result.errors)

    # ------------------------------------------------------------------------------------------ levels

    def _authenticate(self, authentication: etree._Element, senderid: str) -> AuthResult:
        now = self.state.now_dt()
        login = authentication.find("login")
        if login is not None:
            userid = child_text(login, "userid") or ""
            companyid = child_text(login, "companyid") or ""
            company_id, entity = split_companyid(companyid)
            location = child_text(login, "locationid")
            if location:
                entity = location
            company = self.state.companies.get(company_id)
            bad = AuthResult(
                None, userid, companyid, [SimError("XL03000006", "Sign-in information is incorrect")]
            )
            if company is None or company.config.users.get(userid) != (child_text(login, "password") or ""):
                return bad
            if entity and entity not in company.config.entities:
                return bad
            denied = self._sender_denied(senderid, company_id, userid, companyid)
            if denied:
                return denied
            ctx = Ctx(
                company, userid, entity, None, now, self.state.endpoint, self._opener(company_id, userid)
            )
            return AuthResult(ctx, userid, company_id, [])
        session_id = child_text(authentication, "sessionid")
        if session_id is not None:
            session = self.state.live_session(session_id)
            if session is None:
                # Fixture xml_auth_failure_invalid_session.xml: empty userid/companyid, "Invalid session …".
                return AuthResult(None, "", "", [SimError("XL03000006", f"Invalid session {session_id}")])
            denied = self._sender_denied(senderid, session.company_id, session.user_id, session.company_id)
            if denied:
                return denied
            company = self.state.companies[session.company_id]
            ctx = Ctx(
                company,
                session.user_id,
                session.entity,
                session,
                now,
                self.state.endpoint,
                self._opener(session.company_id, session.user_id),
            )
            return AuthResult(ctx, session.user_id, session.company_id, [])
        return AuthResult(None, "", "", [SimError("XL03000006", "OAuth authentication is not supported")])

    def _opener(self, company_id: str, user_id: str) -> Callable[[str], Session]:
        def open_session(entity: str) -> Session:
            return self.state.open_session(company_id, user_id, entity)

        return open_session

    def _sender_denied(
        self, senderid: str, company_id: str, userid: str, companyid: str
    ) -> AuthResult | None:
        allowed = self.state.companies[company_id].config.authorized_senders
        if allowed is None or senderid in allowed:
            return None
        # developer.intacct.com/support/faq/ (sage-intacct-wire.md §1.5).
        return AuthResult(
            None,
            userid,
            companyid,
            [
                SimError(
                    "XL03000006",
                    f"The sender ID '{senderid}' is not authorized to make Web Services requests to company "
                    f"ID '{company_id}'.",
                    "Invalid Web Services Authorization",
                    "Contact the company administrator to grant Web Services authorization to this sender ID.",
                )
            ],
        )

    def _run(self, ctx: Ctx, op: Operation, unique: bool) -> list[FnResult]:
        """Run the functions of one operation in order (§1.2 transaction semantics)."""
        company = ctx.company
        op_savepoint = company.savepoint()
        results: list[FnResult] = []
        failed = False
        for call in op.calls:
            if failed:
                results.append(FnResult(status="aborted", errors=[ROLLED_BACK]))
                continue
            result = self._run_one(ctx, call, unique)
            if op.transaction and result.status == "failure":
                failed = True
                company.rollback(op_savepoint)
                # Recorded aborted results keep the function's own error and add XL03000009 (PHP SDK
                # ResultTest::testStatusAbort); the other functions carry XL03000009 only.
                result = FnResult(status="aborted", errors=[*result.errors, ROLLED_BACK])
            elif not op.transaction and result.status == "success" and unique:
                company.completed_controlids.add(call.controlid)
            results.append(result)
        if failed:
            results = [
                r if r.status == "aborted" else FnResult(status="aborted", errors=[ROLLED_BACK])
                for r in results
            ]
        elif op.transaction and unique:
            company.completed_controlids.update(call.controlid for call in op.calls)
        company.commit()
        return results

    def _run_one(self, ctx: Ctx, call: Call, unique: bool) -> FnResult:
        company = ctx.company
        if unique and call.controlid in company.completed_controlids:
            # factcheck #15: with uniqueid=true a function controlid that already completed is refused
            # and nothing runs; the error itself is undocumented (SimConfig.duplicate_controlid_error).
            template = self.state.config.duplicate_controlid_error
            return FnResult(
                status="failure",
                errors=[
                    SimError(
                        template.errorno,
                        template.description2.format(controlid=call.controlid),
                        template.description.format(controlid=call.controlid),
                        template.correction.format(controlid=call.controlid),
                    )
                ],
            )
        handler = FUNCTIONS.get(call.name)
        if handler is None:
            return FnResult(
                status="failure",
                errors=[SimError("BL01001973", f"Function {call.name} is not supported by the simulator")],
            )
        savepoint = company.savepoint()
        result = handler(ctx, call.body)
        if result.status == "failure" and call.name not in ("create", "update"):
            company.rollback(savepoint)
        return result


def split_companyid(companyid: str) -> tuple[str, str]:
    """``company``, ``company|entity`` or ``console|company|entity`` (§1.2 login variants)."""
    parts = [p.strip() for p in companyid.split("|")]
    if len(parts) >= 3:
        return parts[1], parts[2]
    if len(parts) == 2:
        return parts[0], parts[1]
    return parts[0], ""
