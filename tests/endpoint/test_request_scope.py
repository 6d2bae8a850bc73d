"""A request's rollout attempt, read from either server's LiteLLM metadata."""

from __future__ import annotations

from agl_tinker.endpoint.request_scope import TITO_SCOPE, llmproxy_rollout_headers, tito_scope


def test_rollout_attempt_is_read_from_either_server_s_metadata() -> None:
    """The lean server passes the attempt in metadata; LLMProxy's middleware as headers (a dict, or
    its repr under ``requester_custom_headers``); both the span logger and token reuse read them."""
    headers = {"X-Rollout-Id": "ro-1", "x-attempt-id": "at-1", "x-sequence-id": "3"}
    for metadata in ({"headers": headers}, {"requester_custom_headers": repr(headers)}):
        assert llmproxy_rollout_headers({"metadata": metadata}) == {
            "x-rollout-id": "ro-1",
            "x-attempt-id": "at-1",
            "x-sequence-id": "3",
        }
        assert tito_scope({"metadata": metadata}) == "ro-1/at-1"
    assert tito_scope({"metadata": {TITO_SCOPE: "ro-2/at-2", "headers": headers}}) == "ro-2/at-2"
    for params in (
        None,
        {},
        {"metadata": "x"},
        {"metadata": {"headers": "{not python"}},
        {"metadata": {"headers": {"a": "b"}}},
    ):
        assert llmproxy_rollout_headers(params) == {}
        assert tito_scope(params) is None
    assert tito_scope({"metadata": {"headers": {"x-rollout-id": "ro-3"}}}) is None  # no attempt id
