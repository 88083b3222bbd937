"""``networkPolicy`` checks the CRD schema cannot carry: label keys, parsed by the operator into a terminal condition."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from lepton_operator.api.network import LabelSelector
from lepton_operator.status import validation


@pytest.mark.parametrize("key", ["app", "team.name_1", "example.com/tier", "kubernetes.io/metadata.name", "a" * 63])
def test_label_keys_kubernetes_takes_are_taken(key: str) -> None:
    assert LabelSelector.model_validate({"matchLabels": {key: "x"}}).match_labels == {key: "x"}


@pytest.mark.parametrize("key", ["", "-app", "app-", "a b", "Example.com/tier", "a/b/c", "/app", "a" * 64,
                                 "x" * 254 + "/app"])  # fmt: skip
def test_label_keys_the_api_server_would_refuse_are_refused_with_a_reason(key: str) -> None:
    with pytest.raises(ValidationError, match="is not a label key"):
        LabelSelector.model_validate({"matchLabels": {key: "x"}})


def test_a_bad_label_key_is_a_terminal_invalid_spec_not_a_failing_apply() -> None:
    spec: dict[str, Any] = {"image": "trainer:1", "entrypoint": {"module": "train"},
                            "networkPolicy": {"allowFrom": [{"podSelector": {"matchLabels": {"bad key": "x"}}}]}}  # fmt: skip
    parsed = validation.parse_spec("TrainingJob", spec)
    assert isinstance(parsed, ValidationError)
    status = validation.foundation_status("TrainingJob", 3, spec, parsed, None, datetime.now(UTC))
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == validation.INVALID_SPEC and "networkPolicy.allowFrom[0]" in ready["message"]
