"""The body of a server-side apply says what the manifest says, to a YAML parser as to a JSON one."""

from __future__ import annotations

import json

import yaml
from hypothesis import given
from hypothesis import strategies as st

from lepton_operator.controllers import kube

# Text as the API server hands it out: any Unicode except lone surrogates (its JSON has none).
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@given(TEXT, TEXT)
def test_any_text_reads_back_the_same_as_yaml_and_as_json(key: str, value: str) -> None:
    manifest = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {key: value}}
    body = kube.apply_body(manifest)
    assert json.loads(body) == manifest
    assert yaml.safe_load(body.decode()) == manifest  # apply-patch+yaml: the server parses it as YAML


def test_characters_outside_the_bmp_go_as_utf8_and_controls_as_escapes() -> None:
    body = kube.apply_body({"v": "😀\x85\x7f\u2028"})
    assert "😀".encode() in body and b"\\ud83d" not in body
    assert b"\\u0085\\u007f\\u2028" in body
