"""One guard for what clients send: every text that can reach the database is checked here,
before any view runs (`tenants.middleware.InputGuardMiddleware`) -- query parameters, form
and HTMX fields, JSON bodies -- and the API's JSON parser reuses the body parsed here.

Refused, with a stable code and a human message (a 4xx JSON body on the API, the product's
400 page elsewhere), never a 500:

- `invalid_characters`: NUL, which PostgreSQL text cannot hold, or an unpaired surrogate,
  which is not UTF-8 at all;
- `invalid_encoding`: a body that is not UTF-8;
- `malformed_request`: not JSON, or NaN / Infinity / a number too long to read;
- `too_deep`: JSON nested deeper than `INPUT_MAX_JSON_DEPTH`;
- `body_too_large` (413): a JSON body over `INPUT_MAX_JSON_BYTES` (uploads have their own
  limit, `PLAYBOOK_MAX_UPLOAD_BYTES`), or any body said to be longer than 18 digits;
- `malformed_request`: a Content-Length header that is not a number in ASCII digits;
- `number_out_of_range`: an integer beyond PostgreSQL's bigint;
- `invalid_value`: any value the database still refuses (a `DataError`), after the view's
  transaction rolled back -- nothing is half-written.

Dates and cursors are typed, so their ranges are the fields' business: `SaneDateField` and
`GuardedCursorPagination` below.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Iterable, Mapping
from datetime import date
from typing import IO, Any

from django.conf import settings
from django.core.exceptions import BadRequest, RequestDataTooBig, TooManyFieldsSent
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import QuerySet
from django.http import HttpRequest, QueryDict
from django.http.multipartparser import MultiPartParserError
from rest_framework import exceptions, serializers
from rest_framework.pagination import CursorPagination
from rest_framework.parsers import JSONParser
from rest_framework.request import Request

# NUL, and UTF-16 surrogates that are not part of a pair (psycopg cannot encode them).
_REFUSED = re.compile("[\x00\ud800-\udfff]")

BIGINT_MAX = 2**63 - 1

# Where the middleware leaves a JSON body it has parsed and checked, for the API's parser.
PARSED_JSON = "playbook_parsed_json"

# The earliest and latest day a report, a filter or a schedule may name.
EARLIEST_DATE = date(2000, 1, 1)
LATEST_DATE = date(2099, 12, 31)


class BadInput(BadRequest):
    """A request the product refuses to read. Raised anywhere during a request, Django turns
    it into the 400 handler (`config.views.bad_request`), which answers with this code and
    message: JSON on the API, the product's page elsewhere."""

    def __init__(self, code: str, message: str, *, field: str = "", status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.status = status


def _subject(field: str) -> str:
    if not field:
        return "The text"
    if field.startswith(("the ", "a ")):
        return field[0].upper() + field[1:]
    return f"“{field}”"


def _describe(field: str) -> str:
    return f" (in {field})" if field else ""


def check_text(value: str, field: str = "") -> None:
    if _REFUSED.search(value):
        raise BadInput(
            "invalid_characters",
            f"{_subject(field)} contains a character that cannot be saved (a NUL or a "
            "broken Unicode character). Remove it and try again.",
            field=field,
        )


def check_pairs(pairs: Iterable[tuple[str, Iterable[str]]], where: str) -> None:
    """Names and values of query parameters or form fields."""
    for name, values in pairs:
        check_text(name, where)
        for value in values:
            if isinstance(value, str):
                check_text(value, name)


def check_json(data: Any, max_depth: int | None = None) -> None:
    """Walk a parsed JSON document without recursion: depth, text, integer range."""
    limit = settings.INPUT_MAX_JSON_DEPTH if max_depth is None else max_depth
    stack: list[tuple[Any, int, str]] = [(data, 1, "")]
    while stack:
        value, depth, path = stack.pop()
        if isinstance(value, dict | list):
            if depth > limit:
                raise _too_deep(limit)
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str):
                    check_text(key, path or "the body")
                child = f"{path}.{key}" if isinstance(key, str) else f"{path}[{key}]"
                stack.append((item, depth + 1, child.lstrip(".")))
        elif isinstance(value, str):
            check_text(value, path)
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > BIGINT_MAX:
            raise BadInput(
                "number_out_of_range",
                f"The number{_describe(path)} is too large.",
                field=path,
            )


def _too_deep(limit: int) -> BadInput:
    return BadInput("too_deep", f"The JSON body is nested deeper than {limit} levels.")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError("the number is too large")
    return number


def parse_json(raw: bytes) -> Any:
    """A JSON body, parsed and checked, or BadInput. Nesting is bounded twice: the parser
    stops at the interpreter's recursion limit (a 100,000-deep body costs microseconds), the
    walk at INPUT_MAX_JSON_DEPTH."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadInput("invalid_encoding", "The request body is not UTF-8 text.") from None
    try:
        data = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise _too_deep(settings.INPUT_MAX_JSON_DEPTH) from None
    except ValueError as exc:
        raise BadInput(
            "malformed_request",
            f"The request body is not valid JSON ({_json_problem(exc)}).",
        ) from None
    check_json(data)
    return data


def _json_problem(exc: ValueError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno}, column {exc.colno}"
    if "digits" in str(exc):
        return "a number is too long"
    return str(exc)


FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def is_json(content_type: str) -> bool:
    return content_type == "application/json" or content_type.endswith("+json")


def guard_request(request: HttpRequest) -> None:
    """Check what a request carries before any view reads it; raise BadInput. A JSON body is
    parsed once, here, and left on the request for the API's parser."""
    check_text(request.path_info, "the address")
    check_pairs(request.GET.lists(), "the query string")
    content_type = request.content_type or ""
    json_body = is_json(content_type)
    limit = settings.INPUT_MAX_JSON_BYTES if json_body else settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    declared = _declared_length(request, limit)
    if json_body:
        raw = _bounded_body(request, limit, declared)
        if raw.strip():
            setattr(request, PARSED_JSON, parse_json(raw))
    elif content_type in FORM_TYPES:
        try:
            fields, names = _form_of(request, content_type)
        except RequestDataTooBig:
            raise _too_large(settings.DATA_UPLOAD_MAX_MEMORY_SIZE) from None
        except (MultiPartParserError, TooManyFieldsSent, UnicodeDecodeError):
            raise BadInput("malformed_form", "The form data could not be read.") from None
        check_pairs(fields.lists(), "the form")
        for name in names:
            check_text(name, "a file name")


def _form_of(request: HttpRequest, content_type: str) -> tuple[QueryDict, list[str]]:
    """The fields and uploaded file names of a form body; Django parses POST's only."""
    if request.method == "POST":
        fields: QueryDict = request.POST
        files = request.FILES
    elif content_type == FORM_TYPES[0]:
        return QueryDict(request.body, encoding=request.encoding), []
    else:
        fields, files = request.parse_file_upload(request.META, io.BytesIO(request.body))
    return fields, [upload.name or "" for _, uploads in files.lists() for upload in uploads]


# More digits than any body has: 10**18 bytes is an exabyte.
MAX_LENGTH_DIGITS = 18


def _declared_length(request: HttpRequest, limit: int) -> int:
    """The Content-Length header (0 without one), checked before Django reads it with int(),
    which raises on "²" (a digit to `str.isdigit()`) and on more than 4300 digits."""
    declared = request.META.get("CONTENT_LENGTH") or "0"
    if not (declared.isascii() and declared.isdigit()):
        raise BadInput("malformed_request", "The Content-Length header is not a number.")
    digits = declared.lstrip("0") or "0"
    if len(digits) > MAX_LENGTH_DIGITS:
        raise _too_large(limit)
    return int(digits)


def _bounded_body(request: HttpRequest, limit: int, declared: int) -> bytes:
    if declared > limit:
        raise _too_large(limit)
    try:
        raw = request.body
    except RequestDataTooBig:
        raise _too_large(limit) from None
    if len(raw) > limit:
        raise _too_large(limit)
    return raw


def _too_large(limit: int) -> BadInput:
    return BadInput(
        "body_too_large",
        f"The request body is larger than {limit // 1024} KiB.",
        status=413,
    )


class GuardedJSONParser(JSONParser):
    """The API's JSON parser: the body the middleware already parsed and checked, or (for a
    request that did not pass through it, such as a test's APIRequestFactory) the same
    parse and checks here."""

    def parse(
        self,
        stream: IO[Any],
        media_type: str | None = None,
        parser_context: Mapping[str, Any] | None = None,
    ) -> Any:
        request = (parser_context or {}).get("request")
        django_request = getattr(request, "_request", None)
        if django_request is not None and hasattr(django_request, PARSED_JSON):
            return getattr(django_request, PARSED_JSON)
        try:
            return parse_json(stream.read() if stream is not None else b"")
        except BadInput as exc:
            raise exceptions.ParseError(exc.message, code=exc.code) from None


class SaneDateField(serializers.DateField):
    """A date between EARLIEST_DATE and LATEST_DATE: arithmetic on it (a period's end, the
    next day) cannot overflow, and a typo of a year is an error, not an empty report."""

    def to_internal_value(self, value: Any) -> date:
        day: date = super().to_internal_value(value)
        if not EARLIEST_DATE <= day <= LATEST_DATE:
            raise serializers.ValidationError(
                f"Choose a date between {EARLIEST_DATE.isoformat()} and {LATEST_DATE.isoformat()}.",
                code="date_out_of_range",
            )
        return day


class GuardedCursorPagination(CursorPagination):
    """DRF's cursor pagination, but a cursor that does not decode -- or whose position is
    not a value of the ordering field -- is a 400 (`invalid_cursor`), never a 500 (DRF lets a
    non-numeric position through to the query) nor a 404."""

    invalid_cursor_message = (
        "This page link is damaged or out of date; start again from the first page."
    )

    def paginate_queryset(
        self, queryset: QuerySet[Any], request: Request, view: Any = None
    ) -> list[Any] | None:
        ordering = self.get_ordering(request, queryset, view)[0].lstrip("-")
        self._position_field = queryset.model._meta.get_field(ordering)
        return super().paginate_queryset(queryset, request, view)

    def decode_cursor(self, request: Request) -> Any:
        try:
            cursor = super().decode_cursor(request)
            if cursor is not None and cursor.position is not None:
                check_text(str(cursor.position), self.cursor_query_param)
                self._position_field.clean(cursor.position, None)
        except (exceptions.NotFound, BadInput, DjangoValidationError):
            raise exceptions.ValidationError(
                {self.cursor_query_param: [self.invalid_cursor_message]}, code="invalid_cursor"
            ) from None
        return cursor
