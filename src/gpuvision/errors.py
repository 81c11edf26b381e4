"""Expected problems a user can fix; the CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """A problem with the user's input: the message says what is wrong and what to do."""


def require(condition: bool, message: str) -> None:
    """Raise UserError(message) unless condition holds."""
    if not condition:
        raise UserError(message)
