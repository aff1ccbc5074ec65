"""`ninefs serve`: export a directory (or a fresh RAM tree) over 9P2000.

Listens on loopback unless told otherwise, logs connections and errors to
stderr, prints the address it bound (so `tcp!127.0.0.1!0` is usable from
scripts), and stops cleanly on SIGINT or SIGTERM: in-flight requests are
cancelled and every fid is clunked.

`--listen sd` takes the listening sockets systemd passes instead (socket
activation, sd_listen_fds(3); deploy/systemd has the units). They go through the
same accept loop, admission and handshake deadlines as sockets we open ourselves.
"""

from __future__ import annotations

import argparse
import errno
import getpass
import ipaddress
import logging
import os
import signal
import socket
import ssl
import stat
import sys
from collections.abc import AsyncIterator, Callable, MutableMapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial

import trio

from ninep import Limits, Server, Tree
from ninep.auth import Authenticator, KeyFileError
from ninep.client import single_error
from ninep.constants import MIN_MSIZE
from ninep.tls import server_context_from_files
from ninep.transport import Address, parse_address

from .local import LocalTree
from .ram import RamTree

__all__ = ["register", "serve_tree", "systemd_sockets"]

DEFAULT_LISTEN = "tcp!127.0.0.1!5640"
SD_LISTEN = "sd"  # --listen sd: the sockets systemd passes
SD_LISTEN_FDS_START = 3  # sd_listen_fds(3): the first passed socket is fd 3
log = logging.getLogger("ninefs.serve")


async def serve_tree(
    tree: Tree,
    listen: str | Sequence[socket.socket],
    *,
    limits: Limits = Limits(),
    trace: bool = False,
    auth: Authenticator | None = None,
    host_key: str | None = None,
    tls: ssl.SSLContext | None = None,
    started: Callable[[], None] | None = None,
) -> None:
    """Serve `tree` on `listen` (an address, or listening sockets such as systemd's)
    until SIGINT/SIGTERM or cancellation.

    `started` runs once every address is bound: what a server logs about itself waits
    for that, so one that cannot bind says one line, the reason, and nothing else."""
    tracer = (lambda line: print(line, file=sys.stderr, flush=True)) if trace else None
    server = Server(tree, limits=limits, trace=tracer, auth=auth, host_key=host_key)
    server.tls = tls  # certificate files given: used instead of one made from the host key
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            if isinstance(listen, str):
                addresses = await nursery.start(server.serve, listen)
            else:
                lsn = [trio.SocketListener(trio.socket.from_stdlib_socket(sock)) for sock in listen]
                addresses = await nursery.start(_serve_listeners, server, lsn)
            for a in addresses:
                print(f"ninefs: serving on {a}", flush=True)
            if started is not None:
                started()
            async for signum in signals:
                log.info("stopping on %s", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break
    await tree.close()


async def _serve_listeners(
    server: Server, lsn: list[trio.SocketListener], *, task_status: trio.TaskStatus[list[Address]]
) -> None:
    await server.serve_listeners(lsn, task_status=task_status)


def systemd_sockets(environ: MutableMapping[str, str] = os.environ) -> list[socket.socket]:
    """The listening stream sockets systemd passed this process, as sd_listen_fds(3) defines.

    LISTEN_PID must be our pid (the variables may have been inherited from a parent they
    were meant for), LISTEN_FDS counts sockets from fd 3, LISTEN_FDNAMES optionally names
    them. The variables are unset whatever they said, like sd_listen_fds(unset=1), so
    programs started through /cmd neither inherit them nor mistake our sockets for
    theirs; the fds are made close-on-exec for the same reason. ValueError: one line
    saying what is missing or wrong.
    """
    pid_text = environ.pop("LISTEN_PID", None)
    fds_text = environ.pop("LISTEN_FDS", None)
    names_text = environ.pop("LISTEN_FDNAMES", None)
    where = f"--listen {SD_LISTEN}"
    if fds_text is None:
        raise ValueError(f"{where}: no sockets from systemd (LISTEN_FDS unset)")
    if pid_text is None:
        raise ValueError(f"{where}: no sockets from systemd (LISTEN_PID unset)")
    if not pid_text.isdigit():
        raise ValueError(f"{where}: LISTEN_PID={pid_text!r} is not a process id")
    if int(pid_text) != os.getpid():
        raise ValueError(
            f"{where}: the sockets from systemd are for process {pid_text}, not this one ({os.getpid()})"
        )
    if not fds_text.isdigit():
        raise ValueError(f"{where}: LISTEN_FDS={fds_text!r} is not a number")
    count = int(fds_text)
    if count == 0:
        raise ValueError(f"{where}: no sockets from systemd (LISTEN_FDS=0)")
    names = names_text.split(":") if names_text else []
    if names and len(names) != count:
        raise ValueError(f"{where}: LISTEN_FDNAMES names {len(names)} sockets, LISTEN_FDS says {count}")
    socks: list[socket.socket] = []
    try:
        for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
            socks.append(_listening_socket(fd, where))
    except BaseException:
        for sock in socks:
            sock.detach()  # not ours to close: systemd keeps them for the next start
        raise
    for sock, name in zip(socks, names, strict=False):
        log.info("socket from systemd: fd %d %s (%s)", sock.fileno(), _bound_address(sock), name)
    return socks


def _listening_socket(fd: int, where: str) -> socket.socket:
    """fd as a socket, refused unless it is a listening stream socket of TCP or a Unix path."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        raise ValueError(f"{where}: fd {fd} is not open (LISTEN_FDS counts from fd 3)") from None
    if not stat.S_ISSOCK(mode):
        raise ValueError(f"{where}: fd {fd} is not a socket")
    os.set_inheritable(fd, False)
    sock = socket.socket(fileno=fd)
    try:
        if sock.family not in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX):
            raise ValueError(f"{where}: fd {fd} is a {sock.family.name} socket, not TCP or Unix")
        if sock.type != socket.SOCK_STREAM:
            raise ValueError(f"{where}: fd {fd} is not a stream socket (9P wants ListenStream=)")
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise ValueError(f"{where}: fd {fd} is a connection, not a listening socket (use Accept=no)")
    except BaseException:
        sock.detach()
        raise
    return sock


def _bound_address(sock: socket.socket) -> Address:
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        text = name.decode(errors="replace") if isinstance(name, bytes) else name
        return Address("unix", path=text or "-")
    return Address("tcp", host=name[0], port=name[1])


# Every limit of ninep.Limits as a `serve` option (docs/security.md says why each exists).
_LIMIT_OPTIONS = {
    "msize": "largest message in bytes",
    "connections": "connections open at once",
    "per_peer": "connections from one address",
    "handshake_timeout": "seconds a new connection has for Tversion and (auth +) attach",
    "frame_timeout": "seconds of silence allowed in the middle of a frame",
    "fids": "fids per connection",
    "outstanding": "requests in progress per connection",
    "held_bytes": "bytes of requests and unsent replies per connection before it is read no further",
    "server_held_bytes": "the same for all connections together",
    "listing_bytes": "bytes of directory listings kept per connection",
}


def _limits(args: argparse.Namespace) -> Limits:
    return Limits(**{name: getattr(args, name) for name in _LIMIT_OPTIONS})


Opener = Callable[[argparse.Namespace], AbstractAsyncContextManager[Tree]]


@asynccontextmanager
async def _just(tree: Tree) -> AsyncIterator[Tree]:
    yield tree


async def _serve_opened(
    opener: AbstractAsyncContextManager[Tree],
    listen: str | Sequence[socket.socket],
    limits: Limits,
    trace: bool,
    auth: Authenticator | None,
    host_key: str | None,
    tls: ssl.SSLContext | None = None,
    started: Callable[[], None] | None = None,
) -> None:
    # A server that cannot start has one reason (a port in use, a bad host key): raised as
    # itself, not as a group of one, so _run can say it in one line.
    with single_error():
        async with opener as tree:
            await serve_tree(
                tree, listen, limits=limits, trace=trace, auth=auth, host_key=host_key, tls=tls,
                started=started,
            )  # fmt: skip


def _run(args: argparse.Namespace, machine: Opener | None) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    listen: str | list[socket.socket] = args.listen
    try:
        if args.listen == SD_LISTEN:
            listen = systemd_sockets()
            addrs = [_bound_address(sock) for sock in listen]
        else:
            addrs = [parse_address(args.listen, listening=True)]
    except ValueError as e:
        print(f"ninefs serve: {e}", file=sys.stderr)
        return 2
    if args.dir is not None and (problem := _not_a_directory(args.dir)):
        print(f"ninefs serve: {args.dir}: {problem}", file=sys.stderr)
        return 1
    auth = None
    if args.authorized_keys:
        try:
            auth = Authenticator.from_file(args.authorized_keys)
        except KeyFileError as e:  # str() is `FILE:LINE: reason`
            print(f"ninefs serve: {e}", file=sys.stderr)
            return 2
        except OSError as e:
            print(f"ninefs serve: {args.authorized_keys}: {e.strerror or e}", file=sys.stderr)
            return 2
        except ValueError as e:
            print(f"ninefs serve: {args.authorized_keys}: {e}", file=sys.stderr)
            return 2
    # What the server says about itself waits until it is listening (serve_tree's `started`).
    notes: list[tuple[int, str]] = []
    if auth is not None:
        notes.append(
            (
                logging.INFO,
                f"authentication required: {len(auth.authorized)} keys from {args.authorized_keys}",
            )
        )
    else:
        # Until connections are authenticated, running programs is for this machine only:
        # decided by where the address resolves to, not by how it is spelt.
        running = args.allow_exec or args.allow_control
        for addr in addrs:  # with systemd's sockets, every one of them
            try:
                local = _only_loopback(addr)
            except OSError as e:
                refusing = "refusing --allow-exec/--allow-control on " if running else ""
                print(
                    f"ninefs serve: {refusing}{addr}: cannot resolve {addr.host}: {e.strerror or e}",
                    file=sys.stderr,
                )
                return 2
            if not local:
                if running:
                    print(
                        f"ninefs serve: refusing --allow-exec/--allow-control on {addr}: "
                        "without --authorized-keys only loopback addresses may have them",
                        file=sys.stderr,
                    )
                    return 2
                notes.append(
                    (
                        logging.WARNING,
                        f"listening on {addr} without --authorized-keys: anyone who can reach it can use it",
                    )
                )
        if running:
            notes.append(
                (
                    logging.WARNING,
                    "--allow-exec/--allow-control without --authorized-keys: every user of this machine "
                    f"can run commands as {getpass.getuser()}",
                )
            )
    if (args.allow_exec or args.allow_control) and not args.machine:
        print("ninefs serve: --allow-exec and --allow-control go with --machine", file=sys.stderr)
        return 2
    tls = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key and all(a.network == "tls" for a in addrs)):
            print("ninefs serve: --tls-cert and --tls-key go together, with a tls! address", file=sys.stderr)
            return 2
        try:
            tls = _tls_from_files(args.tls_cert, args.tls_key)
        except OSError as e:
            print(f"ninefs serve: {e.filename}: {e.strerror or e}", file=sys.stderr)
            return 1
    try:
        if args.machine:
            if machine is None:
                raise OSError("this ninefs was built without --machine support")
            opener = machine(args)
            what = f"this machine (/fs = {args.dir or '~'}{', /cmd' if args.allow_exec else ''})"
        else:
            exported = (
                LocalTree(args.dir, read_only=args.ro, check_users=auth is not None) if args.dir else None
            )
            opener = _just(exported or RamTree(read_only=args.ro))
            what = args.dir or "a RAM tree"
    except OSError as e:
        print(f"ninefs serve: {e}", file=sys.stderr)
        return 1
    notes.append((logging.INFO, f"exporting {what}{' read-only' if args.ro else ''}"))

    def started() -> None:
        for level, line in notes:
            log.log(level, "%s", line)

    try:
        trio.run(_serve_opened, opener, listen, _limits(args), args.trace, auth, args.host_key, tls, started)
    except OSError as e:
        # A file (a host key, the exported directory) when one is to blame, else the address.
        where = e.filename if e.filename else args.listen
        print(f"ninefs serve: {where}: {_why(e)}", file=sys.stderr)
        return 1
    except Exception as e:  # anything else that stops it starting: still one line
        print(f"ninefs serve: {args.listen}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


def _not_a_directory(path: str) -> str | None:
    """Why `path` cannot be exported, in ls's words, before anything is started."""
    try:
        st = os.stat(path)
    except OSError as e:
        return "no such directory" if e.errno == errno.ENOENT else (e.strerror or str(e))
    return None if stat.S_ISDIR(st.st_mode) else "not a directory"


def _tls_from_files(cert: str, key: str) -> ssl.SSLContext:
    """server_context_from_files, with errors that name the file to blame (OSError.filename)."""
    for path in (cert, key):
        with open(path, "rb"):  # a missing or unreadable one: an OSError naming it
            pass
    try:
        return server_context_from_files(cert, key)
    except ssl.SSLError:
        raise OSError(
            errno.EINVAL, "not a PEM certificate and its private key (--tls-cert, --tls-key)", cert
        ) from None
    except ValueError as e:  # cryptography: the certificate itself does not parse
        raise OSError(errno.EINVAL, f"not a PEM certificate ({e})", cert) from None


def _why(e: OSError) -> str:
    """An OSError in a few words: trio's "all attempts to bind ... failed" keeps the errno
    in its cause (one for every address tried: "address already in use")."""
    if e.strerror:
        return e.strerror
    leaves = e.__cause__.exceptions if isinstance(e.__cause__, BaseExceptionGroup) else ()
    codes = {x.errno for x in leaves if isinstance(x, OSError) and x.errno}
    if len(codes) == 1:
        return os.strerror(codes.pop())
    return str(e) or type(e).__name__


def _only_loopback(addr: Address) -> bool:
    """Whether every address `addr` resolves to is loopback (socket.gaierror: it does not resolve).

    Decided on the addresses, not the spelling: `127.attacker.example` is a name, and
    may resolve anywhere.
    """
    if addr.network in ("unix", "fd"):
        return True
    if addr.host in ("", "*"):
        return False
    infos = socket.getaddrinfo(addr.host, addr.port, type=socket.SOCK_STREAM)
    return bool(infos) and all(_is_loopback_ip(str(info[4][0])) for info in infos)


def _is_loopback_ip(text: str) -> bool:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback  # ::ffff:127.0.0.1
    return ip.is_loopback


def _above(kind: Callable[[str], float], least: float, text: str) -> float:
    """A limit's type: a number of at least `least` (a limit of 0 or less would refuse
    everything, and an msize below MIN_MSIZE cannot hold a stat entry)."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= least:  # NaN too
        raise argparse.ArgumentTypeError(f"{text}: want {least:g} or more")
    return value


def register(sub: argparse._SubParsersAction, *, machine: Opener | None = None) -> None:
    """Add `serve`; `machine` opens the --machine tree (composed above this package)."""
    p = sub.add_parser("serve", help="export a directory, a RAM tree or a whole machine over 9P2000")
    p.add_argument(
        "dir", nargs="?", help="directory to export (default: a fresh RAM tree; with --machine: ~)"
    )
    p.add_argument(
        "--listen",
        "-l",
        default=DEFAULT_LISTEN,
        help=f"where to listen (default {DEFAULT_LISTEN}); sd: the sockets systemd passes",
    )
    p.add_argument("--ro", action="store_true", help="refuse every change to the exported files")
    p.add_argument("--machine", action="store_true", help="export the machine: /fs, /proc, /dev (and /cmd)")
    p.add_argument("--allow-exec", action="store_true", help="with --machine: add /cmd, running programs")
    p.add_argument("--allow-control", action="store_true", help="with --machine: signals through /proc/N/ctl")
    p.add_argument(
        "--authorized-keys", default=None, metavar="PATH", help="require a key listed here (ninefs key gen)"
    )
    p.add_argument(
        "--host-key", default=None, metavar="PATH", help="key for tls! addresses (default: made on first use)"
    )
    p.add_argument("--tls-cert", default=None, metavar="PEM", help="for tls!: a certificate file instead")
    p.add_argument("--tls-key", default=None, metavar="PEM", help="the private key of --tls-cert")
    p.add_argument("--trace", action="store_true", help="print every 9P message in and out")
    for name, what in _LIMIT_OPTIONS.items():
        default = getattr(Limits(), name)
        kind = float if isinstance(default, float) else int
        p.add_argument(
            "--" + name.replace("_", "-"),
            type=partial(_above, kind, MIN_MSIZE if name == "msize" else 1),
            default=default,
            metavar="N",
            help=f"{what} (default {default})",
        )
    p.add_argument("--verbose", "-v", action="store_true", help="debug log on stderr")
    p.set_defaults(run=lambda args: _run(args, machine))
