"""Spec fuzzing against the real API server while the operator runs (issue #19).

A few hundred objects from ``localcluster.specfuzz`` (drawn from the CRDs' own schemas,
then made hostile; a fixed seed, so a failure reproduces) are created one by one in
this test's namespace. The invariants:

* every refusal carries the API server's message;
* every accepted object gets a phase, or a condition with a reason, within the bound,
  and none is left looping in ``ReconcileError`` (a child the server refuses is a
  terminal ``InvalidSpec``);
* the operator logs no exception and is still running.

The objects are deleted at the end. ``bench/spec_fuzz.py`` runs the same campaign at
10,000 objects and reports the counts.
"""

from __future__ import annotations

import kubernetes
import pytest

from localcluster import specfuzz
from localcluster.kube import Kubectl
from operator_fixtures import RunningOperator

pytestmark = [pytest.mark.e2e]

COUNT = 240
SEED = 19
#: Seconds the accepted objects have, together, to get a phase or a reasoned condition.
SETTLE_SECONDS = 90.0


def test_fuzzed_objects_are_refused_with_a_message_or_settled_without_operator_errors(
    lepton_operator: RunningOperator, kubectl: Kubectl, namespace: str
) -> None:
    objects = specfuzz.objects(COUNT, SEED)
    client = kubernetes.config.new_client_from_config(config_file=kubectl.kubeconfig)  # type: ignore[no-untyped-call]
    campaign = specfuzz.Campaign(kubernetes.client.CustomObjectsApi(client), namespace)
    log_start = lepton_operator.log_path.stat().st_size
    for item in objects:
        campaign.create(item)
    left = campaign.settle(SETTLE_SECONDS)
    with lepton_operator.log_path.open("rb") as log:
        log.seek(log_start)
        exceptions = specfuzz.operator_exceptions(log.read().decode(errors="replace"))
    counts = campaign.counts

    assert counts.created == COUNT
    assert counts.refused_without_message == 0, counts.examples.get("refused_without_message")
    assert counts.refused_with_message > 0 and counts.accepted_settled > 0, counts  # both paths were exercised
    assert left == {}, f"{len(left)} accepted objects unsettled or looping: {sorted(left.items())[:5]}"
    assert exceptions == [], f"{len(exceptions)} tracebacks in the operator log:\n{lepton_operator.process.log_tail(60)}"
    assert lepton_operator.process.alive()
    campaign.delete_all(120)
    assert campaign.observed() == {}
