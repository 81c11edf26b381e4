"""Expected problems a user can fix: the CLI prints them as one line and exits with code 2; serving answers
with the kind's HTTP status and a JSON body."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input: the message says what is wrong and what to do."""

    http_status = 400


class NotFound(UserError):
    """A path, model, version or class that does not exist."""

    http_status = 404


class BadInput(UserError):
    """A value that is malformed or out of range (a flag, a config file, an image, a tensor)."""

    http_status = 400


class IntegrityError(UserError):
    """A file that fails verification: altered, missing, outside its directory, unsigned, undecryptable."""

    http_status = 409


class Unsupported(UserError):
    """Something well-formed that gpuvision does not handle (a format, a method for this model)."""

    http_status = 415


def require(condition: bool, message: str, kind: type[UserError] = UserError) -> None:
    """Raise kind(message) unless condition holds."""
    if not condition:
        raise kind(message)
