"""engines.deploy.pbtxt: nested dicts and lists to protobuf text format, read back by protobuf's own parser."""

from __future__ import annotations

import pytest
from google.protobuf import struct_pb2, text_format

from engines.deploy.pbtxt import Enum, quote, to_pbtxt

from .deploy_support import triton_model_config


def test_a_model_config_round_trips_through_tritons_message() -> None:
    pb2 = triton_model_config()
    name = 'we"ird\\name\twith\nnewline, é and \x01'
    text = to_pbtxt(
        {
            "name": name,
            "platform": "onnxruntime_onnx",
            "max_batch_size": 4,
            "input": [
                {"name": "a", "data_type": Enum("TYPE_FP32"), "format": Enum("FORMAT_NCHW"), "dims": [3, -1, 8]},
                {"name": "b", "data_type": Enum("TYPE_INT64"), "dims": [1], "optional": True, "format": None},
            ],
            "output": [{"name": "y", "data_type": Enum("TYPE_FP16"), "dims": [10], "label_filename": "l.txt"}],
            "dynamic_batching": {"preferred_batch_size": [2, 4], "max_queue_delay_microseconds": 100},
            "instance_group": [{"count": 2, "kind": Enum("KIND_GPU"), "gpus": []}],
            "response_cache": {"enable": False},
        }
    )
    config = text_format.Parse(text, pb2.ModelConfig())
    assert config.name == name and config.max_batch_size == 4
    assert [(i.name, list(i.dims), i.data_type, i.optional) for i in config.input] == [
        ("a", [3, -1, 8], pb2.TYPE_FP32, False),
        ("b", [1], pb2.TYPE_INT64, True),
    ]
    assert config.input[0].format == pb2.ModelInput.FORMAT_NCHW and not config.input[1].format
    assert config.output[0].label_filename == "l.txt" and config.output[0].data_type == pb2.TYPE_FP16
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 4]
    assert config.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_GPU and config.instance_group[0].count == 2
    assert config.HasField("response_cache") and not config.response_cache.enable


@pytest.mark.parametrize("number", [1e-9, 0.1, -2.5, 1e300, 3.0, 0.123456789, 1 / 3, 123456789.125, 5e-324])
def test_floats_read_back_exactly(number: float) -> None:
    value = text_format.Parse(to_pbtxt({"number_value": number}), struct_pb2.Value())
    assert value.number_value == number


@pytest.mark.parametrize("number", [0.123456789, 1 / 3, 123456789.125])
def test_floats_that_g_would_shorten_keep_every_digit(number: float) -> None:
    """``%g`` keeps six significant digits: these numbers would come back as others (the check that this
    test can fail), so the writer must not use it."""
    assert float(f"{number:g}") != number
    assert float(to_pbtxt({"x": number}).split(": ")[1]) == number


def test_a_float32_field_of_tritons_config_reads_back_as_the_float32_of_the_number() -> None:
    import numpy as np

    pb2 = triton_model_config()
    number = 0.123456789
    text = to_pbtxt({"sequence_batching": {"direct": {"minimum_slot_utilization": number}}})
    config = text_format.Parse(text, pb2.ModelConfig())
    assert np.float32(config.sequence_batching.direct.minimum_slot_utilization) == np.float32(number)
    assert np.float32(float(f"{number:g}")) != np.float32(number)


def test_layout_is_one_field_a_line_and_nested_messages_are_indented() -> None:
    assert to_pbtxt({"a": {"b": [1, 2], "c": Enum("X")}, "d": [{"e": "f"}, {"e": "g"}]}) == (
        'a {\n  b: [1, 2]\n  c: X\n}\nd [\n  {\n    e: "f"\n  },\n  {\n    e: "g"\n  }\n]\n'
    )
    assert quote("a\rb\x7f") == '"a\\rb\\177"'


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ({"bad-name": 1}, ValueError),
        ({"x": float("nan")}, ValueError),
        ({"x": [1, {"y": 2}]}, TypeError),
        ({"x": object()}, TypeError),
    ],
)
def test_what_text_format_cannot_say_is_refused(message: dict, error: type[Exception]) -> None:
    with pytest.raises(error):
        to_pbtxt(message)
    with pytest.raises(ValueError):
        Enum("TYPE FP32")


def test_without_tritonclient_the_triton_tests_fail_rather_than_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "tritonclient" else real(name, *a)
    )
    with pytest.raises(pytest.fail.Exception, match="tritonclient is not installed"):
        triton_model_config()
