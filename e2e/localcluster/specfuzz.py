"""Spec fuzzing: Lepton objects generated from the CRDs' own schemas, then made hostile.

Shared by the bounded e2e test (``e2e/tests/test_spec_fuzz.py``) and the benchmark
(``bench/spec_fuzz.py``); both create what :func:`objects` yields against a real API
server while the operator runs, and judge it with :func:`judge`.

Where the objects come from, for a fixed seed (the same seed gives the same objects):

* **Schema-generated.** ``hypothesis-jsonschema`` draws specs from each CRD's
  ``openAPIV3Schema`` (``crds/*.yaml``, the generated ones: what the server
  enforces). The ``x-kubernetes-*`` keys are the server's, so they are translated
  (:func:`json_schema`): ``int-or-string`` becomes ``anyOf[integer, string]`` (the
  quantity pattern stays on the string branch), ``preserve-unknown-fields``
  leaves the object open, ``embedded-resource`` and the list/map-type markers
  are dropped, and ``x-kubernetes-validations`` (CEL) are left to the server:
  some generated objects break them, and must then be refused with a message.
  OpenAPI's boolean ``exclusiveMinimum`` becomes JSON Schema's numeric one.
  Replica counts are capped at :data:`MAX_REPLICAS` while drawing: the fuzz is
  about shapes, and a few hundred accepted jobs of 1,024 workers each would be a
  load test of the scheduler, not of the operator (hostile values still put huge
  numbers there, which the server refuses).
* **Hostile mutations** of those and of the shipped examples
  (``manifests/examples``): one to three leaves replaced (:func:`mutate`) by a
  value from :data:`HOSTILE`: huge and negative integers, empty and
  5,000-character strings, unicode (right-to-left marks, emoji, NUL), path
  traversal in URIs (``s3://b/../../etc``, ``pvc://x/../..``), ``null``, wrong
  types; and now and then a hostile ``metadata.name`` (too long, a digit first, a dot).

hypothesis 6.150+ changed the private ``many`` helper that hypothesis-jsonschema
0.23.1 (the latest) drives; :class:`_LegacyMany` restores the old interface for it,
for this module's use only.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from hypothesis.internal.conjecture import utils as conjecture_utils
from hypothesis_jsonschema import _from_schema, from_schema
from kubernetes.client import ApiException

from localcluster.kube import WaitTimeout, wait_until

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "crds"
EXAMPLES = REPO / "manifests" / "examples"
GROUP, VERSION = "lepton.ai", "v1alpha1"
KINDS = ("LeptonDataset", "TrainingJob", "InferenceService")
PLURALS = {"LeptonDataset": "leptondatasets", "TrainingJob": "trainingjobs", "InferenceService": "inferenceservices"}
#: Largest replica count drawn from the schemas (see the module docstring).
MAX_REPLICAS = 3
#: Specs drawn from each schema at most (see :func:`objects`).
MAX_DRAWS_PER_KIND = 400
_REPLICA_FIELDS = frozenset({"replicas", "minReplicas", "maxReplicas"})

HOSTILE: tuple[Any, ...] = (
    2**63, 2**63 - 1, -(2**63), 10**30, -1, 0, 1.5, float("1e308"),
    "", "x" * 5000, "名前-データ", "\u202eevil\u202c", "😀" * 40, "nul\x00byte", " ", "-",
    "s3://b/../../etc", "pvc://x/../..", "pvc://claim/../../../etc/shadow", "https://h/../../etc/passwd",
    "file:///etc/passwd", "s3://../x", "/../../root", "../../", "%2e%2e%2f",
    None, True, [], {}, ["a"], {"a": 1}, "10Gi", "-1Gi", "0", "1e100",
)  # fmt: skip


class _LegacyMany:
    """The ``more()``/``reject()`` interface of hypothesis' old ``many``, over the new iterator one."""

    def __init__(self, data: Any, **sizes: Any) -> None:
        self._many = conjecture_utils.many(data, **sizes)
        self._many.__enter__()
        self._elements = iter(self._many)

    def more(self) -> bool:
        try:
            next(self._elements)
        except StopIteration:
            self._many.__exit__(None)
            return False
        return True

    def reject(self, why: str | None = None) -> None:
        self._many.reject(why)


class _ConjectureUtils(ModuleType):
    """hypothesis' conjecture utils as hypothesis-jsonschema expects them (``many`` with ``more()``)."""

    many = _LegacyMany

    def __getattr__(self, name: str) -> Any:
        return getattr(conjecture_utils, name)


if not hasattr(conjecture_utils.many, "more"):
    setattr(_from_schema, "cu", _ConjectureUtils("hypothesis_jsonschema_cu"))  # noqa: B010 - not exported


def crd_schemas(directory: Path = CRDS) -> dict[str, dict[str, Any]]:
    """kind -> the ``openAPIV3Schema`` of its CRD, as committed in ``crds/``."""
    schemas = {}
    for path in sorted(directory.glob("lepton.ai_*.yaml")):
        crd = yaml.safe_load(path.read_text())
        schemas[crd["spec"]["names"]["kind"]] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schemas


def json_schema(node: Any, name: str = "") -> Any:
    """A structural OpenAPI v3 schema as plain JSON Schema (see the module docstring)."""
    if isinstance(node, list):
        return [json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key in ("description", "default", "exclusiveMinimum", "exclusiveMaximum"):
            continue
        if key == "properties":
            out[key] = {child: json_schema(schema, child) for child, schema in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = json_schema(value)
        elif key == "anyOf":
            out[key] = [json_schema(branch) for branch in value]
        else:
            out[key] = value
    for exclusive, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if node.get(exclusive) is True and bound in out:
            out[exclusive] = out.pop(bound)
    if node.get("x-kubernetes-int-or-string"):
        pattern = out.pop("pattern", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string", **({"pattern": pattern} if pattern else {})}]
    if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out:
        if not node.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if name in _REPLICA_FIELDS and out.get("type") == "integer":
        out["maximum"] = min(int(out.get("maximum", MAX_REPLICAS)), MAX_REPLICAS)
    return out


def spec_strategy(kind: str, schemas: Mapping[str, dict[str, Any]]) -> st.SearchStrategy[Any]:
    """Specs of ``kind`` drawn from its CRD's spec schema."""
    return from_schema(json_schema(schemas[kind]["properties"]["spec"]))


def draw_specs(kind: str, count: int, fuzz_seed: int, schemas: Mapping[str, dict[str, Any]]) -> list[Any]:
    """``count`` specs (fewer only if the schema has fewer) of ``kind``, the same for the same seed."""
    drawn: list[Any] = []

    @settings(max_examples=count, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @seed(fuzz_seed)
    @given(spec_strategy(kind, schemas))
    def collect(spec: Any) -> None:
        drawn.append(spec)

    collect()
    return drawn[:count]


def shipped_examples(directory: Path = EXAMPLES) -> list[dict[str, Any]]:
    """The Lepton objects of ``manifests/examples``."""
    found = []
    for path in sorted(directory.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if isinstance(document, dict) and document.get("kind") in KINDS:
                found.append(document)
    return found


def _leaves(value: Any, path: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    """Paths of every node under ``value`` (containers too: a whole block may be replaced)."""
    if path:
        yield path
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _leaves(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _leaves(child, (*path, index))


def mutate(spec: Any, rng: random.Random) -> Any:
    """``spec`` with one to three nodes replaced by hostile values (a fresh copy)."""
    result = copy.deepcopy(spec)
    if not isinstance(result, dict) or not result:
        return rng.choice(HOSTILE)
    for _ in range(rng.randint(1, 3)):
        paths = list(_leaves(result))
        if not paths:
            break
        *parents, last = rng.choice(paths)
        node: Any = result
        for part in parents:
            node = node[part]
        node[last] = copy.deepcopy(rng.choice(HOSTILE))
    return result


def hostile_name(index: int, rng: random.Random) -> str:
    """A name the name rules refuse: too long, with a dot, or a digit first (which only a dataset may have)."""
    return rng.choice((f"{index}-fuzz", f"fuzz-{index}." + "x" * 60, f"fuzz.{index}", f"fuzz-{index}-" + "y" * 60))


@dataclass(frozen=True)
class FuzzObject:
    """One object to create, and where it came from (``schema``, ``mutated`` or ``example``)."""

    index: int
    origin: str
    body: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.body["kind"])

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])


def objects(count: int, fuzz_seed: int = 19, schemas: Mapping[str, dict[str, Any]] | None = None,
            draws_per_kind: int = MAX_DRAWS_PER_KIND) -> list[FuzzObject]:  # fmt: skip
    """``count`` objects, a third each from the schemas, mutated schema objects and mutated examples.

    At most ``draws_per_kind`` specs are drawn from each schema (about 0.1 s each on
    these schemas); a longer run cycles through them, every mutation drawn afresh.
    """
    schemas = schemas or crd_schemas()
    rng = random.Random(fuzz_seed)
    per_kind = min(count // len(KINDS) + 1, draws_per_kind)
    drawn = {kind: draw_specs(kind, per_kind, fuzz_seed, schemas) for kind in KINDS}
    examples = shipped_examples()
    made: list[FuzzObject] = []
    for index in range(count):
        kind = KINDS[index % len(KINDS)]
        specs = drawn[kind] or [{}]
        origin = ("schema", "mutated", "example")[(index // len(KINDS)) % 3]
        if origin == "example":
            example = rng.choice(examples)
            kind, spec = example["kind"], mutate(example["spec"], rng)
        elif origin == "mutated":
            spec = mutate(rng.choice(specs), rng)
        else:
            spec = copy.deepcopy(specs[(index // (3 * len(KINDS))) % len(specs)])  # each drawn spec in turn
        name = hostile_name(index, rng) if rng.random() < 0.05 else f"fuzz-{index}"
        body = {"apiVersion": "lepton.ai/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec}
        made.append(FuzzObject(index, origin, body))
    return made


# --- judging what happened ---------------------------------------------------------------


def refusal_message(body: Any) -> str:
    """The ``message`` of the API server's ``Status`` answer to a refused create ("" when none)."""
    if isinstance(body, (str, bytes)):
        try:
            body = json.loads(body)
        except ValueError:
            return ""
    return str(body.get("message") or "") if isinstance(body, dict) else ""


def settled(obj: Mapping[str, Any]) -> bool:
    """Whether the operator has said something about ``obj``: a phase, or a condition with a reason."""
    status = obj.get("status") or {}
    if status.get("phase"):
        return True
    return any(c.get("reason") for c in status.get("conditions") or [] if isinstance(c, Mapping))


def looping(obj: Mapping[str, Any]) -> bool:
    """Whether ``obj`` is stuck retrying: its Ready condition says ``ReconcileError``."""
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("reason") == "ReconcileError" for c in conditions)


@dataclass
class Counts:
    """What became of the fuzzed objects (the benchmark writes these)."""

    created: int = 0
    refused_with_message: int = 0
    refused_without_message: int = 0
    accepted_settled: int = 0
    stuck: int = 0
    reconcile_error: int = 0
    operator_exceptions: int = 0
    by_origin: dict[str, dict[str, int]] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def note(self, origin: str, outcome: str, detail: str = "", keep: int = 5) -> None:
        tally = self.by_origin.setdefault(origin, {})
        tally[outcome] = tally.get(outcome, 0) + 1
        if detail and len(self.examples.setdefault(outcome, [])) < keep:
            self.examples[outcome].append(detail[:300])


def operator_exceptions(log_text: str) -> list[str]:
    """Lines of an operator log that report an exception escaping a handler (a traceback)."""
    return [line for line in log_text.splitlines() if "Traceback (most recent call last)" in line]




@dataclass
class Campaign:
    """Creates fuzzed objects in one namespace through ``api`` (a ``kubernetes.client.CustomObjectsApi``)."""

    api: Any
    namespace: str
    counts: Counts = field(default_factory=Counts)
    accepted: dict[tuple[str, str], FuzzObject] = field(default_factory=dict)

    def create(self, item: FuzzObject) -> None:
        """Create one object and record whether the server refused it, and with what message."""
        self.counts.created += 1
        try:
            self.api.create_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURALS[item.kind], item.body, _request_timeout=30
            )
        except ApiException as error:
            message = refusal_message(error.body)
            outcome = "refused_with_message" if message else "refused_without_message"
            setattr(self.counts, outcome, getattr(self.counts, outcome) + 1)
            self.counts.note(item.origin, outcome, message or f"{error.status} {error.reason}")
            return
        self.accepted[(item.kind, item.name)] = item

    def observed(self) -> dict[tuple[str, str], dict[str, Any]]:
        """The accepted objects as the server has them now."""
        found: dict[tuple[str, str], dict[str, Any]] = {}
        for kind in KINDS:
            listing = self.api.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURALS[kind], _request_timeout=60)
            for obj in listing.get("items") or []:
                key = (kind, obj["metadata"]["name"])
                if key in self.accepted:
                    found[key] = obj
        return found

    def unsettled(self) -> dict[tuple[str, str], str]:
        """Accepted objects still without a phase or reasoned condition, or looping in ReconcileError: why."""
        seen = self.observed()
        pending: dict[tuple[str, str], str] = {}
        for key in self.accepted:
            obj = seen.get(key)
            if obj is None or not settled(obj):
                pending[key] = "no phase and no condition with a reason"
            elif looping(obj):
                ready = next(c for c in obj["status"]["conditions"] if c.get("type") == "Ready")
                pending[key] = f"ReconcileError: {ready.get('message', '')}"
        return pending

    def settle(self, timeout: float) -> dict[tuple[str, str], str]:
        """Wait (polling the server) until every accepted object is settled, at most ``timeout`` s; what is left."""
        left: dict[tuple[str, str], str] = {}

        def done() -> bool:
            left.clear()
            left.update(self.unsettled())
            return not left

        try:
            wait_until(done, timeout, "every accepted fuzz object settled", interval=1.0)
        except WaitTimeout:
            pass
        for key, why in left.items():
            outcome = "reconcile_error" if why.startswith("ReconcileError") else "stuck"
            setattr(self.counts, outcome, getattr(self.counts, outcome) + 1)
            self.counts.note(self.accepted[key].origin, outcome, f"{key[0]}/{key[1]}: {why}")
        for key in set(self.accepted) - set(left):
            self.counts.accepted_settled += 1
            self.counts.note(self.accepted[key].origin, "accepted_settled")
        return left

    def delete_all(self, timeout: float) -> None:
        """Delete every Lepton object of the namespace and wait until they are gone."""
        for kind in KINDS:
            self.api.delete_collection_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURALS[kind])

        def gone() -> bool:
            return not any(
                self.api.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURALS[kind]).get("items")
                for kind in KINDS
            )

        wait_until(gone, timeout, f"fuzz objects in {self.namespace} deleted", interval=1.0)
