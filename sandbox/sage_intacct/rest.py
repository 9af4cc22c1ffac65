"""The REST API under ``/ia/api/v1`` (sage-intacct-wire.md §3) over the same company data as XML."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

from starlette.responses import Response

from .jsonio import JSON, dumps, loads
from .objects import WriteError, create_party, delete_records, update_party, visible
from .schema import SCHEMAS
from .state import SimState, Token
from .values import Record, get_path, parse_decimal, timestamp_to_iso_z

JSON_TYPE = "application/json"
QUERY_MAX = 4000  # §3.4 "size": "4000 maximum"
LIST_MAX = 100  # list operations return "up to 100 object references"


class RestError(Exception):
    def __init__(self, status: int, body: JSON) -> None:
        super().__init__(str(body))
        self.status = status
        self.body = body


def json_response(body: JSON, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(dumps(body), status_code=status, headers=headers, media_type=JSON_TYPE)


def support_id() -> str:
    return secrets.token_urlsafe(24)


def ia_error(
    status: int,
    code: str,
    message: str,
    *,
    error_id: str | None = None,
    details: list[JSON] | None = None,
    extra: Mapping[str, JSON] | None = None,
) -> RestError:
    """The ``error-response`` envelope (fixture rest_error_400_invalid_request.json, §3.3)."""
    error: dict[str, JSON] = {"code": code, "message": message}
    if error_id:
        error["errorId"] = error_id
    if extra:
        error.update(extra)
    if details:
        error["details"] = details
    error["supportId"] = support_id()
    return RestError(
        status,
        {
            "ia::result": {"ia::error": error},
            "ia::meta": {"totalCount": 1, "totalSuccess": 0, "totalError": 1},
        },
    )


def gateway_error(status: int, code: str, message: str) -> RestError:
    """Gateway-level errors come as a bare ``{"error": {...}}`` (third-party observation, §3.3)."""
    return RestError(status, {"error": {"code": code, "message": message, "supportId": support_id()}})


def missing_payload(operation: str) -> RestError:
    # Fixture rest_error_400_invalid_request.json, verbatim apart from the operation.
    return ia_error(
        400,
        "invalidRequest",
        f"A {operation} request requires a payload",
        error_id="REST-1028",
        extra={
            "additionalInfo": {
                "messageId": "IA.REQUEST_REQUIRES_A_PAYLOAD",
                "placeholders": {"OPERATION": operation},
                "propertySet": {},
            }
        },
    )


def invalid_field(path: str) -> RestError:
    # §3.3: details item {"message": "/newDate is not a valid field", "errorId": "REST-1043", "target": ...}
    return ia_error(
        400,
        "invalidRequest",
        f"/{path} is not a valid field",
        details=[
            {
                "code": "invalidRequest",
                "message": f"/{path} is not a valid field",
                "errorId": "REST-1043",
                "target": f"/{path}",
            }
        ],
    )


def business_error(exc: WriteError) -> RestError:
    details: list[JSON] = [
        {"code": "invalidRequest", "message": e.description2, "errorId": e.errorno} for e in exc.errors
    ]
    return ia_error(422, "invalidRequest", exc.errors[0].description2, details=details)


# ---------------------------------------------------------------------------------------------- mapping


def _text(record: Record, name: str) -> str | None:
    value = get_path(record, name)
    return value if value else None


def _audit(record: Record) -> dict[str, JSON]:
    return {
        "createdDateTime": timestamp_to_iso_z(str(record.get("WHENCREATED", ""))),
        "modifiedDateTime": timestamp_to_iso_z(str(record.get("WHENMODIFIED", ""))),
        "createdBy": _text(record, "CREATEDBY"),
        "modifiedBy": _text(record, "MODIFIEDBY"),
    }


# §3.5: customer/vendor fields. The contact sub-fields under contacts.default are not verified (§3.5).
_CONTACT_MAP = {
    "printAs": "PRINTAS",
    "companyName": "COMPANYNAME",
    "firstName": "FIRSTNAME",
    "lastName": "LASTNAME",
    "phone1": "PHONE1",
    "email1": "EMAIL1",
    "email2": "EMAIL2",
}
_BILLING_TYPES = {"openitem": "openItem", "balanceforward": "balanceForward"}
_ACCOUNT_TYPES = {"balancesheet": "balanceSheet", "incomestatement": "incomeStatement"}
_CLOSING_TYPES = {"non-closing account": "nonClosingAccount", "closing account": "closingAccount"}


@dataclass(frozen=True)
class RestObject:
    path: str
    xml_object: str
    writable: bool
    to_rest: Callable[[Record, str], dict[str, JSON]]

    def href(self, key: str) -> str:
        return f"/objects/{self.path}/{key}"


def _party_to_rest(id_field: str) -> Callable[[Record, str], dict[str, JSON]]:
    def convert(record: Record, path: str) -> dict[str, JSON]:
        key = str(record.get("RECORDNO", ""))
        limit = parse_decimal(str(record.get("CREDITLIMIT", "")))
        contact: dict[str, JSON] = {"id": _text(record, "DISPLAYCONTACT.CONTACTNAME")}
        contact.update({k: _text(record, f"DISPLAYCONTACT.{v}") for k, v in _CONTACT_MAP.items()})
        body: dict[str, JSON] = {
            "key": key,
            "id": _text(record, id_field),
            "name": _text(record, "NAME"),
            "status": _text(record, "STATUS"),
            "taxId": _text(record, "TAXID"),
            "creditLimit": limit,
            "isOnHold": record.get("ONHOLD") == "true",
            "parent": {"id": _text(record, "PARENTID")},
            "contacts": {"default": contact},
        }
        if id_field == "VENDORID":
            body["billingType"] = _BILLING_TYPES.get(str(record.get("BILLINGTYPE", "")))
        body["audit"] = _audit(record)
        body["href"] = f"/objects/{path}/{key}"
        return body

    return convert


def _account_to_rest(record: Record, path: str) -> dict[str, JSON]:
    key = str(record.get("RECORDNO", ""))
    return {
        "key": key,
        "id": _text(record, "ACCOUNTNO"),
        "name": _text(record, "TITLE"),
        "accountType": _ACCOUNT_TYPES.get(str(record.get("ACCOUNTTYPE", ""))),
        "normalBalance": _text(record, "NORMALBALANCE"),
        "closingType": _CLOSING_TYPES.get(str(record.get("CLOSINGTYPE", ""))),
        "status": _text(record, "STATUS"),
        "audit": _audit(record),
        "href": f"/objects/{path}/{key}",
    }


OBJECTS: dict[str, RestObject] = {
    o.path: o
    for o in (
        RestObject("accounts-receivable/customer", "CUSTOMER", True, _party_to_rest("CUSTOMERID")),
        RestObject("accounts-payable/vendor", "VENDOR", True, _party_to_rest("VENDORID")),
        RestObject("general-ledger/account", "GLACCOUNT", False, _account_to_rest),
    )
}


def _flatten(value: JSON, prefix: str = "") -> dict[str, JSON]:
    if isinstance(value, dict):
        out: dict[str, JSON] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


def rest_fields(obj: RestObject) -> frozenset[str]:
    blank: Record = {name: "" for name in SCHEMAS[obj.xml_object].fields}
    return frozenset(_flatten(obj.to_rest(blank, obj.path)))


def payload_to_values(obj: RestObject, payload: Mapping[str, Any]) -> Record:
    """A REST create/update body as XML field values; read-only properties are ignored."""
    id_field = SCHEMAS[obj.xml_object].id_field or ""
    values: Record = {}
    contact: dict[str, str] = {}
    for key, value in payload.items():
        if key in ("key", "href", "audit"):
            continue
        if key == "id":
            values[id_field] = _scalar(value, key)
        elif key == "name":
            values["NAME"] = _scalar(value, key)
        elif key == "status":
            status = _scalar(value, key)
            if status not in ("active", "inactive"):
                raise ia_error(400, "invalidRequest", f"'{status}' is not a valid value for /status")
            values["STATUS"] = status
        elif key == "taxId":
            values["TAXID"] = _scalar(value, key)
        elif key == "creditLimit":
            values["CREDITLIMIT"] = _scalar(value, key)
        elif key == "isOnHold":
            if not isinstance(value, bool):
                raise ia_error(400, "invalidRequest", "/isOnHold must be a boolean")
            values["ONHOLD"] = "true" if value else "false"
        elif key == "parent" and isinstance(value, dict) and set(value) <= {"id", "key"}:
            values["PARENTID"] = _scalar(value.get("id"), "parent/id")
        elif key == "billingType" and obj.xml_object == "VENDOR":
            reverse = {v: k for k, v in _BILLING_TYPES.items()}
            billing = _scalar(value, key)
            if billing not in reverse:
                raise ia_error(400, "invalidRequest", f"'{billing}' is not a valid value for /billingType")
            values["BILLINGTYPE"] = reverse[billing]
        elif key == "contacts" and isinstance(value, dict) and set(value) <= {"default"}:
            default = value.get("default") or {}
            if not isinstance(default, dict):
                raise invalid_field("contacts/default")
            for name, item in default.items():
                if name in ("id", "key", "href"):
                    continue
                if name not in _CONTACT_MAP:
                    raise invalid_field(f"contacts/default/{name}")
                contact[_CONTACT_MAP[name]] = _scalar(item, name)
        else:
            raise invalid_field(key)
    if contact:
        values["DISPLAYCONTACT"] = dict(contact)
    return values


def _scalar(value: Any, name: str) -> str:
    if value is None:
        return ""
    if isinstance(value, (bool, dict | list)):
        raise ia_error(400, "invalidRequest", f"/{name} has an invalid type")
    return str(value)


# ---------------------------------------------------------------------------------------------- API


@dataclass
class Principal:
    token: Token
    entity: str


class RestApi:
    def __init__(self, state: SimState) -> None:
        self.state = state
        self._secret = secrets.token_bytes(32)

    # ------------------------------------------------------------------------------------------ OAuth

    def token(self, content_type: str, body: bytes, authorization: str | None) -> Response:
        """``POST /oauth2/token`` (§3.1): client_credentials and refresh_token grants. Errors use the
        RFC 6749 shape ``{"error": "invalid_grant"}``."""
        try:
            params = self._token_params(content_type, body)
        except ValueError:
            return json_response({"error": "invalid_request"}, 400)
        client_id, client_secret = params.get("client_id", ""), params.get("client_secret", "")
        if authorization and authorization.lower().startswith("basic "):
            try:
                decoded = base64.b64decode(authorization[6:]).decode()
                client_id, _, client_secret = decoded.partition(":")
            except ValueError:
                return json_response({"error": "invalid_client"}, 401)
        if not client_id or self.state.config.rest_clients.get(client_id) != client_secret:
            return json_response({"error": "invalid_client"}, 401)
        grant = params.get("grant_type", "")
        now = self.state.now()
        if grant == "client_credentials":
            # Third-party clients send username userId@companyId[|entityId] (§3.1, unconfirmed by Sage).
            username = params.get("username", "")
            user, _, company_part = username.partition("@")
            company_id, _, entity = company_part.partition("|")
            company = self.state.companies.get(company_id)
            if not user or company is None or user not in company.config.users:
                return json_response({"error": "invalid_grant"}, 400)
            if entity and entity not in company.config.entities:
                return json_response({"error": "invalid_grant"}, 400)
            issued = Token(company_id, user, entity, client_id, now)
        elif grant == "refresh_token":
            old = self.state.refresh_tokens.get(params.get("refresh_token", ""))
            if old is None or old.client_id != client_id or old.expires_at <= now:
                return json_response({"error": "invalid_grant"}, 400)
            # fylein intacctsdk reads a rotated refresh_token: the old one stops working.
            del self.state.refresh_tokens[params.get("refresh_token", "")]
            entity = params.get("entity_id", old.entity)
            if entity and entity not in self.state.companies[old.company_id].config.entities:
                return json_response({"error": "invalid_grant"}, 400)
            issued = Token(old.company_id, old.user_id, entity, client_id, now)
        elif grant:
            return json_response({"error": "unsupported_grant_type"}, 400)
        else:
            return json_response({"error": "invalid_request"}, 400)
        ttl = self.state.config.access_token_ttl
        access = self._jwt(issued, now, ttl)
        refresh = secrets.token_urlsafe(32)
        self.state.access_tokens[access] = Token(
            issued.company_id, issued.user_id, issued.entity, client_id, now + ttl
        )
        self.state.refresh_tokens[refresh] = Token(
            issued.company_id,
            issued.user_id,
            issued.entity,
            client_id,
            now + self.state.config.refresh_token_ttl,
        )
        return json_response(
            {"token_type": "Bearer", "access_token": access, "refresh_token": refresh, "expires_in": int(ttl)}
        )

    def _token_params(self, content_type: str, body: bytes) -> dict[str, str]:
        if content_type.startswith("application/json"):
            parsed = json.loads(body or b"{}")
            if not isinstance(parsed, dict):
                raise ValueError("token body must be an object")
            return {str(k): str(v) for k, v in parsed.items()}
        return dict(parse_qsl(body.decode("utf-8", "replace")))

    def _jwt(self, token: Token, now: float, ttl: float) -> str:
        """Access tokens are JWTs carrying user and company (§3.1); signed with a per-instance key."""

        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        claims = {
            "iss": "ledgerbridge-intacct-sandbox",
            "sub": token.user_id,
            "cnyId": token.company_id,
            "entityId": token.entity,
            "iat": int(now),
            "exp": int(now + ttl),
            "jti": secrets.token_hex(8),
        }
        payload = b64(json.dumps(claims).encode())
        signature = b64(hmac.new(self._secret, f"{header}.{payload}".encode(), hashlib.sha256).digest())
        return f"{header}.{payload}.{signature}"

    def authenticate(self, authorization: str | None, entity_header: str | None) -> Principal:
        if not authorization or not authorization.lower().startswith("bearer "):
            raise gateway_error(401, "GW-0034", "Invalid token")
        raw = authorization[7:].strip()
        token = self.state.access_tokens.get(raw)
        if token is None or token.expires_at <= self.state.now():
            self.state.access_tokens.pop(raw, None)
            raise gateway_error(401, "GW-0034", "Invalid token")
        entity = token.entity
        if entity_header is not None:
            # Third-party clients select the entity with X-IA-API-Param-Entity (§3.1).
            if entity_header and entity_header not in self.state.companies[token.company_id].config.entities:
                raise ia_error(400, "invalidRequest", f"Invalid entity {entity_header}")
            entity = entity_header
        return Principal(token, entity)

    # ------------------------------------------------------------------------------------------ objects

    def _object(self, path: str) -> RestObject:
        obj = OBJECTS.get(path)
        if obj is None:
            raise ia_error(404, "notFound", f"The object {path} is not available")
        return obj

    def _record(self, principal: Principal, obj: RestObject, key: str) -> Record:
        company = self.state.companies[principal.token.company_id]
        schema = SCHEMAS[obj.xml_object]
        record = company.table(obj.xml_object).get(int(key)) if key.isdigit() else None
        if record is None or not visible(schema, record, principal.entity):
            raise ia_error(404, "notFound", f"The requested {obj.path} with key {key} was not found")
        return record

    def list_objects(self, principal: Principal, path: str) -> Response:
        obj = self._object(path)
        company = self.state.companies[principal.token.company_id]
        schema = SCHEMAS[obj.xml_object]
        records = [r for r in company.table(obj.xml_object).records() if visible(schema, r, principal.entity)]
        refs: list[JSON] = []
        for record in records[:LIST_MAX]:
            key = str(record.get("RECORDNO", ""))
            refs.append(
                {"key": key, "id": _text(record, schema.id_field or "RECORDNO"), "href": obj.href(key)}
            )
        # Fixture rest_list_customers.json: ia::result refs and ia::meta totalCount/start/pageSize.
        meta: dict[str, JSON] = {"totalCount": len(records), "start": 1, "pageSize": LIST_MAX}
        meta["next"] = LIST_MAX + 1 if len(records) > LIST_MAX else None
        meta["previous"] = None
        return json_response({"ia::result": refs, "ia::meta": meta})

    def get(self, principal: Principal, path: str, key: str) -> Response:
        obj = self._object(path)
        record = self._record(principal, obj, key)
        return json_response(
            {
                "ia::result": obj.to_rest(record, obj.path),
                "ia::meta": {"totalCount": 1, "totalSuccess": 1, "totalError": 0},
            }
        )

    def _payload(self, body: bytes, operation: str) -> Mapping[str, Any]:
        if not body.strip():
            raise missing_payload(operation)
        try:
            payload = loads(body)
        except ValueError:
            raise ia_error(400, "invalidRequest", "The request payload is not valid JSON") from None
        if not isinstance(payload, dict):
            raise ia_error(400, "invalidRequest", "The request payload must be a JSON object")
        if not payload:
            raise missing_payload(operation)
        return payload

    def _reference(self, obj: RestObject, record: Record, status: int) -> Response:
        key = str(record.get("RECORDNO", ""))
        schema = SCHEMAS[obj.xml_object]
        # Fixture rest_update_reference_200.json: {key, id, href} + totalCount/totalSuccess/totalError.
        return json_response(
            {
                "ia::result": {"key": key, "id": _text(record, schema.id_field or ""), "href": obj.href(key)},
                "ia::meta": {"totalCount": 1, "totalSuccess": 1, "totalError": 0},
            },
            status,
        )

    def create(self, principal: Principal, path: str, body: bytes) -> Response:
        obj = self._object(path)
        if not obj.writable:
            raise ia_error(405, "methodNotAllowed", f"POST is not supported for {path}")
        values = payload_to_values(obj, self._payload(body, "POST"))
        if not str(values.get("NAME", "")).strip():
            raise ia_error(400, "invalidRequest", "/name is required")
        company = self.state.companies[principal.token.company_id]
        savepoint = company.savepoint()
        try:
            record = create_party(
                company,
                obj.xml_object,
                values,
                principal.token.user_id,
                self.state.now_dt(),
                require_contact=False,
            )
        except WriteError as exc:
            company.rollback(savepoint)
            raise business_error(exc) from None
        finally:
            company.commit()
        return self._reference(obj, record, 201)

    def update(self, principal: Principal, path: str, key: str, body: bytes) -> Response:
        obj = self._object(path)
        if not obj.writable:
            raise ia_error(405, "methodNotAllowed", f"PATCH is not supported for {path}")
        payload = self._payload(body, "PATCH")
        self._record(principal, obj, key)
        values = payload_to_values(obj, payload)
        values["RECORDNO"] = key
        company = self.state.companies[principal.token.company_id]
        savepoint = company.savepoint()
        try:
            record = update_party(
                company, obj.xml_object, values, principal.token.user_id, self.state.now_dt()
            )
        except WriteError as exc:
            company.rollback(savepoint)
            raise business_error(exc) from None
        finally:
            company.commit()
        return self._reference(obj, record, 200)

    def delete(self, principal: Principal, path: str, key: str) -> Response:
        obj = self._object(path)
        if not obj.writable:
            raise ia_error(405, "methodNotAllowed", f"DELETE is not supported for {path}")
        self._record(principal, obj, key)
        company = self.state.companies[principal.token.company_id]
        savepoint = company.savepoint()
        try:
            delete_records(company, obj.xml_object, [key], principal.entity)
        except WriteError as exc:
            company.rollback(savepoint)
            raise business_error(exc) from None
        finally:
            company.commit()
        # §3.2 / error-handling guide: "A successful DELETE request always returns 204".
        return Response(status_code=204)

    # ------------------------------------------------------------------------------------------ query

    def query(self, principal: Principal, body: bytes) -> Response:
        """``POST /services/core/query`` (§3.4)."""
        spec = self._payload(body, "POST")
        obj = OBJECTS.get(str(spec.get("object", "")))
        if obj is None:
            raise ia_error(400, "invalidRequest", f"{spec.get('object')} is not a valid object for query")
        known = rest_fields(obj)
        fields = spec.get("fields")
        if not isinstance(fields, list) or not fields or not all(isinstance(f, str) for f in fields):
            raise ia_error(400, "invalidRequest", "/fields must be a non-empty list of field names")
        for name in fields:
            if name not in known:
                raise invalid_field(f"fields/{name}")
        params = spec.get("filterParameters") or {}
        if not isinstance(params, dict):
            raise ia_error(400, "invalidRequest", "/filterParameters must be an object")
        case_sensitive = params.get("caseSensitiveComparison", True) is not False
        conditions = [self._condition(c, known, case_sensitive) for c in self._list(spec, "filters")]
        expression = spec.get("filterExpression")
        matcher = _expression(str(expression) if expression else "", len(conditions))
        start = _int(spec.get("start", 1), "start", 1, None)
        size = _int(spec.get("size", 100), "size", 1, QUERY_MAX)
        company = self.state.companies[principal.token.company_id]
        schema = SCHEMAS[obj.xml_object]
        rows = [
            _flatten(obj.to_rest(r, obj.path))
            for r in company.table(obj.xml_object).records()
            if visible(schema, r, principal.entity)
        ]
        rows = [row for row in rows if matcher([c(row) for c in conditions])]
        for order in reversed(self._list(spec, "orderBy")):
            if not isinstance(order, dict) or len(order) != 1:
                raise ia_error(400, "invalidRequest", "/orderBy items are {field: asc|desc}")
            (name, direction), *_ = order.items()
            if name not in known or direction not in ("asc", "desc"):
                raise invalid_field(f"orderBy/{name}")
            rows.sort(key=_row_key(name), reverse=direction == "desc")
        page = rows[start - 1 : start - 1 + size]
        result: list[JSON] = [{name: row.get(name) for name in fields} for row in page]
        following = start + size if start - 1 + size < len(rows) else None
        previous = max(1, start - size) if start > 1 else None
        # Fixture rest_query_response_vendor.json: totalCount, start, pageSize, next, previous.
        meta: dict[str, JSON] = {
            "totalCount": len(rows),
            "start": start,
            "pageSize": size,
            "next": following,
            "previous": previous,
        }
        return json_response({"ia::result": result, "ia::meta": meta})

    def _list(self, spec: Mapping[str, Any], name: str) -> list[Any]:
        value = spec.get(name) or []
        if not isinstance(value, list):
            raise ia_error(400, "invalidRequest", f"/{name} must be a list")
        return value

    def _condition(
        self, condition: Any, known: frozenset[str], case_sensitive: bool
    ) -> Callable[[dict[str, JSON]], bool]:
        if not isinstance(condition, dict) or len(condition) != 1:
            raise ia_error(400, "invalidRequest", "Each filter is one {operator: {field: value}} object")
        (op, operand), *_ = condition.items()
        if not isinstance(operand, dict) or len(operand) != 1:
            raise ia_error(400, "invalidRequest", f"Filter {op} takes one {{field: value}}")
        (name, value), *_ = operand.items()
        if name not in known:
            raise invalid_field(f"filters/{name}")
        return _filter(op, name, value, case_sensitive)


def _int(value: Any, name: str, low: int, high: int | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int | Decimal | str):
        raise ia_error(400, "invalidRequest", f"/{name} must be an integer")
    try:
        number = int(value)
    except ValueError:
        raise ia_error(400, "invalidRequest", f"/{name} must be an integer") from None
    if number < low or (high is not None and number > high):
        raise ia_error(400, "invalidRequest", f"/{name} must be between {low} and {high or 'any'}")
    return number


def _row_key(name: str) -> Callable[[dict[str, JSON]], tuple[int, Any]]:
    return lambda row: _sortable(row.get(name))


def _sortable(value: JSON) -> tuple[int, Any]:
    if value is None:
        return (0, "")
    if isinstance(value, bool):
        return (1, int(value))
    if isinstance(value, int | Decimal):
        return (1, Decimal(value))
    return (1, str(value))


def _coerce(sample: JSON, literal: Any, case_sensitive: bool) -> Any:
    if isinstance(sample, Decimal):
        return parse_decimal(str(literal))
    if isinstance(sample, bool):
        return literal
    text = str(literal) if literal is not None else None
    return text.lower() if text is not None and not case_sensitive else text


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "$eq": lambda a, b: bool(a == b),
    "$ne": lambda a, b: bool(a != b),
    "$lt": lambda a, b: bool(a < b),
    "$lte": lambda a, b: bool(a <= b),
    "$gt": lambda a, b: bool(a > b),
    "$gte": lambda a, b: bool(a >= b),
}


def _filter(op: str, name: str, literal: Any, case_sensitive: bool) -> Callable[[dict[str, JSON]], bool]:
    """§3.4 filter operators on flattened REST rows."""

    def value_of(row: dict[str, JSON]) -> Any:
        value = row.get(name)
        return value.lower() if isinstance(value, str) and not case_sensitive else value

    if op in _COMPARE:
        compare = _COMPARE[op]

        def compared(row: dict[str, JSON]) -> bool:
            value = value_of(row)
            if value is None:
                return op == "$ne" and literal is not None
            other = _coerce(value, literal, case_sensitive)
            try:
                return other is not None and compare(value, other)
            except TypeError:
                return False

        return compared
    if op in ("$in", "$notIn"):
        if not isinstance(literal, list):
            raise ia_error(400, "invalidRequest", f"{op} takes a list")

        def member(row: dict[str, JSON]) -> bool:
            value = value_of(row)
            found = value is not None and value in {_coerce(value, v, case_sensitive) for v in literal}
            return found if op == "$in" else not found

        return member
    if op in ("$between", "$notBetween"):
        if not isinstance(literal, list) or len(literal) != 2:
            raise ia_error(400, "invalidRequest", f"{op} takes a two-element list")

        def between(row: dict[str, JSON]) -> bool:
            value = value_of(row)
            if value is None:
                return op == "$notBetween"
            low, high = (_coerce(value, v, case_sensitive) for v in literal)
            inside = low is not None and high is not None and low <= value <= high
            return inside if op == "$between" else not inside

        return between
    text_ops: dict[str, Callable[[str, str], bool]] = {
        "$contains": lambda a, b: b in a,
        "$startsWith": lambda a, b: a.startswith(b),
        "$endsWith": lambda a, b: a.endswith(b),
    }
    positive = op[1:].replace("not", "").lower()
    matched = next((fn for key, fn in text_ops.items() if key[1:].lower() == positive), None)
    if matched is None:
        raise ia_error(400, "invalidRequest", f"{op} is not a supported filter operator")
    negate = op.startswith("$not")
    needle = str(literal) if case_sensitive else str(literal).lower()

    def text_match(row: dict[str, JSON]) -> bool:
        value = value_of(row)
        return isinstance(value, str) and matched(value, needle) != negate

    return text_match


def _expression(text: str, count: int) -> Callable[[list[bool]], bool]:
    """``filterExpression`` such as ``"1 and (2 or 3)"``; default: all conditions and-ed (§3.4)."""
    if not text.strip():
        return all
    tokens = re.findall(r"\d+|and|or|\(|\)|\S", text.lower())
    pos = 0

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    def parse_or() -> Callable[[list[bool]], bool]:
        nonlocal pos
        parts = [parse_and()]
        while peek() == "or":
            pos += 1
            parts.append(parse_and())
        return lambda v: any(p(v) for p in parts)

    def parse_and() -> Callable[[list[bool]], bool]:
        nonlocal pos
        parts = [parse_atom()]
        while peek() == "and":
            pos += 1
            parts.append(parse_atom())
        return lambda v: all(p(v) for p in parts)

    def parse_atom() -> Callable[[list[bool]], bool]:
        nonlocal pos
        token = peek()
        pos += 1
        if token == "(":
            inner = parse_or()
            if peek() != ")":
                raise ia_error(400, "invalidRequest", "Unbalanced parentheses in /filterExpression")
            pos += 1
            return inner
        if token is not None and token.isdigit() and 1 <= int(token) <= count:
            index = int(token) - 1
            return lambda v: v[index]
        raise ia_error(400, "invalidRequest", f"Invalid /filterExpression near '{token}'")

    matcher = parse_or()
    if peek() is not None:
        raise ia_error(400, "invalidRequest", f"Invalid /filterExpression near '{peek()}'")
    return matcher


def error_response(exc: RestError) -> Response:
    return json_response(exc.body, exc.status)
