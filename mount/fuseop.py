"""How every FUSE operation runs: under a deadline, its failures turned into an errno.

One errno table serves the whole mount (ninep.errors.errno_for); an error 9P has no
errno for becomes EIO, with the server's words logged.
"""

from __future__ import annotations

import errno
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from ninep.errors import NinePError, ProtocolError, Unreachable, errno_for

from .fuseabi import FuseError

__all__ = ["errno_of", "fuse_op"]

log = logging.getLogger("ninefs.fuse")
T = TypeVar("T")


def errno_of(exc: BaseException) -> int:
    if isinstance(exc, FuseError):
        return exc.errno
    if isinstance(exc, trio.TooSlowError):
        return errno.ETIMEDOUT
    if isinstance(exc, ProtocolError):
        return errno.EIO
    if isinstance(exc, NinePError):
        code = errno_for(exc.ename)
        if code == errno.EIO:
            log.info("9P error without an errno: %s", exc.ename)
        return code
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return errno.EIO


def fuse_op(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Run an operation under the deadline and turn every failure into a FUSEError."""

    @functools.wraps(fn)
    async def op(self: Any, *args: Any) -> T:
        try:
            # trio.fail_after, without its generator: a few us less on every operation
            with trio.CancelScope(deadline=trio.current_time() + self.options.timeout):
                return await fn(self, *args)
            raise trio.TooSlowError
        except FuseError:
            raise
        except (OSError, trio.TooSlowError) as e:
            code = errno_of(e)
            if isinstance(e, Unreachable):
                # Said once when the host went (or was found) down; not again at every call.
                log.debug("%s: %s", fn.__name__, e)
            elif code in (errno.EIO, errno.ETIMEDOUT):
                log.warning("%s: %s", fn.__name__, e or "timed out")
            raise FuseError(code) from None
        except Exception:
            log.exception("%s failed", fn.__name__)
            raise FuseError(errno.EIO) from None

    return op
