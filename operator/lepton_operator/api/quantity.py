"""Kubernetes resource quantities (``"10Gi"``, ``"500m"``, ``4``) as a pydantic type.

The CRD schema for a quantity is exactly what controller-gen emits for
``resource.Quantity`` (int-or-string with the canonical pattern), so the API
server rejects ``"ten gigs"`` at admission. ``parse_quantity`` turns a quantity
into a ``Decimal`` for the few comparisons the operator makes (sizes must be
positive, nothing more); it lives here because the pure layers may not import the
kubernetes client.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from pydantic import BeforeValidator, WithJsonSchema

QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
_QUANTITY_RE = re.compile(QUANTITY_PATTERN)
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}


def parse_quantity(value: int | str) -> Decimal:
    """The numeric value of a Kubernetes quantity; raises ``ValueError`` if malformed."""
    if isinstance(value, int):
        return Decimal(value)
    text = value.strip()
    if not _QUANTITY_RE.match(text):
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 10Gi, 500m, 4)")
    for suffix, factor in _BINARY.items():
        if text.endswith(suffix):
            return Decimal(text[: -len(suffix)]) * factor
    try:
        if text[-1:] in _DECIMAL and not text[-1:].isdigit() and text[-1:] not in "eE":
            return Decimal(text[:-1]) * _DECIMAL[text[-1]]
        return Decimal(text)
    except InvalidOperation as error:  # pragma: no cover - the regex rules this out
        raise ValueError(f"{value!r} is not a Kubernetes quantity") from error


def _check_quantity(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("a quantity is an integer or a string such as 10Gi or 500m")
    if isinstance(value, str) and len(value) > MAX_QUANTITY_LENGTH:
        raise ValueError(f"a quantity is at most {MAX_QUANTITY_LENGTH} characters")
    parse_quantity(value)
    return value


#: The longest quantity string: it bounds the CEL cost of the rules that parse quantities
#: (``quantity(...)`` costs by length; unbounded, the API server refuses the CRD).
MAX_QUANTITY_LENGTH = 64

QUANTITY_SCHEMA: dict[str, Any] = {
    "anyOf": [{"type": "integer"}, {"type": "string"}],
    "pattern": QUANTITY_PATTERN,
    "maxLength": MAX_QUANTITY_LENGTH,
    "x-kubernetes-int-or-string": True,
}

Quantity = Annotated[
    int | str,
    BeforeValidator(_check_quantity),
    WithJsonSchema(QUANTITY_SCHEMA),
]
