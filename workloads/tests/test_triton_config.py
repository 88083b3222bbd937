"""config.pbtxt generation round-trips through Triton's own ModelConfig schema."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lepton_workloads import triton_config as tc

IMAGE = tc.Tensor("INPUT__0", "TYPE_FP32", (3, 32, 32))
LOGITS = tc.Tensor("OUTPUT__0", "TYPE_FP32", (10,))


def test_render_is_triton_text_format() -> None:
    text = tc.render(
        tc.ModelConfig("cnn", "pytorch_libtorch", [IMAGE], [LOGITS], max_batch_size=16, instance_count=2,
                       dynamic_batching=True, preferred_batch_sizes=(4, 8), max_queue_delay_microseconds=200)  # fmt: skip
    )
    assert 'platform: "pytorch_libtorch"' in text
    assert "max_batch_size: 16" in text
    assert "data_type: TYPE_FP32" in text
    assert "max_queue_delay_microseconds: 200" in text
    parsed = tc.parse(text)
    assert parsed.name == "cnn" and list(parsed.input[0].dims) == [3, 32, 32]
    assert parsed.instance_group[0].count == 2


def test_onnx_maps_to_triton_platform_and_file() -> None:
    config = tc.ModelConfig("mlp", "onnxruntime", [tc.Tensor("x", "TYPE_FP32", (-1,))], [LOGITS])
    assert 'platform: "onnxruntime_onnx"' in tc.render(config)
    assert tc.model_file("onnxruntime") == "model.onnx" and tc.model_file("pytorch_libtorch") == "model.pt"


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        (tc.ModelConfig("", "pytorch_libtorch", [IMAGE], [LOGITS]), "name"),
        (tc.ModelConfig("m", "tensorflow", [IMAGE], [LOGITS]), "format"),
        (tc.ModelConfig("m", "pytorch_libtorch", [], [LOGITS]), "input"),
        (tc.ModelConfig("m", "pytorch_libtorch", [tc.Tensor("x", "TYPE_FLOAT", (1,))], [LOGITS]), "data type"),
        (tc.ModelConfig("m", "pytorch_libtorch", [tc.Tensor("x", "TYPE_FP32", (0,))], [LOGITS]), "dims"),
        (tc.ModelConfig("m", "pytorch_libtorch", [IMAGE], [LOGITS], dynamic_batching=True), "dynamic batching"),
        (tc.ModelConfig("m", "pytorch_libtorch", [IMAGE], [IMAGE]), "unique"),
    ],
)
def test_invalid_configs_are_refused_with_a_reason(config: tc.ModelConfig, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        tc.render(config)


def test_parse_refuses_fields_triton_does_not_know() -> None:
    with pytest.raises(ValueError, match="ModelConfig"):
        tc.parse('name: "m"\nplatform: "pytorch_libtorch"\nmax_batch_sizes: 4\n')


@given(
    st.integers(1, 64),
    st.integers(1, 8),
    st.lists(st.integers(1, 64), max_size=3),
    st.sampled_from(list(tc.FORMATS)),
    st.sampled_from(tc.INSTANCE_KINDS),
)
def test_round_trip(max_batch: int, instances: int, preferred: list[int], model_format: str, kind: str) -> None:
    config = tc.ModelConfig(
        "m", model_format, (IMAGE,), (LOGITS,), max_batch_size=max_batch, instance_count=instances,
        instance_kind=kind, dynamic_batching=True,
        preferred_batch_sizes=tuple(size for size in preferred if size <= max_batch), max_queue_delay_microseconds=5,
    )  # fmt: skip
    assert tc.from_protobuf(tc.parse(tc.render(config))) == config
