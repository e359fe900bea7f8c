"""The API's OpenAPI document describes every body it answers and how to authenticate."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from managed_backups.services.api.app import create_app
from managed_backups.services.runtime import open_runtime
from managed_backups.shared.settings import Settings

METHODS = {"get", "put", "post", "patch", "delete"}
UNAUTHENTICATED = {("get", "/healthz")}


@pytest.fixture
def document(tmp_path: Path) -> Iterator[dict[str, Any]]:
    runtime = open_runtime(Settings(data_dir=tmp_path / "data"))
    try:
        yield create_app(runtime, gateway=None).openapi()  # type: ignore[arg-type]
    finally:
        runtime.close()


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield method, path, operation


def test_every_operation_describes_its_success_body(document: dict[str, Any]) -> None:
    seen = 0
    for method, path, operation in operations(document):
        seen += 1
        ok = {c: r for c, r in operation["responses"].items() if str(c).startswith("2")}
        assert ok, f"{method} {path} declares no 2xx response"
        for code, response in ok.items():
            content = response.get("content")
            assert content is not None, f"{method} {path} {code}: no content declared"
            if content == {}:  # an explicit empty body
                continue
            for media_type, body in content.items():
                schema = body.get("schema")
                assert schema, f"{method} {path} {code} {media_type}: no schema"
                if media_type == "application/json":
                    assert "$ref" in schema, f"{method} {path} {code}: untyped JSON body"
    assert seen >= 19


def test_every_error_is_the_one_error_body(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    assert set(schemas["ErrorBody"]["required"]) == {"code", "message"}
    assert "HTTPValidationError" not in schemas  # validation errors are 400 ErrorBody here
    for method, path, operation in operations(document):
        errors = {c: r for c, r in operation["responses"].items() if str(c)[0] in "45"}
        assert "422" not in errors, f"{method} {path}: the API never answers 422"
        if (method, path) not in UNAUTHENTICATED:
            assert {"400", "401"} <= errors.keys(), f"{method} {path}: 400/401 undeclared"
        for code, response in errors.items():
            schema = response["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorBody"}, f"{method} {path} {code}"


def test_the_bearer_scheme_is_declared_and_required(document: dict[str, Any]) -> None:
    schemes = document["components"]["securitySchemes"]
    assert schemes == {
        "APIKey": {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key as the bearer token.",
        }
    }
    for method, path, operation in operations(document):
        expected = None if (method, path) in UNAUTHENTICATED else [{"APIKey": []}]
        assert operation.get("security") == expected, f"{method} {path}"
