"""Query parameters: :func:`query` (every ``/v1/`` route names the ones it reads; any other is
400 ``unknown_parameter``) and those shared by the list endpoints."""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime
from typing import Final

from aiohttp import web
from multidict import MultiMapping

from payflow.errors import ValidationError
from payflow.models import iso, parse_iso

# ``limit`` of the list endpoints (:func:`page_limit`; the OpenAPI document shows these).
MIN_PAGE_LIMIT: Final = 1
MAX_PAGE_LIMIT: Final = 100
DEFAULT_PAGE_LIMIT: Final = 10
_LIMIT_DIGITS: Final = len(str(MAX_PAGE_LIMIT))  # longer is out of range: int() not needed


def query(request: web.Request, *allowed: str) -> MultiMapping[str]:
    """The request's query parameters, once each is known to be one of ``allowed``: else a 400
    ``unknown_parameter`` naming the first that is not (as unknown body fields are refused)."""
    params = request.query
    for name in params:
        if name not in allowed:
            shown = name if len(name) <= 100 else name[:100] + "…"
            known = f"allowed: {', '.join(allowed)}" if allowed else "this route takes none"
            raise ValidationError(f"Unknown query parameter {shown!r} ({known}).", param=shown,
                                  code="unknown_parameter", status=400)
    return params


def page_limit(request: web.Request, default: int = DEFAULT_PAGE_LIMIT) -> int:
    """``limit``: an integer from :data:`MIN_PAGE_LIMIT` to :data:`MAX_PAGE_LIMIT`, ``default``
    when absent; else 400 ``out_of_range``."""
    raw = request.query.get("limit")
    if raw is None:
        return default
    if (not (raw.isascii() and raw.isdigit() and len(raw) <= _LIMIT_DIGITS)
            or not MIN_PAGE_LIMIT <= int(raw) <= MAX_PAGE_LIMIT):
        raise ValidationError(f"limit must be an integer from {MIN_PAGE_LIMIT} to "
                              f"{MAX_PAGE_LIMIT}.", param="limit", code="out_of_range",
                              status=400)
    return int(raw)


def time_param(request: web.Request, name: str) -> str | None:
    """An ISO-8601 time or unix seconds, as ISO-8601; None when absent; 400 when bad."""
    raw = request.query.get(name)
    return None if raw is None else parse_time(raw, name, status=400)


def parse_time(raw: str, name: str, *, status: int) -> str:
    """Unix seconds or an ISO-8601 time with a zone, as ISO-8601 UTC; else a
    ``ValidationError`` (``invalid_time``) with ``status``."""
    try:
        if raw.isascii() and raw.isdigit():
            if len(raw) > 12:  # past the year 33658: and int() refuses 4,300+ digits
                raise ValueError(raw)
            return iso(datetime.fromtimestamp(int(raw), UTC))
        moment = parse_iso(raw)
        if moment.tzinfo is not None:
            return iso(moment)
    except (ValueError, OverflowError, OSError):
        pass
    raise ValidationError(f"{name} must be unix seconds or an ISO-8601 time with a zone, "
                          "such as 2026-11-24T09:00:00Z.", param=name, code="invalid_time",
                          status=status)


def reject_unknown(body: dict[str, object], allowed: Collection[str]) -> None:
    """422 naming the first field of ``body`` that is not in ``allowed``."""
    for name in body:
        if name not in allowed:
            raise ValidationError(f"Unknown field {name!r} (allowed: {', '.join(allowed)}).",
                                  param=name, code="unknown_field")
