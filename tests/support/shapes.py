"""Checks of the shapes clients depend on."""

from __future__ import annotations


def assert_openai_error_body(resp) -> dict:
    """A JSON body {"error": {"message", "type", "param", "code"}} with typed fields; returns the error."""
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["type"], str) and err["type"]
    assert err["param"] is None or isinstance(err["param"], str)
    assert err["code"] is None or isinstance(err["code"], str)
    return err
