"""Keys for a fleet: `.pub` lines in authorized-keys files, `ninefs key authorize`,
`ninefs ping`, and key files whose errors name them (issues #19, #18).

Every server here is a real `ninefs serve --authorized-keys` subprocess on loopback;
every client a real `ninefs` command.
"""

from __future__ import annotations

import os
import pwd
import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .servers import ninefs_command, server_process

pytestmark = pytest.mark.slow

CHECKOUT = Path(__file__).resolve().parent.parent
ME = pwd.getpwuid(os.geteuid()).pw_name


def ninefs(*args: str, cwd: Path | None = None, stdin: str = "", **env: str) -> subprocess.CompletedProcess:
    """Run one `ninefs` command to the end (a hang is a failure, not a stuck test)."""
    return subprocess.run(
        ninefs_command(*args),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd or CHECKOUT,
        env={**os.environ, "PYTHONPATH": str(CHECKOUT), **env},
    )


def one_line(r: subprocess.CompletedProcess) -> str:
    """What a failing command said: exactly one line, never a traceback."""
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    """alice's and bob's key pairs, made by `ninefs key gen` as a person would (user@host comments)."""
    for name in ("alice", "bob"):
        r = ninefs("key", "gen", "--out", str(tmp_path / name), "--comment", f"{name}@vm")
        assert r.returncode == 0, r.stderr
    return tmp_path


def pub_line(keys: Path, name: str) -> str:
    return (keys / f"{name}.pub").read_text().strip()


def write_as(address: str, user: str, key: Path, path: str, data: str) -> subprocess.CompletedProcess:
    return ninefs("write", "-u", user, "-k", str(key), address, path, stdin=data)


@pytest.fixture
def closed_port() -> Iterator[str]:
    """A loopback port bound but not listening: a connection to it is refused, and nobody
    else can take it while the test runs."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"tcp!127.0.0.1!{s.getsockname()[1]}"


def test_a_pub_line_with_user_in_front_authorizes_that_user(keys: Path) -> None:
    authorized = keys / "authorized_keys"
    authorized.write_text(
        f"# alice's laptop, pasted whole\nuser=alice {pub_line(keys, 'alice')}\n"
        f"ninefs-ed25519 {pub_line(keys, 'bob').split()[1]} bob\n"
    )
    with server_process("--authorized-keys", str(authorized)) as (address, _):
        r = write_as(address, "alice", keys / "alice", "/hello", "from alice")
        assert r.returncode == 0, r.stderr
        r = ninefs("cat", "-u", "alice", "-k", str(keys / "alice"), address, "/hello")
        assert (r.returncode, r.stdout) == (0, "from alice")
        assert write_as(address, "bob", keys / "bob", "/bob", "x").returncode == 0  # the old form still works
        r = write_as(address, "bob", keys / "alice", "/stolen", "x")
        assert r.returncode == 1 and "alice's, not bob's" in one_line(r)


def test_a_pasted_pub_line_without_its_user_stops_the_server_naming_file_and_line(keys: Path) -> None:
    authorized = keys / "authorized_keys"
    authorized.write_text(f"# fleet\nuser=bob {pub_line(keys, 'bob')}\n{pub_line(keys, 'alice')}\n")
    r = ninefs("serve", "--authorized-keys", str(authorized), "--listen", "tcp!127.0.0.1!0")
    assert r.returncode == 2 and r.stdout == ""
    line = one_line(r)
    assert f"{authorized}:3:" in line and "'alice@vm'" in line
    assert "user=USER" in line and "ninefs key authorize" in line  # says how to fix it


@pytest.mark.parametrize(
    "content, says",
    [
        (b"user=alice\n", "must follow user=USER"),
        (b"from=10.0.0.0/8 KEY alice@vm\n", "unknown option 'from=10.0.0.0/8'"),
        (b"KEY\n", "no user for this key"),
        (b"ninefs-ed25519 bm90IGEga2V5 alice\n", "32 bytes"),
        (b"user=alice KEY alice@vm\nuser=bob KEY alice@vm\n", "already alice's at line 1"),
        (b"\xff\xfe garbage\n", "not UTF-8"),
    ],
    ids=["no-key", "unknown-option", "no-user", "short-key", "two-users", "binary"],
)
def test_every_broken_authorized_keys_file_is_one_line_naming_it(
    keys: Path, content: bytes, says: str
) -> None:
    authorized = keys / "authorized_keys"
    key = " ".join(pub_line(keys, "alice").split()[:2]).encode()
    authorized.write_bytes(content.replace(b"KEY", key))
    r = ninefs("serve", "--authorized-keys", str(authorized), "--listen", "tcp!127.0.0.1!0")
    assert r.returncode == 2
    line = one_line(r)
    assert re.search(rf"{re.escape(str(authorized))}:\d+: ", line) and says in line, line


def test_a_missing_authorized_keys_file_stops_the_server_naming_it(tmp_path: Path) -> None:
    r = ninefs("serve", "--authorized-keys", str(tmp_path / "nowhere"), "--listen", "tcp!127.0.0.1!0")
    assert (
        r.returncode == 2
        and one_line(r) == f"ninefs serve: {tmp_path / 'nowhere'}: No such file or directory"
    )


def test_key_authorize_appends_a_line_a_server_then_accepts_and_refuses_duplicates(keys: Path) -> None:
    authorized = keys / "conf" / "ninefs" / "authorized_keys"  # neither directory exists yet
    r = ninefs("key", "authorize", str(keys / "alice.pub"), "--user", "alice", "--file", str(authorized))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{authorized}:1: user=alice {pub_line(keys, 'alice')}"
    assert authorized.stat().st_mode & 0o777 == 0o600
    r = ninefs(
        "key", "authorize", "-", "--user", "bob", "--file", str(authorized), stdin=pub_line(keys, "bob")
    )
    assert r.returncode == 0, r.stderr
    before = authorized.read_text()

    r = ninefs("key", "authorize", str(keys / "alice.pub"), "--user", "mallory", "--file", str(authorized))
    assert r.returncode == 1 and authorized.read_text() == before
    assert f"{authorized}:1: this key is already listed for alice" in one_line(r)

    with server_process("--authorized-keys", str(authorized)) as (address, _):
        assert write_as(address, "alice", keys / "alice", "/a", "x").returncode == 0
        assert write_as(address, "bob", keys / "bob", "/b", "x").returncode == 0

    r = ninefs(
        "key", "authorize", str(keys / "alice.pub"), "--user", "carol", "--file", str(authorized), "--replace"
    )
    assert r.returncode == 0, r.stderr
    assert authorized.read_text().count(pub_line(keys, "alice").split()[1]) == 1
    with server_process("--authorized-keys", str(authorized)) as (address, _):
        assert write_as(address, "carol", keys / "alice", "/c", "x").returncode == 0
        r = write_as(address, "alice", keys / "alice", "/a", "x")
        assert r.returncode == 1 and "carol's, not alice's" in one_line(r)


def test_key_authorize_checks_the_pub_line_before_touching_the_file(keys: Path) -> None:
    authorized = keys / "authorized_keys"
    authorized.write_text(f"user=bob {pub_line(keys, 'bob')}\n")
    before = authorized.read_text()
    for pub, says in [
        (keys / "alice", "a private key: give its .pub"),
        (keys / "nowhere.pub", "No such file or directory"),
    ]:
        r = ninefs("key", "authorize", str(pub), "--user", "alice", "--file", str(authorized))
        assert r.returncode == 1 and one_line(r).startswith(f"ninefs key authorize: {pub}: {says}")
    r = ninefs(
        "key", "authorize", "-", "--user", "alice", "--file", str(authorized), stdin="ssh-ed25519 AAAA x@y\n"
    )
    assert r.returncode == 1 and "(stdin): not a .pub line" in one_line(r)
    r = ninefs("key", "authorize", str(keys / "alice.pub"), "--user", "al ice", "--file", str(authorized))
    assert r.returncode == 2 and "bad user name 'al ice'" in one_line(r)
    assert authorized.read_text() == before


def test_key_authorize_refuses_to_add_to_a_file_a_server_would_refuse(keys: Path) -> None:
    authorized = keys / "authorized_keys"
    authorized.write_text(f"{pub_line(keys, 'bob')}\n")  # pasted by hand, no user
    r = ninefs("key", "authorize", str(keys / "alice.pub"), "--user", "alice", "--file", str(authorized))
    assert r.returncode == 1 and f"{authorized}:1: 'bob@vm' is a .pub comment" in one_line(r)
    assert authorized.read_text() == f"{pub_line(keys, 'bob')}\n"


def test_key_show_prints_the_pub_line_of_a_private_key(keys: Path) -> None:
    r = ninefs("key", "show", str(keys / "alice"))
    assert (r.returncode, r.stdout.strip()) == (0, pub_line(keys, "alice"))
    r = ninefs("key", "show", NINEFS_KEY=str(keys / "bob"))
    assert (r.returncode, r.stdout.strip()) == (0, pub_line(keys, "bob"))


def test_ping_answers_for_a_server_that_requires_keys_without_one(keys: Path, tmp_path: Path) -> None:
    authorized = keys / "authorized_keys"
    authorized.write_text(f"user=alice {pub_line(keys, 'alice')}\n")
    with server_process("--authorized-keys", str(authorized)) as (address, _):
        r = ninefs("ping", address, "--count", "2", "--interval", "0", HOME=str(tmp_path), NINEFS_KEY="")
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert len(lines) == 2
        for line in lines:
            assert re.fullmatch(rf"{re.escape(address)}: 9P2000, msize \d+, \d+\.\d ms", line), line


def test_ping_of_a_closed_port_is_one_line_and_exit_1(closed_port: str) -> None:
    r = ninefs("ping", closed_port, "--timeout", "5")
    assert r.returncode == 1 and r.stdout == ""
    assert one_line(r) == f"ninefs ping: {closed_port}: connection refused"


def test_ping_of_a_bad_address_says_so(closed_port: str) -> None:
    r = ninefs("ping", "tcp!127.0.0.1!notaport")
    assert r.returncode == 2 and "bad port 'notaport'" in one_line(r)


def _rsa_key(path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(pem)


@pytest.mark.parametrize(
    "kind, says",
    [
        ("garbage", "not a PEM private key"),
        ("missing", "No such file or directory"),
        ("directory", "Is a directory"),
        ("pub", "a public key: give the private key"),
        ("rsa", "not an Ed25519 private key (an RSA key)"),
    ],
)
def test_a_bad_key_file_is_named_in_the_error_of_ls(keys: Path, kind: str, says: str) -> None:
    bad = keys / f"bad-{kind}"
    if kind == "garbage":
        bad.write_bytes(os.urandom(300))
    elif kind == "directory":
        bad.mkdir()
    elif kind == "pub":
        bad.write_text(pub_line(keys, "alice") + "\n")
    elif kind == "rsa":
        _rsa_key(bad)
    authorized = keys / "authorized_keys"
    authorized.write_text(f"user=alice {pub_line(keys, 'alice')}\n")
    with server_process("--authorized-keys", str(authorized)) as (address, _):
        r = ninefs("ls", "-u", "alice", "--key", str(bad), address)
        assert r.returncode == 1 and one_line(r).startswith(f"ninefs ls: {bad}: {says}")
        r = ninefs("ls", "-u", "alice", address, NINEFS_KEY=str(bad))  # the same file, named by $NINEFS_KEY
        if kind != "missing":  # $NINEFS_KEY naming no file means no key
            assert r.returncode == 1 and f"ninefs ls: {bad} ($NINEFS_KEY): {says}" in one_line(r)


def test_a_relative_key_path_is_the_one_in_the_current_directory(keys: Path) -> None:
    authorized = keys / "authorized_keys"
    authorized.write_text(f"user=alice {pub_line(keys, 'alice')}\n")
    with server_process("--authorized-keys", str(authorized)) as (address, _):
        r = ninefs("write", "-u", "alice", "--key", "alice", address, "/rel", cwd=keys, stdin="x")
        assert r.returncode == 0, r.stderr
        r = ninefs("ls", "-u", "alice", "--key", "nowhere", address, cwd=keys)
        assert (
            r.returncode == 1 and one_line(r) == f"ninefs ls: {keys / 'nowhere'}: No such file or directory"
        )


def test_who_i_am_comes_from_the_password_database_not_user(keys: Path) -> None:
    """With $USER and $LOGNAME naming someone else, the default uname and the .pub comment
    are still the effective uid's own name."""
    r = ninefs("key", "gen", "--out", str(keys / "mine"), USER="mallory", LOGNAME="mallory")
    assert r.returncode == 0, r.stderr
    assert pub_line(keys, "mine").split()[2].startswith(f"{ME}@")
    authorized = keys / "authorized_keys"
    authorized.write_text(f"user={ME} {pub_line(keys, 'mine')}\n")
    with server_process("--authorized-keys", str(authorized)) as (address, _):
        r = ninefs(
            "write",
            "--key",
            str(keys / "mine"),
            address,
            "/who",
            stdin="me",
            USER="mallory",
            LOGNAME="mallory",
        )
        assert r.returncode == 0, r.stderr
