"""The HTTP edges on their own (issue 22): URLs, key files, length headers, the budget of bodies in memory."""

from __future__ import annotations

import asyncio
import logging

import pytest

from gpuvision.serve import read_key, server_url
from gpuvision.serve.transport import Busy, ByteBudget, declared_length


def test_an_ipv6_url_has_brackets():
    assert server_url("::1", 8000, False) == "http://[::1]:8000"
    assert server_url("127.0.0.1", 443, True) == "https://127.0.0.1:443"


def test_a_key_file_other_users_can_read_is_warned_about(tmp_path, caplog):
    key = tmp_path / "key"
    key.write_text("k" * 20 + "\n")
    key.chmod(0o600)
    with caplog.at_level(logging.WARNING, logger="gpuvision.serve"):
        assert read_key(str(key)) == "k" * 20
        assert not caplog.records
        key.chmod(0o644)
        read_key(str(key))
    assert "readable by other users" in caplog.text and "chmod 600" in caplog.text


@pytest.mark.parametrize("value, length", [(b"12", 12), ("0", 0), ("\u00b2", None), ("1" * 16, None), ("-1", None),
                                           (" 5", None), (None, None), (b"\xb2", None)])
def test_a_length_header_is_ascii_digits_only(value, length):
    assert declared_length(value) == length


def test_the_budget_of_bodies_waits_for_room_then_says_busy():
    async def scenario():
        budget = ByteBudget(100)
        first = await budget.acquire(80, wait=1)
        waiting = asyncio.create_task(budget.acquire(50, wait=5))
        await asyncio.sleep(0.1)
        assert not waiting.done()  # no room yet
        await budget.release(first)
        second = await asyncio.wait_for(waiting, 5)
        with pytest.raises(Busy, match="retry"):
            await budget.acquire(60, wait=0.1)  # 50 + 60 > 100, and nothing is released meanwhile
        await budget.release(second)
        assert await budget.acquire(10 ** 9, wait=1) == 100  # a body larger than the budget waits for all of it
    asyncio.run(asyncio.wait_for(scenario(), 30))
