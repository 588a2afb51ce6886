"""Finding 3 and its class: grep, which a list-only token may call, never freezes the server or
outlasts its deadline, whatever the pattern, the file or the tree: catastrophic backtracking,
a 10 MiB line without a newline, a large tree, FIFOs and links out of the image in it, syntax
a linear-time engine lacks, and one tenant sending many greps at once.

The server runs with ``SANDTREE_GREP_TIMEOUT=2``. Every attack runs inside a latency probe of
bob's: bob's listings keep answering; where it matters, bob's own greps do too.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .hostile import HostileServer, LatencyProbe, Tenant, start_hostile_server

_GREP_TIMEOUT = 2.0
#: Long enough for a grep that keeps its deadline and the server's answer to it; a grep that
#: outlasts its deadline (28 s for the finding, minutes for a 10 MiB line) misses it.
_ANSWER_WITHIN = _GREP_TIMEOUT + 15.0
#: A pattern RE2's DFA cannot hold: its NFA fallback costs ~2 s per MiB, minutes for 10 MiB.
_DFA_BUSTER = "a[ab]{500}c"
_MARKER = "host-only-marker-7f3a"

#: A kept run of alice's: a 29-character line (the finding's), a 10 MiB line of random a and b
#: (random, so that no small DFA describes it) with no newline, a tree of 200 files of 64 KiB
#: of it, a FIFO, and links to the host's file and to /.
_MAKE_IMAGE = (
    "mkdir -p /work/tree && cd /work && "
    "echo aaaaaaaaaaaaaaaaaaaaaaaaaaaaa > short.txt && "
    "echo 'needle in a file' > file.txt && mkfifo fifo && "
    "head -c 10485760 /dev/urandom | tr '\\000-\\177' a | tr '\\200-\\377' b > big.txt && "
    "head -c 65536 big.txt > tree/000 && "
    "for i in $(seq 1 199); do cp tree/000 tree/$i; done && "
    "ln -s {host_file} host-file && ln -s / root-link"
)


@pytest.fixture(scope="module")
def hostile(
    tmp_path_factory: pytest.TempPathFactory, busybox_rootfs: Path
) -> Iterator[HostileServer]:
    env = {"SANDTREE_GREP_TIMEOUT": str(_GREP_TIMEOUT)}
    with start_hostile_server(tmp_path_factory.mktemp("grep"), busybox_rootfs, env=env) as srv:
        yield srv


@pytest.fixture(scope="module")
def host_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A file on the host, outside every image, holding a marker nothing may find."""
    path = tmp_path_factory.mktemp("host") / "secret.txt"
    path.write_text(f"{_MARKER}\n")
    return path


@pytest.fixture(scope="module")
def image(hostile: HostileServer, host_file: Path) -> str:
    done = hostile.alice.spawn(
        _MAKE_IMAGE.format(host_file=host_file), disposable=False, timeout=120
    )
    assert done["status"] == "SUCCESS", done
    kept: str = done["result_image_uuid"]
    return kept


def _busybox(tenant: Tenant) -> str:
    with tenant.client() as http:
        listed = http.get("/v1/images", params={"tag": "busybox:latest"}).json()["images"]
    found: str = listed[0]["uuid"]
    return found


def _grep(tenant: Tenant, image: str, **params: Any) -> httpx.Response:
    with tenant.client(timeout=_ANSWER_WITHIN) as http:
        return http.get(f"/v1/inspect/{image}/grep", params=params)


def test_catastrophic_backtracking_from_a_list_only_token_answers_at_once(
    hostile: HostileServer, image: str
) -> None:
    with LatencyProbe(hostile.bob):
        short = _grep(hostile.alice_list, image, pattern="^(.+)+X$", path="/work/short.txt")
        busybox = _grep(hostile.alice_list, _busybox(hostile.alice_list), pattern="^(.+)+X$")
    for answer in (short, busybox):  # busybox: the public image, /etc's lines of 30-40 bytes
        assert answer.status_code == 200, answer.text
        assert (answer.json()["matches"], answer.json()["truncated"]) == ([], False)


def test_a_10_mib_line_that_defeats_the_dfa_ends_at_the_deadline(
    hostile: HostileServer, image: str
) -> None:
    with LatencyProbe(hostile.bob):
        answer = _grep(hostile.alice_list, image, pattern=_DFA_BUSTER, path="/work/big.txt")
        cheap = _grep(hostile.alice_list, image, pattern="ab{64}a|c", path="/work/big.txt")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["matches"], body["truncated"]) == ([], True)
    assert body["truncated_reason"] == "deadline"
    # A pattern RE2 runs at DFA speed searches the whole line within the deadline.
    assert cheap.status_code == 200, cheap.text
    assert (cheap.json()["matches"], cheap.json()["truncated"]) == ([], False)


def test_the_deadline_holds_over_a_tree_of_many_files(hostile: HostileServer, image: str) -> None:
    with LatencyProbe(hostile.bob):
        answer = _grep(hostile.alice_list, image, pattern=_DFA_BUSTER, path="/work/tree")
    assert answer.status_code == 200, answer.text
    assert answer.json()["truncated_reason"] == "deadline"


def test_a_fifo_and_links_out_of_the_image_are_never_followed(
    hostile: HostileServer, image: str
) -> None:
    with LatencyProbe(hostile.bob):
        tree = _grep(hostile.alice_list, image, pattern=f"needle|{_MARKER}", path="/work")
        fifo = _grep(hostile.alice_list, image, pattern="x", path="/work/fifo")
        host_file = _grep(hostile.alice_list, image, pattern=_MARKER, path="/work/host-file")
        root_link = _grep(hostile.alice_list, image, pattern=_MARKER, path="/work/root-link")
    assert tree.status_code == 200, tree.text
    assert [m["path"] for m in tree.json()["matches"]] == ["/work/file.txt"]
    assert fifo.status_code == 200, fifo.text
    assert fifo.json()["matches"] == []
    # The link's absolute host path resolves inside the image, where it does not exist.
    assert host_file.status_code == 404, host_file.text
    # "/" inside the image is the image's root: the marker is on the host only.
    assert root_link.status_code == 200, root_link.text
    assert root_link.json()["matches"] == []


def test_a_backreference_gets_a_400_saying_what_the_engine_supports(
    hostile: HostileServer, image: str
) -> None:
    with LatencyProbe(hostile.bob):
        refused = _grep(hostile.alice_list, image, pattern="(a)\\1", path="/work")
        literal = _grep(
            hostile.alice_list, image, pattern="(a)\\1", path="/work", fixed_strings="true"
        )
    assert refused.status_code == 400, refused.text
    message = refused.json()["error"]
    assert "backreferences" in message
    assert "RE2" in message
    assert "fixed_strings=true" in message
    assert literal.status_code == 200, literal.text


def test_one_tenant_sending_many_greps_at_once_does_not_starve_another(
    hostile: HostileServer, image: str
) -> None:
    def attack() -> httpx.Response:
        return _grep(hostile.alice_list, image, pattern=_DFA_BUSTER, path="/work/big.txt")

    busybox = _busybox(hostile.bob)
    with LatencyProbe(hostile.bob), concurrent.futures.ThreadPoolExecutor(8) as pool:
        sent = [pool.submit(attack) for _ in range(8)]
        # Once one is refused, alice holds every place she may: bob's grep comes then.
        concurrent.futures.wait(sent, return_when=concurrent.futures.FIRST_COMPLETED)
        bob = _grep(hostile.bob, busybox, pattern="^root:", path="/etc/passwd")
        bob_done_first = not all(f.done() for f in sent)
        attacks = [f.result() for f in sent]
    assert bob_done_first, "bob's grep should have been answered while alice's still ran"
    statuses = sorted(a.status_code for a in attacks)
    assert set(statuses) == {200, 429}, statuses
    refused = next(a for a in attacks if a.status_code == 429)
    assert "retry" in refused.json()["error"]
    for answer in attacks:
        if answer.status_code == 200:
            assert answer.json()["truncated_reason"] == "deadline"
    assert bob.status_code == 200, bob.text
    assert [m["path"] for m in bob.json()["matches"]] == ["/etc/passwd"]
