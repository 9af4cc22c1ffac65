"""Structured JSON logs with secrets redacted.

A serving process writes one access-log line per call, so a line is built cheaply: orjson, a timestamp
formatted once per second, the redaction decision for each ``extra`` key remembered, and no caller, thread or
process lookups for the fields these lines never carry (:func:`configure`).
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

import orjson

from api.redact import REDACTED, SECRET_KEYS

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")
_LB_KEY = re.compile(r"lb_[A-Za-z0-9_-]{20,}")
_SECRET_NAMES: dict[str, bool] = {}
"""``extra`` key → whether its value is redacted (the keys are the code's own names: a bounded set)."""


def scrub(text: str) -> str:
    return _LB_KEY.sub(REDACTED, _BEARER.sub(r"\1" + REDACTED, text))


def _secret(key: str) -> bool:
    found = _SECRET_NAMES.get(key)
    if found is None:
        found = bool(SECRET_KEYS.search(key))
        if len(_SECRET_NAMES) < 10_000:
            _SECRET_NAMES[key] = found
    return found


class JsonFormatter(logging.Formatter):
    _second = -1
    _stamp = ""

    def _time(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(second))
            self._second = second
        return self._stamp

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": self._time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": scrub(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key in _STANDARD:
                continue
            payload[key] = REDACTED if _secret(key) else value
        if record.exc_info:
            payload["exception"] = scrub(self.formatException(record.exc_info))
        try:
            return orjson.dumps(payload, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
        except (orjson.JSONEncodeError, TypeError):  # e.g. an integer beyond 64 bits
            return json.dumps(payload, default=str)


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # JsonFormatter writes none of the caller's file/line, thread or process fields: skip looking them up for
    # every record (the stack walk of findCaller is the dearest; the logging module offers these switches).
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None
