"""Getting a /dev/fuse connection mounted, and taken down again.

As root, the mount opens /dev/fuse itself and mounts it with mount(2) and `fd=`,
as libfuse does; anyone else asks `fusermount3` (Debian's `fuse3`), the setuid
helper, which mounts and passes the opened device back over a socket
(SCM_RIGHTS, the `_FUSE_COMMFD` convention of libfuse). Unmounting is the
reverse: umount2(MNT_DETACH) as root, `fusermount3 -u -z` otherwise, and never
when the kernel already took the mount down (the device then polls POLLERR).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import shutil
import socket
import subprocess
from dataclasses import dataclass

import trio

__all__ = ["MountSpec", "fuse_mount", "fuse_unmount", "mount_device"]

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MNT_DETACH = 2

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


@dataclass(frozen=True, slots=True)
class MountSpec:
    mountpoint: str
    fsname: str = "ninefs"
    subtype: str = "ninefs"
    read_only: bool = False
    allow_other: bool = False  # other users' processes may use the mount (only root may ask freely)
    default_permissions: bool = False  # the kernel checks modes itself before asking us


async def fuse_mount(spec: MountSpec) -> int:
    """Mount a new FUSE connection on spec.mountpoint; the opened, non-blocking /dev/fuse fd."""
    if os.geteuid() == 0:
        fd = _mount_as_root(spec)
    else:
        fd = await _mount_with_fusermount(spec)
    os.set_blocking(fd, False)
    _connections[fd] = _fuse_device_at(spec.mountpoint)
    return fd


# our fd -> the "major:minor" of the FUSE mount it serves, as /proc/self/mountinfo shows it
_connections: dict[int, str | None] = {}


def _fuse_device_at(mountpoint: str) -> str | None:
    """The device of the topmost FUSE mount on `mountpoint` (read from mountinfo: a stat
    of the mount, or realpath, would wait for the INIT nobody has answered yet)."""
    want = os.path.abspath(mountpoint).replace("\\", "\\134").replace(" ", "\\040")
    want = want.replace("\t", "\\011").replace("\n", "\\012")
    found = None
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                dash = fields.index("-")
                if fields[4] == want and fields[dash + 1].startswith("fuse"):
                    found = fields[2]
    except (OSError, ValueError):
        return None
    return found


def _common_options(spec: MountSpec) -> list[str]:
    opts = []
    if spec.default_permissions:
        opts.append("default_permissions")
    if spec.allow_other:
        opts.append("allow_other")
    return opts


def _mount_as_root(spec: MountSpec) -> int:
    fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    try:
        st = os.stat(spec.mountpoint)
        mount_device(fd, spec, rootmode=st.st_mode & 0o170000, uid=os.getuid(), gid=os.getgid())
    except BaseException:
        os.close(fd)
        raise
    return fd


def mount_device(fd: int, spec: MountSpec, *, rootmode: int, uid: int, gid: int) -> None:
    """mount(2) the opened /dev/fuse `fd` on spec.mountpoint, owned by `uid`:`gid` (root only).

    Also for a child that mounts before it becomes `uid` (mount.termmount): nothing here
    imports or allocates much, which matters between fork and exec."""
    opts = [f"fd={fd}", f"rootmode={rootmode:o}", f"user_id={uid}", f"group_id={gid}", *_common_options(spec)]
    flags = MS_NOSUID | MS_NODEV | (MS_RDONLY if spec.read_only else 0)
    source = _escape(spec.fsname).encode()
    target = os.fsencode(spec.mountpoint)
    if _libc.mount(source, target, f"fuse.{spec.subtype}".encode(), flags, ",".join(opts).encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount: {os.strerror(err)}", spec.mountpoint)


def _escape(fsname: str) -> str:
    # /proc/mounts shows the source as given; a comma would not survive fusermount's -o
    return fsname.replace(",", "_") or "ninefs"


async def _mount_with_fusermount(spec: MountSpec) -> int:
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool is None:
        raise OSError(2, "mount: fusermount3 not found (Debian: apt install fuse3)", spec.mountpoint)
    opts = [
        "nosuid",
        "nodev",
        "ro" if spec.read_only else "rw",
        f"fsname={_escape(spec.fsname)}",
        f"subtype={spec.subtype}",
        *_common_options(spec),
    ]
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours, theirs:
        env = {**os.environ, "_FUSE_COMMFD": str(theirs.fileno()), "_FUSE_COMMVERS": "2"}
        result = await trio.run_process(
            [tool, "-o", ",".join(opts), "--", spec.mountpoint],
            env=env,
            pass_fds=(theirs.fileno(),),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        theirs.close()
        if result.returncode != 0:
            words = result.stderr.decode(errors="replace").strip().splitlines()
            msg = words[-1] if words else f"fusermount3 exited with {result.returncode}"
            raise OSError(1, f"mount: {msg.removeprefix(tool + ': ')}", spec.mountpoint)
        await trio.lowlevel.wait_readable(ours)
        _, fds, _, _ = socket.recv_fds(ours, 1, 1)
    if not fds:
        raise OSError(5, "mount: fusermount3 passed no device", spec.mountpoint)
    os.set_inheritable(fds[0], False)
    return fds[0]


def kernel_gone(fd: int) -> bool:
    """The kernel ended this connection (unmounted, or aborted through /sys/fs/fuse)."""
    p = select.poll()
    p.register(fd, select.POLLIN)
    return any(ev & select.POLLERR for _, ev in p.poll(0))


def fuse_unmount(mountpoint: str, fd: int | None = None) -> None:
    """Detach our mount (lazily: busy files stay usable until closed), unless already gone.

    When the kernel ended the connection, the mount may be gone (unmounted from outside)
    or still there, dead (aborted through /sys/fs/fuse/connections: ENOTCONN): only a
    mount of our own connection's device is taken down, never one made on the same
    directory since."""
    if fd is not None:
        ours = _connections.pop(fd, None)
        if kernel_gone(fd) and (ours is None or _fuse_device_at(mountpoint) != ours):
            return
    if os.geteuid() == 0:
        if _libc.umount2(os.fsencode(mountpoint), MNT_DETACH) == 0:
            return
        err = ctypes.get_errno()
        if err in (22, 2):  # EINVAL, ENOENT: not mounted (any more)
            return
        raise OSError(err, f"umount: {os.strerror(err)}", mountpoint)
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool is not None:
        subprocess.run([tool, "-u", "-q", "-z", "--", mountpoint], capture_output=True, check=False)
