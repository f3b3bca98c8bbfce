"""pyfuse3 operations over an `ImageTree`: a thin, read-only shell.

Every handler goes through one errno boundary (`_errno_boundary`): only
`pyfuse3.FUSEError` may leave a handler, because anything else escapes
`pyfuse3.main` and kills the mount with the kernel's request unanswered.
OSError keeps its errno, a bug becomes EIO plus a log line.

Caching: the image never changes while mounted, so entries, attributes and
negative lookups get long kernel timeouts and opened files keep their page
cache.  Inode numbers never change either, so ``forget`` has nothing to do.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
from typing import Any, Awaitable, Callable, TypeVar

import pyfuse3

from .index import R_COUNT, R_MODE, R_PARENT
from .tree import DIR_SIZE, ImageTree, Stat

__all__ = ["ReadOnlyOperations"]

log = logging.getLogger(__name__)

# An immutable tree can be cached "forever"; a day keeps the numbers sane.
CACHE_TIMEOUT = 86400.0
# Large st_blksize makes cp, cat and friends use big reads.
BLKSIZE = 128 * 1024

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

# With pyfuse3 patched by ci/patch_pyfuse3.py, read() gets the inode when the
# kernel sends no file handle, so open can answer ENOSYS: the kernel then stops
# sending OPEN/RELEASE and keeps page caches across opens (no_open mode).
try:
    from pyfuse3 import _pyfuse3 as _pyfuse3_py

    PATCH_LEVEL: int = getattr(_pyfuse3_py, "IMAGEFS_PATCH", 0)
except ImportError:  # pragma: no cover - layout of other pyfuse3 versions
    PATCH_LEVEL = 0
NO_OPEN = PATCH_LEVEL >= 1
# Patch level 3: readdir gets the inode too, so opendir can answer ENOSYS and the
# kernel stops sending OPENDIR/RELEASEDIR (and keeps listings): a second `find`
# over an image runs as fast as over a local disk.
NO_OPENDIR = PATCH_LEVEL >= 3


def entry_attributes(ino: int, st: Stat, timeout: float) -> pyfuse3.EntryAttributes:
    """The reply to lookup/getattr/readdirplus for inode ``ino``."""
    e = pyfuse3.EntryAttributes()
    e.generation = 0
    e.entry_timeout = timeout
    e.attr_timeout = timeout
    e.st_blksize = BLKSIZE
    set_attributes(e, ino, st)
    return e


def set_attributes(e: pyfuse3.EntryAttributes, ino: int, st: Stat) -> None:
    """Fill the per-inode fields of ``e`` (readdirplus reuses one object)."""
    e.st_ino = ino
    e.st_mode = st.mode
    e.st_nlink = st.nlink
    e.st_uid = st.uid
    e.st_gid = st.gid
    e.st_rdev = st.rdev
    e.st_size = st.size
    e.st_blocks = st.blocks
    e.st_atime_ns = st.atime_ns
    e.st_mtime_ns = st.mtime_ns
    e.st_ctime_ns = st.ctime_ns


def _errno_boundary(fn: F) -> F:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except OSError as e:
            if e.errno in (errno.EIO, None):
                log.warning("%s: %s", fn.__name__, e)
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        except Exception:
            log.exception("%s failed; answering EIO", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper  # type: ignore[return-value]


def _erofs(fn: F) -> F:
    async def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EROFS)

    refuse.__name__ = fn.__name__
    refuse.__doc__ = "The image is read-only: EROFS."
    return refuse  # type: ignore[return-value]


class ReadOnlyOperations(pyfuse3.Operations):
    """The read-only mount of one merged image tree."""

    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False
    # Read by the patched pyfuse3 (ci/patch_pyfuse3.py): listings of an image
    # never change, so the kernel may keep them.
    imagefs_cache_readdir = True
    # The mount's -o max_read, which the patched pyfuse3's INIT handler (level 8)
    # must repeat to libfuse; mount.serve sets it (0: none given).
    imagefs_max_read = 0

    def __init__(self, tree: ImageTree, timeout: float = CACHE_TIMEOUT, no_open: bool | None = None) -> None:
        super().__init__()
        self.tree = tree
        self.timeout = timeout
        self.no_open = NO_OPEN if no_open is None else no_open
        self.no_opendir = NO_OPENDIR and self.no_open
        # An image without any xattr answers ENOSYS once and the kernel stops
        # asking: `ls -l` otherwise costs two round trips per file for nothing.
        self.has_xattrs = tree.index.meta.get("inodes_with_xattrs", 1) > 0

    def _entry(self, ino: int) -> pyfuse3.EntryAttributes:
        return entry_attributes(ino, self.tree.stat(ino), self.timeout)

    def _valid(self, ino: int) -> None:
        if not self.tree.index.valid(ino):
            raise pyfuse3.FUSEError(errno.ENOENT)

    @_errno_boundary
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        self._valid(parent_inode)
        if not stat.S_ISDIR(self.tree.attr(parent_inode).mode):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        ino = self.tree.lookup(parent_inode, name)
        if not ino:
            # st_ino 0 is a negative entry the kernel caches (raising ENOENT is not cached).
            neg = pyfuse3.EntryAttributes()
            neg.st_ino = 0
            neg.entry_timeout = self.timeout
            return neg
        return self._entry(ino)

    @_errno_boundary
    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        self._valid(inode)
        return self._entry(inode)

    @_errno_boundary
    async def readlink(self, inode: int, ctx: Any) -> bytes:
        self._valid(inode)
        if not stat.S_ISLNK(self.tree.attr(inode).mode):
            raise pyfuse3.FUSEError(errno.EINVAL)
        return self.tree.readlink(inode)

    @_errno_boundary
    async def opendir(self, inode: int, ctx: Any) -> int:
        if self.no_opendir:
            raise pyfuse3.FUSEError(errno.ENOSYS)  # see NO_OPENDIR; readdir's fh is then the inode
        self._valid(inode)
        if not stat.S_ISDIR(self.tree.attr(inode).mode):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    @_errno_boundary
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        index = self.tree.index
        if not index.valid(fh):
            raise pyfuse3.FUSEError(errno.EBADF)
        r = index.record(fh)
        if not stat.S_ISDIR(r[R_MODE]):
            raise pyfuse3.FUSEError(errno.EBADF)
        # start_id is the id after the last entry the kernel accepted: 1 after ".",
        # 2 after "..", then 3 + position.  Positions are fixed in the index, so
        # resuming never skips or repeats an entry.
        if start_id >= r[R_COUNT] + 2:
            return  # the end: every listing asks once more
        tree_stat, reply = self.tree.stat, pyfuse3.readdir_reply
        # One EntryAttributes for the whole listing: readdir_reply copies it into
        # the kernel's buffer, and this loop runs for every entry of a `find`.
        e = entry_attributes(fh, tree_stat(fh), self.timeout)
        if start_id == 0:
            if not reply(token, b".", e, 1):
                return
            start_id = 1
        if start_id == 1:
            set_attributes(e, r[R_PARENT], tree_stat(r[R_PARENT]))
            if not reply(token, b"..", e, 2):
                return
            start_id = 2
        for pos, name, ino in self.tree.entries(fh, start_id - 2):
            set_attributes(e, ino, tree_stat(ino))
            if not reply(token, name, e, pos + 3):
                break

    def imagefs_readdirplus(self, fh: int, start_id: int, size: int) -> bytes | None:
        """readdir's reply made in C from the index, for pyfuse3 patch level 7 to send
        as it is: the same records without a Python call per entry (a first `find`
        spends a third of the daemon's time in them).  None: let readdir answer."""
        return self.tree.index.readdirplus(fh, start_id, size, self.timeout, BLKSIZE, DIR_SIZE)

    @_errno_boundary
    async def releasedir(self, fh: int) -> None:
        return None

    @_errno_boundary
    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        if self.no_open:
            raise pyfuse3.FUSEError(errno.ENOSYS)  # see NO_OPEN: "open always succeeds", for good
        self._valid(inode)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise pyfuse3.FUSEError(errno.EROFS)
        mode = self.tree.attr(inode).mode
        if stat.S_ISDIR(mode):
            raise pyfuse3.FUSEError(errno.EISDIR)
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    @_errno_boundary
    async def read(self, fh: int, off: int, size: int) -> bytes:
        # fh is the inode: open returns it as the handle, and in no_open mode
        # the patched pyfuse3 passes the inode itself.
        if not self.tree.index.valid(fh) or not stat.S_ISREG(self.tree.attr(fh).mode):
            raise pyfuse3.FUSEError(errno.EBADF)
        return self.tree.read(fh, off, size)

    @_errno_boundary
    async def release(self, fh: int) -> None:
        return None

    # flush is left to pyfuse3's default (ENOSYS): the kernel then stops sending
    # FLUSH on every close(), one round trip less per file read.

    @_errno_boundary
    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        if not self.has_xattrs:
            raise pyfuse3.FUSEError(errno.ENOSYS)
        self._valid(inode)
        value = self.tree.xattrs(inode).get(name)
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value

    @_errno_boundary
    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        if not self.has_xattrs:
            raise pyfuse3.FUSEError(errno.ENOSYS)
        self._valid(inode)
        return list(self.tree.xattrs(inode))

    @_errno_boundary
    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        total = sum(int(layer.get("length") or 0) for layer in self.tree.index.meta["layers"])
        s.f_blocks = (total + 4095) // 4096
        s.f_bfree = s.f_bavail = 0
        s.f_files = self.tree.index.n_inodes
        s.f_ffree = s.f_favail = 0
        s.f_namemax = 255
        return s

    async def forget(self, inode_list: Any) -> None:
        # Inode numbers are fixed for the life of the mount: nothing to release.
        return None

    # Every change is refused; the kernel already does for a "ro" mount, this
    # covers a mount made without it.
    @_erofs
    async def setattr(self, *a: Any) -> Any: ...
    @_erofs
    async def mknod(self, *a: Any) -> Any: ...
    @_erofs
    async def mkdir(self, *a: Any) -> Any: ...
    @_erofs
    async def unlink(self, *a: Any) -> Any: ...
    @_erofs
    async def rmdir(self, *a: Any) -> Any: ...
    @_erofs
    async def symlink(self, *a: Any) -> Any: ...
    @_erofs
    async def rename(self, *a: Any) -> Any: ...
    @_erofs
    async def link(self, *a: Any) -> Any: ...
    @_erofs
    async def create(self, *a: Any) -> Any: ...
    @_erofs
    async def write(self, *a: Any) -> Any: ...
    @_erofs
    async def setxattr(self, *a: Any) -> Any: ...
    @_erofs
    async def removexattr(self, *a: Any) -> Any: ...
