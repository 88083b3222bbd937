"""From a raw ``spec`` to the status the operator writes, as pure functions.

The API server enforces the CRD schema and its CEL rules at admission, but the
operator still parses every spec with the same pydantic models before acting on
it: objects stored before a CRD change, schema features the server checks
differently (regular expressions: Go's ``\\S`` is ASCII, pydantic's is Unicode)
and hand-edited CRDs all reach the operator. Such a spec is a *user* error,
never an operator crash: it becomes ``Validated=False`` with reason
``InvalidSpec`` and a message naming each bad field the way the user wrote it
(``spec.workers.replicas: ...``, camelCase, list indices in brackets), plus
``Stalled=True`` (nothing will happen until the spec changes), ``Ready=False``
and phase ``Failed``. The Failed state is recomputed from the spec on every
reconcile, so fixing the spec clears it (Fluid #6160). A child that the API
server refuses as ``422 Invalid`` (:func:`api_refusal`) gets the same terminal
status with the server's message (:func:`refused_status`): retrying the same
write cannot succeed, so it must not loop as a ``ReconcileError``.

A valid spec, in this version, is accepted and waits for its kind's controller:
``Validated=True``, ``Reconciling=True`` and ``Ready=False`` with reason
``Pending``, phase ``Pending``. The status is built through the kind's status
model, so everything written here is known to fit the CRD's status schema.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ValidationError

from lepton_operator.api import meta
from lepton_operator.api.common import ApiModel, Condition
from lepton_operator.api.dataset import LeptonDatasetSpec, LeptonDatasetStatus
from lepton_operator.api.inference import InferenceServiceSpec, InferenceServiceStatus
from lepton_operator.api.training import TrainingJobSpec, TrainingJobStatus
from lepton_operator.status import conditions as cond

INVALID_SPEC = "InvalidSpec"
VALID = "Valid"
PENDING = "Pending"
RECONCILE_ERROR = "ReconcileError"
PHASE_PENDING = "Pending"
PHASE_FAILED = "Failed"

#: At most this many field errors are listed in one message; the rest are counted.
MAX_LISTED_ERRORS = 10

# Parts of a pydantic error location that name a schema branch, not a field:
# "function-after[_bounds(), WorkerSpec]", "lax-or-strict", "int", "str" ... A
# part that is a key of the input always counts as a field (see field_path).
_SCHEMA_TAG = re.compile(r"[\[\](),-]|^(int|str|float|bool|none)$")


@dataclass(frozen=True)
class KindModels:
    """The models the operator parses one kind with."""

    info: meta.ResourceInfo
    spec: type[ApiModel]
    status: type[ApiModel]


KINDS: dict[str, KindModels] = {
    models.info.kind: models
    for models in (
        KindModels(meta.LEPTON_DATASET, LeptonDatasetSpec, LeptonDatasetStatus),
        KindModels(meta.TRAINING_JOB, TrainingJobSpec, TrainingJobStatus),
        KindModels(meta.INFERENCE_SERVICE, InferenceServiceSpec, InferenceServiceStatus),
    )
}


def to_plain(value: Any) -> Any:
    """A deep copy made of plain ``dict``/``list``/scalars (kopf hands out mapping views)."""
    if isinstance(value, Mapping):
        return {str(key): to_plain(item) for key, item in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [to_plain(item) for item in value]
    return value


def field_path(loc: Sequence[int | str], data: Any, prefix: str = "spec") -> str:
    """A pydantic error location as the user wrote the field: ``spec.workers.tolerations[0].value``.

    Locations carry the input's own keys (camelCase, since objects come from the
    API server), so keys are kept as they are; only schema branch tags, which
    name no field, are dropped. ``data`` is the validated input, used to tell a
    real key that happens to look like a tag from a tag.
    """
    path = prefix
    current: Any = data
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
            current = current[part] if isinstance(current, list) and -len(current) <= part < len(current) else None
            continue
        if isinstance(current, Mapping) and part in current:
            path += f".{part}"
            current = current[part]
            continue
        if _SCHEMA_TAG.search(part):
            continue
        path += f".{part}"  # a missing field, or a key of a value that is not a mapping
        current = None
    return path


def _error_text(error: Mapping[str, Any]) -> str:
    text = str(error.get("msg", "invalid"))
    for noise in ("Value error, ", "Assertion failed, "):
        if text.startswith(noise):
            text = text[len(noise) :]
    return text


def error_message(error: ValidationError, data: Any, prefix: str = "spec") -> str:
    """One line per field: ``spec.a.b: what is wrong; spec.c: ...``.

    Only pydantic's message is used, never the offending input, so a value that
    should not be echoed (a token pasted into the wrong field) stays out of the
    status and the events.
    """
    errors = error.errors(include_input=False, include_url=False)
    parts = [f"{field_path(e['loc'], data, prefix)}: {_error_text(e)}" for e in errors[:MAX_LISTED_ERRORS]]
    if len(errors) > MAX_LISTED_ERRORS:
        parts.append(f"and {len(errors) - MAX_LISTED_ERRORS} more")
    return cond.truncate("; ".join(parts))


def parse_spec(kind: str, spec: Any) -> BaseModel | ValidationError:
    """The parsed spec of a ``kind`` object, or the validation error (never raised)."""
    try:
        return KINDS[kind].spec.model_validate(spec)
    except ValidationError as error:
        return error


def foundation_status(
    kind: str,
    generation: int,
    spec: Any,
    parsed: BaseModel | ValidationError,
    existing: Mapping[str, Any] | None,
    now: datetime,
) -> dict[str, Any]:
    """The status fields this version of the operator owns, for one reconcile.

    ``spec`` is the raw spec (used to name fields in messages), ``parsed`` what
    :func:`parse_spec` made of it, ``existing`` the object's current status. The
    result is meant for a JSON merge patch of ``status``: it holds ``phase``,
    ``observedGeneration`` and the complete ``conditions`` list.
    """
    models = KINDS[kind]
    when = cond.format_time(now)
    if isinstance(parsed, ValidationError):
        phase, new = PHASE_FAILED, _invalid(error_message(parsed, spec), generation)
    else:
        waiting = (
            f"spec accepted; waiting for the {kind} controller, which this operator version does not run yet"
        )
        phase = PHASE_PENDING
        new = [
            cond.make(cond.VALIDATED, True, VALID, "spec is valid", generation),
            cond.ready(False, PENDING, waiting, generation),
            cond.reconciling(True, PENDING, waiting, generation),
            cond.stalled(False, VALID, "spec is valid", generation),
        ]
    return _status(models, phase, generation, existing, new, when)


def _invalid(message: str, generation: int) -> list[Condition]:
    """The terminal conditions of a spec that nothing will come of until it changes."""
    return [
        cond.make(cond.VALIDATED, False, INVALID_SPEC, message, generation),
        cond.ready(False, INVALID_SPEC, message, generation),
        cond.reconciling(False, INVALID_SPEC, "waiting for the spec to be fixed", generation),
        cond.stalled(True, INVALID_SPEC, message, generation),
    ]


def api_refusal(error: BaseException) -> str | None:
    """The API server's message when ``error`` is its ``422 Invalid`` answer to a write, else ``None``.

    A child rendered from a spec that admission accepted can still break a rule
    only the child's own kind checks (a Pod's resource names, a label value a
    stored object's name makes too long): the server answers 422 with reason
    ``Invalid``, and writing the same child again gets the same answer. That is
    a property of the spec, so it becomes a terminal ``InvalidSpec`` status
    (:func:`refused_status`), never an endless ``ReconcileError`` retry.
    Every other failure (409, 429, 5xx, a quota's 403, a dropped connection)
    may pass and stays a retry.
    """
    body, code = getattr(error, "body", None), getattr(error, "status", None)
    if code != 422 or not isinstance(body, (str, bytes)):
        return None
    try:
        server = json.loads(body)
    except ValueError:
        return None
    if not isinstance(server, dict) or server.get("reason") != "Invalid" or not server.get("message"):
        return None
    return str(server["message"])


def refused_status(
    kind: str, generation: int, refusal: str, existing: Mapping[str, Any] | None, now: datetime
) -> dict[str, Any]:
    """The status of an object whose child the API server refused as invalid (see :func:`api_refusal`).

    The same terminal conditions as an invalid spec (phase ``Failed``,
    ``Stalled=True``, reason ``InvalidSpec``) with the server's own message,
    which names the child's field and the rule it breaks.
    """
    message = cond.truncate(f"the API server refused a child object rendered from this spec: {refusal}")
    return _status(KINDS[kind], PHASE_FAILED, generation, existing, _invalid(message, generation), cond.format_time(now))


def describe_error(error: BaseException) -> str:
    """One readable line for ``error``: the API server's own message for a refused request.

    An API client error carries the HTTP status and the server's ``Status`` object as a JSON
    body (the kubernetes client's ``ApiException`` does); its ``message`` is what a user needs
    (e.g. which Pod Security rule a pod breaks), not the raw response dump.
    """
    name = type(error).__name__
    body, code = getattr(error, "body", None), getattr(error, "status", None)
    if isinstance(body, (str, bytes)) and isinstance(code, int):
        try:
            server = json.loads(body)
        except ValueError:
            server = None
        if isinstance(server, dict) and server.get("message"):
            reason = f" {server['reason']}" if server.get("reason") else ""
            return f"{name} {code}{reason}: {server['message']}"
    return f"{name}: {error}" if str(error) else name


def error_status(
    kind: str,
    generation: int,
    error: BaseException,
    existing: Mapping[str, Any] | None,
    now: datetime,
    retry_in: float | None = None,
) -> dict[str, Any]:
    """Conditions recording an unexpected reconcile failure that will be retried.

    ``Validated`` and the phase are left as they were: the failure says nothing
    about the spec. ``Reconciling=True`` because a retry is scheduled.
    """
    models = KINDS[kind]
    text = describe_error(error)
    retry = f"; retrying in {retry_in:.0f} s" if retry_in is not None else "; will retry"
    message = cond.truncate(f"reconcile failed: {text}", 1024 - len(retry)) + retry
    new = [
        cond.ready(False, RECONCILE_ERROR, message, generation),
        cond.reconciling(True, RECONCILE_ERROR, message, generation),
        cond.stalled(False, RECONCILE_ERROR, message, generation),
    ]
    return _status(models, None, generation, existing, new, cond.format_time(now))


def _status(
    models: KindModels,
    phase: str | None,
    generation: int,
    existing: Mapping[str, Any] | None,
    new: list[Condition],
    when: str,
) -> dict[str, Any]:
    current = cond.parse_conditions((existing or {}).get("conditions"))
    merged = cond.set_conditions(current, new, when)
    fields: dict[str, Any] = {"observed_generation": generation, "conditions": merged}
    if phase is not None:
        fields["phase"] = phase
    return models.status.model_validate(fields).to_wire()


def needs_patch(existing: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Whether writing ``new`` (a merge patch of status) would change ``existing``.

    A reconcile that finds nothing new writes nothing, so resuming or a no-op
    update does not churn resourceVersions and watch events.
    """
    current = existing or {}
    return any(current.get(key) != value for key, value in new.items())
