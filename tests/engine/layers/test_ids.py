"""The sandbox's ids and the host ids they are stored as: requests are refused outside
0..65535, image ids are clamped to nobody; nothing is ever shifted to a host id of its own."""

from __future__ import annotations

import pytest

from sandtree.engine.layers._ids import (
    NOBODY,
    check_sandbox_id,
    in_host_range,
    sandbox_owner,
    shift_id,
    unshift_id,
)
from sandtree.errors import InvalidRequestError

SHIFT = 100000


@pytest.mark.parametrize("value", [0, 1000, 65534, 65535])
def test_every_id_the_sandbox_maps_is_accepted(value: int) -> None:
    assert check_sandbox_id(value, "uid") == value


@pytest.mark.parametrize("value", [-1, -100000, 65536, 70000, 2**32, 2**63, True])
def test_an_id_outside_the_sandbox_is_refused_naming_the_field_and_the_range(
    value: object,
) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        check_sandbox_id(value, "files['/x'].uid")  # type: ignore[arg-type]
    assert "files['/x'].uid" in caught.value.message
    assert "0 to 65535" in caught.value.message


def test_a_sandbox_owner_is_stored_shifted() -> None:
    assert sandbox_owner(0, 0, uid_shift=SHIFT, field="f") == (SHIFT, SHIFT)
    assert sandbox_owner(1000, 65535, uid_shift=SHIFT, field="f") == (SHIFT + 1000, SHIFT + 65535)


def test_minus_the_shift_never_becomes_host_root() -> None:
    with pytest.raises(InvalidRequestError, match=r"f\.uid"):
        sandbox_owner(-SHIFT, 0, uid_shift=SHIFT, field="f")
    with pytest.raises(InvalidRequestError, match=r"f\.gid"):
        sandbox_owner(0, -SHIFT, uid_shift=SHIFT, field="f")


def test_a_zero_shift_is_refused_as_it_would_store_sandbox_root_as_host_root() -> None:
    with pytest.raises(ValueError, match="uid_shift"):
        sandbox_owner(0, 0, uid_shift=0, field="f")


@pytest.mark.parametrize("value", [-1, -SHIFT, 65536, 4_000_000, 2**32])
def test_image_ids_outside_the_sandbox_are_stored_as_nobody(value: int) -> None:
    assert shift_id(value, SHIFT) == SHIFT + NOBODY


@pytest.mark.parametrize("host", [0, SHIFT - 1, SHIFT + 65536, 2**32 - 1])
def test_host_ids_outside_the_shifted_range_read_back_as_nobody(host: int) -> None:
    assert unshift_id(host, SHIFT) == NOBODY
    assert unshift_id(SHIFT + 42, SHIFT) == 42


@pytest.mark.parametrize(
    ("host", "stores_a_sandbox_id"),
    [(0, False), (SHIFT - 1, False), (SHIFT, True), (SHIFT + 65535, True), (SHIFT + 65536, False)],
)
def test_only_the_shifted_range_of_host_ids_stores_sandbox_ids(
    host: int, stores_a_sandbox_id: bool
) -> None:
    assert in_host_range(host, SHIFT) is stores_a_sandbox_id
