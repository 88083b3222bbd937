"""Why a worker failed, which failure is the cause, and whether the group restarts: classes, budgets, backoff."""

from __future__ import annotations

from datetime import UTC, datetime

from lepton_operator.api.training import RestartCounts, RestartPolicy
from lepton_operator.status import training_failures as f
from worker_pods import failed, pod


def test_classification_of_failures() -> None:
    policy = RestartPolicy()
    assert f.classify(pod(0), policy) is None
    assert f.classify(failed(0, 143), policy) == f.Failure("RetryableExitCode", True, f.classify(failed(0, 143), policy).message)  # type: ignore[union-attr]
    oom = f.classify(failed(0, 137, reason="OOMKilled"), policy)
    assert oom is not None and (oom.reason, oom.retryable) == ("OOMKilled", True)
    code = f.classify(failed(0, 1), policy)
    assert code is not None and (code.reason, code.retryable) == ("NonRetryableExitCode", False)
    assert "exit code 1" in code.message
    preempted = pod(0, phase="Failed", conditions=[{"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}])
    assert f.classify(preempted, policy) == f.Failure("Preempted", True, "worker job-worker-0-g0 was preempted (PreemptionByScheduler)")
    lost = pod(0, phase="Unknown")
    found = f.classify(lost, policy)
    assert found is not None and (found.reason, found.retryable) == ("NodeLost", True)
    found = f.classify(lost, RestartPolicy(on_node_loss="Fail"))
    assert found is not None and not found.retryable
    no_oom_retry = f.classify(failed(0, 137, reason="OOMKilled"), RestartPolicy(retryable_exit_codes=[143]))
    assert no_oom_retry is not None and not no_oom_retry.retryable



def test_backoff_doubles_and_is_capped() -> None:
    policy = RestartPolicy.model_validate({"backoff": {"initialSeconds": 10, "maxSeconds": 60}})
    assert [f.backoff_seconds(policy, n) for n in range(6)] == [0, 10, 20, 40, 60, 60]


def test_the_earliest_failure_is_the_cause_an_untimed_one_first_and_a_retryable_one_on_a_tie() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    killed, peer = f.Failure("RetryableExitCode", True, "killed", at), f.Failure("NonRetryableExitCode", False, "peer", at)
    assert f.first_failure([peer, killed]) is killed
    vanished = f.Failure("NodeLost", True, "vanished")
    assert f.first_failure([peer, killed, vanished]) is vanished
    earlier = f.Failure("NonRetryableExitCode", False, "bug", datetime(2026, 1, 2, 3, 4, 4, tzinfo=UTC))
    assert f.first_failure([killed, earlier]) is earlier


def test_decide_counts_a_restart_per_reason_until_the_budget_is_spent_and_a_resize_is_never_spent() -> None:
    policy = RestartPolicy(backoff_limit=1)
    retry = f.Failure("RetryableExitCode", True, "worker failed")
    first = f.decide(retry, RestartCounts(), policy, "2026-01-02T03:04:05Z")
    assert first.restart and first.restarts.total == 1 and first.restarts.by_reason == {"RetryableExitCode": 1}
    spent = f.decide(retry, first.restarts, policy, "2026-01-02T03:04:06Z")
    assert not spent.restart and spent.reason == "BackoffLimitExceeded" and spent.restarts == first.restarts
    resized = f.decide(f.Failure("Resized", True, "grows"), RestartCounts(total=5, by_reason={"Resized": 5}), policy, "now")
    assert resized.restart and f.failure_restarts(resized.restarts) == 0 and f.restart_delay(policy, resized.restarts) == 0
    fatal = f.decide(f.Failure("NonRetryableExitCode", False, "exit 1"), RestartCounts(), policy, "now")
    assert not fatal.restart and fatal.reason == "NonRetryableExitCode"
