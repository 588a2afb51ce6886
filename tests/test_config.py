"""Settings refuse values that would weaken isolation, naming the setting and its range."""

from __future__ import annotations

import pytest

from sandtree.config import Settings
from sandtree.errors import InvalidRequestError


@pytest.mark.parametrize("shift", [0, 1, 1000, 65535, 2**32 - 65536, 2**32])
def test_a_uid_shift_whose_ids_would_cover_host_accounts_or_pass_32_bits_is_refused(
    shift: int,
) -> None:
    # 0 makes sandbox root host root; 1000 makes it the host's first user; 2**32 - 65536
    # would map sandbox uid 65535 to the invalid id 2**32 - 1.
    with pytest.raises(InvalidRequestError, match="uid_shift must be from 65536 to 4294901759"):
        Settings(uid_shift=shift)


@pytest.mark.parametrize("shift", [65536, 100000, 2**32 - 2 - 65535])
def test_a_uid_shift_clear_of_host_accounts_is_accepted(shift: int) -> None:
    assert Settings(uid_shift=shift).uid_shift == shift


def test_a_uid_shift_from_the_environment_is_checked_too() -> None:
    with pytest.raises(InvalidRequestError, match="uid_shift"):
        Settings.from_env({"SANDTREE_UID_SHIFT": "0"})
