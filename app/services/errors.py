"""The one exception a service raises to refuse a request; routes turn it into JSON."""

from __future__ import annotations


class ServiceError(Exception):
    """A refusal with an HTTP status, a snake_case code and a sentence for a person."""

    def __init__(self, status: int, code: str, message: str, extra: dict | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra or {}

    def to_dict(self) -> dict:
        return {"error": self.code, "message": self.message, **self.extra}


def transaction_not_found() -> ServiceError:
    """The 404 of every lookup of a transaction by id."""
    return ServiceError(404, "transaction_not_found", "No transaction has that id.")
