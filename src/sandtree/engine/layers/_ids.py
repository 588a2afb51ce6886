"""The sandbox's uids and gids, and the host ids they are stored as.

A sandbox's user namespace maps its ids ``0..65535`` to the host's ``uid_shift ..
uid_shift + 65535`` and nothing else, and layers keep files with those host owners (so a run
needs no chown). An id outside that range has no meaning inside a sandbox, and shifted
without a check it would be a host id of its own: ``-100000 + 100000`` is host root, so a
setuid file "owned by -100000" is a setuid-root file for every local account on the host.

Two policies, one per source of ids:

* ids a *request* names (placed files, directory states, a run's uid, the cwd it creates)
  are refused: ``sandbox_owner`` raises ``InvalidRequestError`` naming the field and the
  allowed range, before anything is written;
* ids an *image* carries (tar headers of imports, ACLs, file capabilities) are clamped to
  ``nobody`` by ``shift_id``, as the kernel shows unmapped ids, and the layer writer drops
  their setuid/setgid bits and says so in the import's warnings.

Every host chown of image content goes through one of these two. What a sandbox writes is
owned by mapped ids by construction (its user namespace), and checked anyway when a run is
committed (``in_host_range``): an owner outside the range becomes nobody there too.
"""

from __future__ import annotations

from sandtree.errors import InvalidRequestError

__all__ = [
    "ID_RANGE",
    "MAX_ID",
    "NOBODY",
    "check_sandbox_id",
    "in_host_range",
    "in_sandbox_range",
    "sandbox_owner",
    "shift_id",
    "unshift_id",
]

#: How many ids a sandbox user namespace maps (inside ``0..ID_RANGE-1``).
ID_RANGE = 65536
MAX_ID = ID_RANGE - 1
#: What unmapped ids become, as the kernel shows them inside a user namespace.
NOBODY = 65534


def in_sandbox_range(value: int) -> bool:
    """True when ``value`` is an id the sandbox's user namespace maps (``0..65535``)."""
    return 0 <= value <= MAX_ID


def in_host_range(value: int, uid_shift: int) -> bool:
    """True when the host id ``value`` stores a sandbox id (``uid_shift .. uid_shift+65535``)."""
    return in_sandbox_range(value - uid_shift)


def check_sandbox_id(value: int, field: str) -> int:
    """Return ``value`` if it is a sandbox id; else raise ``InvalidRequestError`` naming
    ``field`` (e.g. ``files['/app/x'].uid``) and the allowed range."""
    # bool is an int; True as a uid is a client bug, not root's neighbour.
    if isinstance(value, bool) or not isinstance(value, int) or not in_sandbox_range(value):
        raise InvalidRequestError(
            f"{field} must be a whole number from 0 to {MAX_ID} (the ids a sandbox has), "
            f"not {value!r}"
        )
    return value


def sandbox_owner(uid: int, gid: int, *, uid_shift: int, field: str) -> tuple[int, int]:
    """The host ``(uid, gid)`` that stores the sandbox owner ``uid``/``gid``.

    Raises ``InvalidRequestError`` (naming ``field.uid`` or ``field.gid``) for an id the
    sandbox does not map, so nothing is ever chowned outside
    ``uid_shift .. uid_shift + 65535``.
    """
    check_sandbox_id(uid, f"{field}.uid" if field else "uid")
    check_sandbox_id(gid, f"{field}.gid" if field else "gid")
    if uid_shift < 1:
        # A zero shift would store sandbox root as host root: never a valid configuration.
        raise ValueError(f"uid_shift must be a positive host id, not {uid_shift}")
    return uid_shift + uid, uid_shift + gid


def shift_id(value: int, uid_shift: int) -> int:
    """Map an image uid/gid to the host: clamp unmapped ids to nobody, then shift."""
    return uid_shift + (value if in_sandbox_range(value) else NOBODY)


def unshift_id(value: int, uid_shift: int) -> int:
    """Map a host uid/gid back to the image; ids outside the shifted range become nobody."""
    inner = value - uid_shift
    return inner if in_sandbox_range(inner) else NOBODY
