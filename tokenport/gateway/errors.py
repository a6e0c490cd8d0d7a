"""Errors the lifecycle raises; the API layer renders them in the client's protocol shape."""

from __future__ import annotations


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        other_zone: str | None = None,
    ) -> None:
        super().__init__(message)
        self.other_zone = other_zone  # a zone refusal: the zone the request reached for (audited)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}


def bad_request(message: str, param: str | None = None, code: str | None = "invalid_request") -> ApiError:
    return ApiError(400, message, "invalid_request_error", code, param)


def unauthorized(message: str) -> ApiError:
    return ApiError(401, message, "authentication_error", "invalid_api_key")


def forbidden(message: str, code: str, other_zone: str | None = None) -> ApiError:
    return ApiError(403, message, "permission_error", code, other_zone=other_zone)


def model_not_found(model: str) -> ApiError:
    return ApiError(
        404, f"The model '{model}' does not exist", "invalid_request_error", "model_not_found", "model"
    )


def unavailable(message: str) -> ApiError:
    return ApiError(503, message, "service_unavailable", "no_healthy_backend", headers={"retry-after": "1"})
