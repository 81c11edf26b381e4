"""The one registry pattern: names to factories, unknown names a UserError that lists the known ones."""

from __future__ import annotations

import pytest

from gpuvision.errors import UserError
from gpuvision.registry import Registry


def test_register_get_and_list():
    things = Registry("thing")
    things.register("b")(2)
    things.register("a")(1)
    assert things.get("a") == 1 and things.names() == ["a", "b"] and "b" in things and "c" not in things
    with pytest.raises(UserError, match="unknown thing 'c'; choose one of: a, b"):
        things.get("c")
    with pytest.raises(ValueError, match="twice"):
        things.register("a")(3)
