"""What the raw proxy lets through (CONTRACT §8; reliability-notes §5.4 API7, §5.5).

Everything here runs before any upstream call and refuses with 400 problem+json. The rules are allowlists:
a path is relative and made of plain segments, a query is printable ASCII, only content-negotiation and
conditional-request headers are forwarded, and an Intacct XML body is nothing but ``<function>`` elements.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from urllib.parse import unquote

from lxml import etree

from api.errors import ApiError
from connectors.base import PROXY_REQUEST_HEADERS
from connectors.sage_intacct.xml import hardened_parser

MAX_PATH_BYTES = 2048
MAX_QUERY_BYTES = 4096
MAX_REQUEST_BODY_BYTES = 1_048_576
MAX_RESPONSE_BODY_BYTES = 10 * 1_048_576
MAX_XML_FUNCTIONS = 100

#: Upstream response headers a caller may see (besides the content type, which is always passed).
FORWARDED_RESPONSE_HEADERS = (
    "cache-control",
    "content-language",
    "etag",
    "last-modified",
    "link",
    "retry-after",
    "x-business",
)

_UNRESERVED = frozenset((string.ascii_letters + string.digits + "-._~").encode())
_SUB_DELIMS = frozenset(b"!$&'()*+,;=")
#: Bytes allowed literally in a path segment: RFC 3986 unreserved and sub-delims, but not ``:`` and ``@``
#: (scheme, port and userinfo tricks).
_PATH_RAW = _UNRESERVED | _SUB_DELIMS
#: Bytes a ``%XX`` escape in the path may stand for: a space or a sub-delim. Never ``.``, ``/``, ``\``, ``%``
#: (double encoding), ``:``, ``@``, control characters or non-ASCII (unicode dots such as U+FF0E, U+3002);
#: never an unreserved character either, which needs no escape and would let ``oauth%32`` pass for ``oauth2``.
_PATH_ESCAPED = _SUB_DELIMS | {ord(" ")}
#: Bytes allowed literally in a query: printable ASCII except space, ``#`` and ``\``.
_QUERY_RAW = frozenset(range(0x21, 0x7F)) - {ord("#"), ord("\\")}
#: Bytes a ``%XX`` escape in the query may stand for: anything but control characters (values such as a
#: contact name may be non-ASCII UTF-8).
_QUERY_ESCAPED = frozenset(range(0x20, 0x7F)) | frozenset(range(0x80, 0x100))
_HEX = frozenset(b"0123456789abcdefABCDEF")

#: Elements of the Intacct envelope: the gateway writes them, a caller may not (no session or credential
#: smuggling, no second request inside the first).
FORBIDDEN_XML_ELEMENTS = frozenset(
    {"authentication", "control", "operation", "request", "login", "sessionid", "password", "senderid"}
)
_XML_DECLARATION = re.compile(r"\A<\?xml\s[^<>]*?\?>")
_DECLARED_ENCODING = re.compile(r"""encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")
_FRAGMENT_ROOT = "lb-proxy-fragment"


def refused(detail: str, code: str = "invalid_proxy_request") -> ApiError:
    return ApiError(400, code, detail, title="Proxy request refused")


def _byte_name(byte: int) -> str:
    char = chr(byte)
    return repr(char) if char.isprintable() and byte < 0x80 else f"0x{byte:02x}"


def _check_escapes(raw: bytes, allowed: frozenset[int], where: str, code: str) -> None:
    i = 0
    while i < len(raw):
        byte = raw[i]
        if byte == ord("%"):
            digits = raw[i + 1 : i + 3]
            if len(digits) != 2 or not set(digits) <= _HEX:
                raise refused(f"The {where} has a malformed percent escape", code)
            decoded = int(digits, 16)
            if decoded not in allowed:
                raise refused(f"The {where} may not encode {_byte_name(decoded)} (%{digits.decode()})", code)
            i += 3
            continue
        i += 1


def vet_path(raw: bytes, decoded: str) -> str:
    """The upstream-relative path, from the request's raw (still percent-encoded) bytes.

    ``decoded`` is the router's view of the same path; both must agree, so nothing the server decoded
    differently slips past the checks on the raw form.
    """
    if not raw:
        raise refused("A proxy path is required, e.g. /v1/proxy/contacts", "invalid_proxy_path")
    if len(raw) > MAX_PATH_BYTES:
        raise refused(f"The proxy path exceeds {MAX_PATH_BYTES} bytes", "invalid_proxy_path")
    segments = raw.split(b"/")
    if len(segments) > 1 and segments[-1] == b"":
        segments.pop()  # one trailing slash is harmless
    for segment in segments:
        if not segment:
            raise refused(
                "The proxy path may not start with / or contain empty segments (//)", "invalid_proxy_path"
            )
        if segment.startswith(b"."):
            raise refused("The proxy path may not contain dot segments (. or ..)", "invalid_proxy_path")
        for byte in segment:
            if byte != ord("%") and byte not in _PATH_RAW:
                raise refused(f"The proxy path may not contain {_byte_name(byte)}", "invalid_proxy_path")
        _check_escapes(segment, _PATH_ESCAPED, "proxy path", "invalid_proxy_path")
    text = raw.decode("ascii")
    if unquote(text) != decoded:
        raise refused("The proxy path is ambiguous", "invalid_proxy_path")
    return text


def vet_query(raw: bytes) -> str:
    """The query string to forward verbatim: printable ASCII, escapes well-formed, no encoded controls."""
    if len(raw) > MAX_QUERY_BYTES:
        raise refused(f"The query string exceeds {MAX_QUERY_BYTES} bytes", "invalid_proxy_query")
    for byte in raw:
        if byte not in _QUERY_RAW:
            raise refused(f"The query string may not contain {_byte_name(byte)}", "invalid_proxy_query")
    _check_escapes(raw, _QUERY_ESCAPED, "query string", "invalid_proxy_query")
    return raw.decode("ascii")


def forwarded_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The caller's headers the upstream may see; values carrying control characters are dropped."""
    kept: dict[str, str] = {}
    for name in PROXY_REQUEST_HEADERS:
        value = headers.get(name)
        if value is not None and value.isprintable() and len(value) <= 1024:
            kept[name] = value
    return kept


def response_headers(headers: Mapping[str, str]) -> dict[str, str]:
    lowered = {k.lower(): v for k, v in headers.items()}
    return {name: lowered[name] for name in FORWARDED_RESPONSE_HEADERS if name in lowered}


def _blank(text: str | None) -> bool:
    return text is None or not text.strip()


def vet_functions(body: bytes) -> bytes:
    """Parse an Intacct XML proxy body (hardened) and return its ``<function>`` elements, re-serialized.

    Accepted: one or more ``<function>`` elements, or a single ``<content>`` holding them, optionally after an
    XML declaration (UTF-8). Refused: any DOCTYPE or entity declaration (XXE, billion laughs), undefined
    entities, other top-level elements or text, and envelope elements anywhere.
    """
    code = "invalid_proxy_body"
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise refused("The XML body must be UTF-8", code) from None
    text = text.removeprefix("\ufeff").strip()
    if not text:
        raise refused("The XML body is empty; send one or more <function> elements", code)
    lowered = text.lower()
    if "<!doctype" in lowered or "<!entity" in lowered:
        raise refused("The XML body may not carry a DOCTYPE or entity declarations", code)
    declaration = _XML_DECLARATION.match(text)
    if declaration is not None:
        encoding = _DECLARED_ENCODING.search(declaration.group(0))
        if encoding is not None and encoding.group(1).lower().replace("_", "-") not in ("utf-8", "utf8"):
            raise refused("The XML body must be UTF-8", code)
        text = text[declaration.end() :]
    try:
        root = etree.fromstring(
            f"<{_FRAGMENT_ROOT}>{text}</{_FRAGMENT_ROOT}>".encode(),
            hardened_parser(remove_blank_text=False, strip_comments_and_pis=True),
        )
    except etree.XMLSyntaxError as exc:
        raise refused(f"The XML body is not well-formed: {exc.msg}"[:300], code) from None
    for node in root.iter():
        if not isinstance(node.tag, str):
            raise refused("The XML body may not carry entity references", code)
        name = etree.QName(node).localname.lower()
        if name in FORBIDDEN_XML_ELEMENTS and node is not root:
            raise refused(f"The XML body may not carry <{name}>: the gateway writes the envelope", code)
    tops = list(root)
    if not _blank(root.text) or any(not _blank(t.tail) for t in tops):
        raise refused("The XML body may hold only <function> elements (text found between them)", code)
    functions = tops
    if len(tops) == 1 and tops[0].tag == "content":
        functions = list(tops[0])
        if not _blank(tops[0].text) or any(not _blank(f.tail) for f in functions):
            raise refused("<content> may hold only <function> elements (text found between them)", code)
    if not functions or any(f.tag != "function" for f in functions):
        raise refused("The XML body must be one or more <function> elements or a single <content>", code)
    if len(functions) > MAX_XML_FUNCTIONS:
        raise refused(f"At most {MAX_XML_FUNCTIONS} functions per request", code)
    return "".join(etree.tostring(f, encoding="unicode", with_tail=False) for f in functions).encode("utf-8")
