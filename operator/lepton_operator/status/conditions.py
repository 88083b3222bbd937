"""Status conditions with kstatus semantics, as pure functions.

Every Lepton resource reports the three kstatus conditions (``Ready``,
``Reconciling``, ``Stalled``) plus kind-specific ones (``Validated`` for all
three in this version). The rules, written once here:

* a condition is identified by its ``type``; setting one replaces the condition
  of that type and keeps the others (and their order) as they are;
* ``lastTransitionTime`` moves only when ``status`` changes. A new reason or
  message with the same status keeps the old time, so the time answers "since
  when has this been False?", which is what people and alerts ask;
* every condition carries the ``observedGeneration`` it was computed from.

The three kstatus conditions are kept present with an explicit ``True`` or
``False`` rather than removed when not applicable: kstatus readers accept both,
and ``kubectl wait --for=condition=Stalled=false`` needs the condition to exist.

Nothing here reads a clock: the caller passes ``now``, so a reconcile is a pure
function of (object, now) and tests need no time mocking.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from lepton_operator.api.common import Condition, ConditionStatus

READY = "Ready"
RECONCILING = "Reconciling"
STALLED = "Stalled"
VALIDATED = "Validated"


@dataclass(frozen=True)
class SecretProblem:
    """Why a Secret (or a source's CA bundle ConfigMap) cannot be used yet, for a condition.

    ``SecretNotFound``, ``SecretKeyMissing``, ``SecretTypeMismatch``, ``ConfigMapNotFound``, ``ConfigMapKeyMissing``.
    """

    reason: str
    message: str


#: Upper bound on a condition message we write (the schema allows 32768); long
#: messages are cut with a marker so a status patch can never be refused for size.
MAX_MESSAGE_LENGTH = 4096
_CUT_MARKER = " ... (truncated)"


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with second precision, as ``metav1.Time`` serialises (``2025-01-02T03:04:05Z``)."""
    if moment.tzinfo is None:
        raise ValueError("format_time needs an aware datetime")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> datetime | None:
    """The moment a ``metav1.Time`` names (the inverse of :func:`format_time`); ``None`` for none."""
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def truncate(message: str, limit: int = MAX_MESSAGE_LENGTH) -> str:
    """``message`` cut to at most ``limit`` characters, marking the cut."""
    if len(message) <= limit:
        return message
    return message[: max(0, limit - len(_CUT_MARKER))] + _CUT_MARKER


def status_of(flag: bool) -> ConditionStatus:
    """``"True"`` or ``"False"``."""
    return "True" if flag else "False"


def make(ctype: str, flag: bool, reason: str, message: str, generation: int) -> Condition:
    """A condition without a transition time yet (``set_condition`` assigns it)."""
    return Condition(
        type=ctype,
        status=status_of(flag),
        reason=reason,
        message=truncate(message),
        observed_generation=generation,
    )


def ready(flag: bool, reason: str, message: str, generation: int) -> Condition:
    """kstatus ``Ready``: the resource does what its spec asks."""
    return make(READY, flag, reason, message, generation)


def reconciling(flag: bool, reason: str, message: str, generation: int) -> Condition:
    """kstatus ``Reconciling``: the controller is working towards the spec and expects progress."""
    return make(RECONCILING, flag, reason, message, generation)


def stalled(flag: bool, reason: str, message: str, generation: int) -> Condition:
    """kstatus ``Stalled``: no progress is possible without a change (to the spec or the world)."""
    return make(STALLED, flag, reason, message, generation)


def parse_conditions(raw: Any) -> list[Condition]:
    """The conditions of an existing status, leniently.

    Entries that do not parse (written by hand, or by an older operator) are
    dropped rather than failing the reconcile: they will be rewritten anyway.
    """
    if not isinstance(raw, Sequence) or isinstance(raw, str | bytes):
        return []
    out: list[Condition] = []
    for item in raw:
        if not isinstance(item, Mapping):
            continue
        try:
            out.append(Condition.model_validate(dict(item)))
        except ValidationError:
            continue
    return out


def find(conditions: Iterable[Condition], ctype: str) -> Condition | None:
    """The condition of type ``ctype``, or ``None``."""
    for cond in conditions:
        if cond.type == ctype:
            return cond
    return None


def set_condition(conditions: Sequence[Condition], new: Condition, now: str) -> list[Condition]:
    """``conditions`` with ``new`` in place of the condition of its type (appended if absent).

    ``lastTransitionTime`` is kept from the old condition when the status is the
    same, and set to ``now`` when the status changed or the condition is new.
    The input is not modified.
    """
    old = find(conditions, new.type)
    if old is not None and old.status == new.status and old.last_transition_time:
        moment = old.last_transition_time
    else:
        moment = now
    placed = new.model_copy(update={"last_transition_time": moment})
    if old is None:
        return [*conditions, placed]
    return [placed if cond.type == new.type else cond for cond in conditions]


def set_conditions(conditions: Sequence[Condition], new: Iterable[Condition], now: str) -> list[Condition]:
    """``set_condition`` for each of ``new``, in order."""
    result = list(conditions)
    for cond in new:
        result = set_condition(result, cond, now)
    return result


def to_wire(conditions: Iterable[Condition]) -> list[dict[str, Any]]:
    """Conditions as the API server stores them (camelCase, unset fields left out)."""
    return [cond.to_wire() for cond in conditions]
