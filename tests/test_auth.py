"""Authentication over Tauth with Ed25519 keys (ninep/auth.py)."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest
import trio

import ninep
import ninep.sync
from fileserver.ram import RamTree
from ninep.auth import Authenticator, client_response, generate_key, load_private_key
from ninep.errors import NinePError

from .servers import ninefs_command, raw_connection


@pytest.fixture
def keys(tmp_path):
    """Two key pairs: glenda's (authorized) and mallory's (not)."""
    generate_key(str(tmp_path / "glenda"), "glenda@test")
    generate_key(str(tmp_path / "mallory"), "mallory@test")
    pub = (tmp_path / "glenda.pub").read_text().split()
    (tmp_path / "authorized").write_text(f"# who may attach\n{pub[0]} {pub[1]} glenda\n")
    return tmp_path


@pytest.fixture
async def guarded(keys):
    """A RAM tree that requires glenda's key."""
    server = ninep.Server(RamTree(), auth=Authenticator.from_file(str(keys / "authorized")))
    async with trio.open_nursery() as nursery:
        addrs = await nursery.start(server.serve, "tcp!127.0.0.1!0")
        yield str(addrs[0])
        nursery.cancel_scope.cancel()


def test_private_key_is_written_mode_0600(keys):
    assert os.stat(keys / "glenda").st_mode & 0o777 == 0o600
    assert (keys / "glenda.pub").read_text().startswith("ninefs-ed25519 ")


async def test_attach_without_authentication_is_refused(guarded):
    async with raw_connection(guarded) as c:
        with pytest.raises(NinePError, match="authentication required"):
            await c.attach(0, "glenda")


async def test_the_right_key_is_accepted_and_mapped_to_its_user(guarded, keys):
    async with ninep.connect(guarded, uname="glenda", key=str(keys / "glenda")) as fs:
        await fs.write_bytes("mine", b"x")
        assert (await fs.stat("mine")).uid == "glenda"


async def test_a_key_that_is_not_authorized_is_refused(guarded, keys):
    with pytest.raises(PermissionError, match="key not authorized"):
        async with ninep.connect(guarded, uname="glenda", key=str(keys / "mallory")):
            pass


async def test_a_key_cannot_attach_as_another_user(guarded, keys):
    with pytest.raises(PermissionError, match="key is glenda's, not root's"):
        async with ninep.connect(guarded, uname="root", key=str(keys / "glenda")):
            pass


async def test_a_signature_is_good_for_one_session_only(guarded, keys):
    key = load_private_key(str(keys / "glenda"))
    async with raw_connection(guarded) as c:
        await c.auth(1, "glenda", "")
        answer = client_response(key, await c.read(1, 0, 256), "glenda", "")
        await c.write(1, 0, answer)
        assert (await c.read(1, 0, 256)).startswith(b"ok glenda")
        await c.auth(2, "glenda", "")
        await c.read(2, 0, 256)  # a fresh challenge
        with pytest.raises(PermissionError, match="authentication failed"):
            await c.write(2, 0, answer)  # replaying the old answer
        with pytest.raises(NinePError, match="not authenticated"):
            await c.attach(3, "glenda", "", 2)
        await c.attach(3, "glenda", "", 1)


async def test_an_afid_is_no_file(guarded):
    async with raw_connection(guarded) as c:
        await c.auth(1, "glenda", "")
        with pytest.raises(NinePError, match="authentication fid"):
            await c.walk(1, 2, [])
        assert (await c.stat(1)).qid.type & ninep.QTAUTH


def test_the_command_line_with_keys(keys):
    proc = subprocess.Popen(
        ninefs_command("serve", "--authorized-keys", str(keys / "authorized"), "--listen", "tcp!127.0.0.1!0"),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        address = proc.stdout.readline().split()[-1]
        env = dict(os.environ, NINEFS_KEY="/nonexistent")
        r = subprocess.run(
            ninefs_command("ls", "-u", "glenda", address, "/"), capture_output=True, text=True, env=env
        )
        assert r.returncode == 1 and "authentication required: no key" in r.stderr
        r = subprocess.run(
            ninefs_command("write", "-u", "glenda", "-k", str(keys / "glenda"), address, "/hello"),
            input="hi",
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0, r.stderr
        r = subprocess.run(
            ninefs_command("cat", "-u", "glenda", "-k", str(keys / "mallory"), address, "/hello"),
            capture_output=True,
            text=True,
        )
        assert r.returncode == 1 and "key not authorized" in r.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


def test_exec_on_a_public_address_needs_authorized_keys(keys):
    r = subprocess.run(
        ninefs_command("serve", "--machine", "--allow-exec", "--listen", "tcp!0.0.0.0!0"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2 and "--authorized-keys" in r.stderr


# --- TLS with a pinned server key --------------------------------------------------------------


async def test_tls_carries_9p_and_pins_the_server_key(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("NINEFS_KNOWN_HOSTS", str(tmp_path / "known_hosts"))
    server = ninep.Server(RamTree(), host_key=str(tmp_path / "host1"))
    async with trio.open_nursery() as nursery:
        (address,) = await nursery.start(server.serve, "tls!127.0.0.1!0")
        async with ninep.connect(str(address)) as fs:
            await fs.write_bytes("secret", b"over TLS")
        assert "new server" in capfd.readouterr().err  # trust on first use, said out loud
        async with ninep.connect(str(address)) as fs:
            assert await fs.read_bytes("secret") == b"over TLS"
        assert "new server" not in capfd.readouterr().err
        nursery.cancel_scope.cancel()
    assert (tmp_path / "known_hosts").read_text().count("ninefs-ed25519") == 1


async def test_a_changed_server_key_is_refused(tmp_path, monkeypatch):
    from ninep.tls import HostKeyChanged

    monkeypatch.setenv("NINEFS_KNOWN_HOSTS", str(tmp_path / "known_hosts"))
    first = ninep.Server(RamTree(), host_key=str(tmp_path / "host1"))
    async with trio.open_nursery() as nursery:
        (address,) = await nursery.start(first.serve, "tls!127.0.0.1!0")
        async with ninep.connect(str(address)):
            pass
        nursery.cancel_scope.cancel()
    impostor = ninep.Server(RamTree(), host_key=str(tmp_path / "host2"))
    async with trio.open_nursery() as nursery:
        await nursery.start(impostor.serve, str(address))  # same host and port, another key
        with pytest.raises(HostKeyChanged, match="changed!"):
            async with ninep.connect(str(address)):
                pass
        nursery.cancel_scope.cancel()


async def test_plain_9p_to_a_tls_port_fails_cleanly(tmp_path):
    server = ninep.Server(RamTree(), host_key=str(tmp_path / "host1"))
    async with trio.open_nursery() as nursery:
        (address,) = await nursery.start(server.serve, "tls!127.0.0.1!0")
        with pytest.raises(OSError):
            async with ninep.connect(f"tcp!127.0.0.1!{address.port}"):
                pass
        nursery.cancel_scope.cancel()


async def test_an_authenticated_user_gets_the_hosts_permission_checks(keys, tmp_path):
    from fileserver.local import LocalTree

    pub = (keys / "glenda.pub").read_text().split()
    (keys / "as-nobody").write_text(f"{pub[0]} {pub[1]} nobody\n")
    export = tmp_path / "export"
    export.mkdir()
    (export / "roots.txt").write_text("root's file, 0644\n")
    os.chmod(export / "roots.txt", 0o644)
    (export / "open").mkdir()
    os.chmod(export / "open", 0o777)
    tree = LocalTree(str(export), check_users=True)
    server = ninep.Server(tree, auth=Authenticator.from_file(str(keys / "as-nobody")))
    async with trio.open_nursery() as nursery:
        (address,) = await nursery.start(server.serve, "tcp!127.0.0.1!0")
        async with ninep.connect(str(address), uname="nobody", key=str(keys / "glenda")) as fs:
            assert await fs.read_text("roots.txt") == "root's file, 0644\n"  # other may read
            with pytest.raises(PermissionError, match="nobody may not write"):
                await fs.write_bytes("roots.txt", b"vandalism")
            with pytest.raises(PermissionError):
                await fs.remove("roots.txt")  # the export's root is 0755, root's
            with pytest.raises(PermissionError, match="does not own"):
                await fs.chmod("roots.txt", 0o666)
            await fs.write_bytes("open/mine.txt", b"nobody may write here")  # a 0777 directory
        nursery.cancel_scope.cancel()
    assert (export / "roots.txt").read_text() == "root's file, 0644\n"


def test_tls_with_a_certificate_given_as_files(tmp_path, monkeypatch):
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "files")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256())
    )  # fmt: skip
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    monkeypatch.setenv("NINEFS_KNOWN_HOSTS", str(tmp_path / "known_hosts"))
    proc = subprocess.Popen(
        ninefs_command("serve", "--listen", "tls!127.0.0.1!0", "--tls-cert", str(tmp_path / "cert.pem"),
                       "--tls-key", str(tmp_path / "key.pem")),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        address = proc.stdout.readline().split()[-1]
        with ninep.sync.connect(address) as fs:
            fs.write_bytes("x", b"over a given certificate")
            assert fs.read_bytes("x") == b"over a given certificate"
        assert "ninefs-spki" in (tmp_path / "known_hosts").read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


async def test_authentication_over_tls_is_bound_to_the_servers_certificate(keys, tmp_path, monkeypatch):
    monkeypatch.setenv("NINEFS_KNOWN_HOSTS", str(tmp_path / "known_hosts"))
    server = ninep.Server(
        RamTree(), auth=Authenticator.from_file(str(keys / "authorized")), host_key=str(tmp_path / "host")
    )
    async with trio.open_nursery() as nursery:
        (address,) = await nursery.start(server.serve, "tls!127.0.0.1!0")
        async with ninep.connect(str(address), uname="glenda", key=str(keys / "glenda")) as fs:
            await fs.write_bytes("f", b"authenticated and encrypted")
        nursery.cancel_scope.cancel()


def test_an_answer_signed_for_another_server_certificate_is_refused(keys):
    # A man in the middle relays the challenge; the client signs with *his* certificate's
    # binding; the real server, whose certificate differs, must refuse it.
    auth = Authenticator.from_file(str(keys / "authorized"))
    session = auth.start("glenda", "", binding=b"real server's certificate hash")
    challenge = session.read(256)
    key = load_private_key(str(keys / "glenda"))
    relayed = client_response(key, challenge, "glenda", "", binding=b"the middleman's certificate hash")
    with pytest.raises(NinePError, match="authentication failed"):
        auth.write(session, relayed)


def test_a_machine_export_checks_each_authenticated_user_too(keys, tmp_path):
    pub = (keys / "glenda.pub").read_text().split()
    (keys / "as-nobody").write_text(f"{pub[0]} {pub[1]} nobody\n")
    home = tmp_path / "home"
    home.mkdir()
    (home / "roots.txt").write_text("root's\n")
    os.chmod(home / "roots.txt", 0o644)
    proc = subprocess.Popen(
        ninefs_command("serve", "--machine", str(home), "--authorized-keys", str(keys / "as-nobody"),
                       "--listen", "tcp!127.0.0.1!0"),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        address = proc.stdout.readline().split()[-1]
        with ninep.sync.connect(address, uname="nobody", key=str(keys / "glenda")) as fs:
            assert fs.read_bytes("/fs/roots.txt") == b"root's\n"
            with pytest.raises(PermissionError, match="nobody may not write"):
                fs.write_bytes("/fs/roots.txt", b"vandalism")
            assert fs.read_bytes("/dev/ncpu").strip().isdigit()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
    assert (home / "roots.txt").read_text() == "root's\n"
