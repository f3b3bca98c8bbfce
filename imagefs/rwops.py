"""pyfuse3 operations for a writable mount: an `Overlay` (image + scratch directory).

The read-only handlers' errno boundary applies here too.  What differs from
`imagefs.fuseops`:

* inode numbers: an entry the image has keeps the image's inode number, also
  after it is copied up (the copy's inode in DIR is mapped back to it); new
  entries get numbers above the image's.  Numbers are stable while mounted.
* caching: the tree changes, so entries and attributes are cached for one
  second and file pages are dropped on open (``keep_cache`` off).
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import stat
from dataclasses import dataclass
from typing import Any, Callable

import pyfuse3

from .fuseops import BLKSIZE, _errno_boundary, entry_attributes
from .index import R_MODE, R_NLINK, ROOT_INO
from .lru import SizedLRU
from .overlay import Found, Overlay, Stat, set_attrs
from .tree import DIR_SIZE

__all__ = ["OverlayOperations"]

log = logging.getLogger(__name__)

RW_TIMEOUT = 1.0
_ACL_XATTRS = (b"system.posix_acl_access", b"system.posix_acl_default")
_RENAME_NOREPLACE = getattr(pyfuse3, "RENAME_NOREPLACE", 1)
_RENAME_EXCHANGE = getattr(pyfuse3, "RENAME_EXCHANGE", 2)


@dataclass(slots=True)
class _Handle:
    ino: int
    found: Found
    fd: int  # -1: reads go to the image (until the file is copied up)


@dataclass(slots=True)
class _Dir:
    """An open directory: a snapshot of its entries, or None for a directory only the
    image has, which the index lists (in C, `imagefs_readdirplus`) as the read-only
    mount does: nothing in DIR can change what it holds but a copy-up of the directory."""

    found: Found
    entries: list[tuple[bytes, Found]] | None


# Names of image inodes by directory, for finding an inode the kernel learned from an
# index listing again (`_image_entry`): directories scanned last, this many names in all.
_NAMES_KEPT = 1 << 18


class OverlayOperations(pyfuse3.Operations):
    """The read-write mount of an image with a scratch directory."""

    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False
    # The mount's -o max_read, which the patched pyfuse3's INIT handler (level 8)
    # must repeat to libfuse; mount.serve sets it (0: none given).
    imagefs_max_read = 0

    def __init__(self, overlay: Overlay) -> None:
        super().__init__()
        self.ov = overlay
        self.paths: dict[int, Found] = {pyfuse3.ROOT_INODE: overlay.root()}
        self.names: dict[int, set[bytes]] = {}  # every path an inode was seen at (hard links)
        self.by_upper: dict[int, int] = {}  # st_ino in DIR -> our inode
        self.claimed: set[int] = set()  # image inodes that now stand for a file in DIR (or are gone)
        self.next_ino = itertools.count(overlay.lower.index.n_inodes + 1)
        self.handles: dict[int, _Handle] = {}
        self.dirs: dict[int, _Dir] = {}
        self._names: SizedLRU[int, dict[int, bytes]] = SizedLRU(_NAMES_KEPT, len)  # see _names_in
        self._linked_dirs: frozenset[int] | None = None  # found at the first listing
        self.next_fh = itertools.count(1)

    # -- inode numbers ---------------------------------------------------------

    def _remember(self, ino: int, f: Found) -> None:
        self.paths[ino] = f
        self.names.setdefault(ino, set()).add(f.path)

    def _keeps_name(self, ino: int) -> bool:
        """Whether image inode ``ino`` must be remembered by name when handed out: a
        directory, or a file with several names.  Any other image file is found again
        from the image's parent links when asked for (`_image_entry`) and answers
        getattr and xattr requests from the index, so browsing a big image through
        the overlay does not make the daemon grow with every file it shows."""
        r = self.ov.lower.index.record(ino)
        return stat.S_ISDIR(r[R_MODE]) or r[R_NLINK] > 1

    def _untouched_image_file(self, ino: int) -> bool:
        """Whether ``ino`` is an image file of one name that nothing in the overlay has
        touched: not copied up, moved or removed (each of those remembers or claims it)."""
        return (ino not in self.paths and ino not in self.names and 1 < ino <= self.ov.lower.index.n_inodes
                and ino not in self.claimed and not self._keeps_name(ino))

    def _ino(self, f: Found) -> int:
        if f.path == b"":
            return pyfuse3.ROOT_INODE
        if not f.upper:
            if self._keeps_name(f.lower):
                self._remember(f.lower, f)
            return f.lower
        st = os.lstat(self.ov.up(f.path))
        if f.lower and stat.S_ISDIR(st.st_mode):
            self._remember(f.lower, f)  # a merged directory is the image's directory
            return f.lower
        ino = self.by_upper.get(st.st_ino)
        if ino is None:
            if f.lower and (stat.S_ISDIR(st.st_mode)
                            or (f.lower not in self.claimed and not self.ov.replaces_image_file(f))):
                ino = f.lower  # a merged directory, or the copy of an image file
            else:
                ino = next(self.next_ino)
            self.by_upper[st.st_ino] = ino
            if not stat.S_ISDIR(st.st_mode) and f.lower:
                self.claimed.add(f.lower)
        self._remember(ino, f)
        return ino

    def _forgetter(self, f: Found | None) -> Callable[[], None]:
        """What to forget once ``f`` has been removed (call the result after the removal
        succeeded): its name, and DIR's inode number if that was the last link, since the
        host file system hands the number to the next new file."""
        if f is None:
            return lambda: None
        ino = self._ino(f)
        upper_ino = None
        if f.upper:
            st = os.lstat(self.ov.up(f.path))
            if st.st_nlink <= 1 or stat.S_ISDIR(st.st_mode):
                upper_ino = st.st_ino

        def forget() -> None:
            if upper_ino is not None:
                self.by_upper.pop(upper_ino, None)
            if f.lower:
                self.claimed.add(f.lower)  # never hand this image inode out again
            names = self.names.get(ino, set())
            names.discard(f.path)
            if self.paths.get(ino, f).path == f.path:
                for other in list(names):
                    alt = self.ov.resolve(other)
                    if alt is not None:
                        self.paths[ino] = alt
                        break
                    names.discard(other)
                else:
                    # No name left: the number must not stand for whatever is made at the
                    # path next (nor follow it through a rename).  An open file answers
                    # through its handle.
                    self.paths.pop(ino, None)

        return forget

    def _claim(self, ino: int, f: Found) -> Found:
        """After a copy-up: the copy in DIR is still inode ``ino``."""
        if f.upper:
            st = os.lstat(self.ov.up(f.path))
            if not (f.lower and stat.S_ISDIR(st.st_mode)):
                self.by_upper[st.st_ino] = ino
            if f.lower and not stat.S_ISDIR(st.st_mode):
                self.claimed.add(f.lower)
        self._remember(ino, f)
        return f

    def _found(self, ino: int) -> Found:
        f = self.paths.get(ino)
        if f is None:
            f = self._image_entry(ino)
            if f is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            if self._keeps_name(ino):
                self._remember(ino, f)
            return f
        return self.ov.refresh(f)

    def _image_entry(self, ino: int) -> Found | None:
        """Image inode ``ino`` at its place in the image, if the mount still shows it
        there: the kernel learns entries from index listings, which remember nothing
        (and list no hard-linked files, see `_holds_hard_links`, so the place is the
        only one).  Found from the nearest directory this knows, down: image
        directories never move, and one that was removed, replaced or covered no
        longer shows ``ino``."""
        index = self.ov.lower.index
        chain: list[tuple[int, bytes]] = []  # (inode, name) from ino up to a known directory
        cur = ino
        while cur not in self.paths:
            if not 1 < cur <= index.n_inodes or cur in self.claimed or len(chain) > 4096:
                return None
            parent = index.attr(cur).parent
            name = self._names_in(parent).get(cur)
            if name is None:
                return None
            chain.append((cur, name))
            cur = parent
        f: Found | None = self.ov.resolve(self.paths[cur].path)
        if f is None or (cur != ROOT_INO and (f.lower != cur or not self.ov.is_dir(f))):
            return None  # what this knows of that directory is out of date
        for child, name in reversed(chain):
            assert f is not None
            f = self.ov.step(f, name)
            if f is None or f.lower != child:
                return None
            if f.upper and not self.ov.is_dir(f) and not (child == ino and self._ino(f) == ino):
                # DIR's file there is another file, unless it is this one's copy (made by
                # an operation that failed after the copy-up, so nobody registered it)
                return None
            if child != ino:
                self._remember(child, f)  # a directory on the way
        return f

    def _names_in(self, parent: int) -> dict[int, bytes]:
        names = self._names.get(parent, self._image_names)
        assert names is not None
        return names

    def _image_names(self, parent: int) -> dict[int, bytes]:
        return {child: name for _pos, name, child in self.ov.lower.index.entries(parent)}

    def _entry(self, ino: int, st: Stat) -> pyfuse3.EntryAttributes:
        return entry_attributes(ino, st, RW_TIMEOUT)

    def _reply(self, f: Found) -> pyfuse3.EntryAttributes:
        return self._entry(self._ino(f), self.ov.stat(f))

    def _moved(self, old: bytes, new: bytes) -> None:
        """Keep known paths right after a rename (descendants of a moved directory too)."""
        prefix = old + b"/"
        for ino, f in list(self.paths.items()):
            if f.path == old or f.path.startswith(prefix):
                self.paths[ino] = Found(new + f.path[len(old):], f.lower, f.upper)
                names = self.names.get(ino)
                if names is not None:
                    names.discard(f.path)
                    names.add(new + f.path[len(old):])

    # -- lookups ---------------------------------------------------------------

    @_errno_boundary
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        parent = self._found(parent_inode)
        if not self.ov.is_dir(parent):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        f = self.ov.step(parent, name)
        if f is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._reply(f)

    @_errno_boundary
    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        h = self._open_copy(inode)
        if h is not None:  # an open file answers for itself, also once its last name is gone
            return self._entry(inode, self.ov.stat_fd(h.fd))
        src = self._source(inode)
        return self._entry(inode, self.ov.lower.stat(src) if isinstance(src, int) else self.ov.stat(src))

    def _open_copy(self, inode: int) -> _Handle | None:
        """A handle with a descriptor on DIR's file of ``inode``."""
        return next((h for h in self.handles.values() if h.ino == inode and h.fd >= 0), None)

    def _source(self, inode: int) -> Found | int:
        """What answers stat, readlink and xattr requests for ``inode``: its entry, or
        the image inode itself, for an image file nothing has touched (answered from
        the index, see `_keeps_name`) or one read through a handle after its name
        went (it reads on, and so answers, as kernel overlayfs shows it)."""
        if self._untouched_image_file(inode):
            return inode
        try:
            return self._found(inode)
        except pyfuse3.FUSEError:
            h = next((h for h in self.handles.values() if h.ino == inode and h.fd < 0 and h.found.lower), None)
            if h is None:
                raise
            return h.found.lower

    @_errno_boundary
    async def readlink(self, inode: int, ctx: Any) -> bytes:
        src = self._source(inode)
        return self.ov.lower.readlink(src) if isinstance(src, int) else self.ov.readlink(src)

    @_errno_boundary
    async def opendir(self, inode: int, ctx: Any) -> int:
        f = self._found(inode)
        if not self.ov.is_dir(f):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        fh = next(self.next_fh)
        from_index = f.lower and not f.upper and not self._holds_hard_links(f.lower)
        self.dirs[fh] = _Dir(f, None if from_index else self._snapshot(f))
        return fh

    def _holds_hard_links(self, d: int) -> bool:
        """Whether image directory ``d`` holds a name of a file with several.  Such a
        directory is listed in Python, which remembers every name it hands out: a
        hard-linked file must be found again by the name the kernel knows it under,
        not by the image's first name, which may be deleted or replaced since."""
        if self._linked_dirs is None:
            self._linked_dirs = self.ov.lower.index.dirs_with_hard_links()
        return d in self._linked_dirs

    def _snapshot(self, f: Found) -> list[tuple[bytes, Found]]:
        """The entries of ``f``, "." and ".." first: positions stay valid however the
        directory changes meanwhile.  Positions are the index listing's (entry i of the
        image is i + 2), so either may answer the next part of a listing."""
        parent = self.ov.resolve(f.path.rpartition(b"/")[0]) if f.path else f
        return [(b".", f), (b"..", parent or f)] + list(self.ov.listdir(f))

    def imagefs_readdirplus(self, fh: int, start_id: int, size: int) -> bytes | None:
        """A directory only the image has, listed from the index in C (pyfuse3 patch
        level 7), as the read-only mount lists it; None: readdir answers."""
        d = self.dirs.get(fh)
        if d is None or d.entries is not None:
            return None
        return self.ov.lower.index.readdirplus(d.found.lower, start_id, size, RW_TIMEOUT, BLKSIZE, DIR_SIZE)

    @_errno_boundary
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        d = self.dirs.get(fh)
        if d is None:
            return
        if d.entries is None:  # a pyfuse3 without imagefs_readdirplus
            d.entries = self._snapshot(d.found)
        entries = d.entries
        for pos in range(start_id, len(entries)):
            name, f = entries[pos]
            try:
                attrs = self._reply(f)
            except FileNotFoundError:
                continue  # removed since opendir
            if not pyfuse3.readdir_reply(token, name, attrs, pos + 1):
                break

    @_errno_boundary
    async def releasedir(self, fh: int) -> None:
        self.dirs.pop(fh, None)

    # -- files -----------------------------------------------------------------

    def _new_handle(self, ino: int, f: Found, fd: int) -> pyfuse3.FileInfo:
        fh = next(self.next_fh)
        self.handles[fh] = _Handle(ino, f, fd)
        return pyfuse3.FileInfo(fh=fh, keep_cache=False)

    @_errno_boundary
    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        f = self._found(inode)
        if self.ov.is_dir(f):
            raise pyfuse3.FUSEError(errno.EISDIR)
        writing = bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC))
        if writing or f.upper:
            fd = self.ov.open_upper(f, flags)
            if writing and not f.upper:
                f = self._claim(inode, Found(f.path, f.lower, True))
            return self._new_handle(inode, f, fd)
        return self._new_handle(inode, f, -1)

    @_errno_boundary
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: Any) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        parent = self._found(parent_inode)
        fd, f = self.ov.create(parent, name, mode, flags & ~os.O_CREAT, ctx.uid, ctx.gid)
        attrs = self._reply(f)
        return self._new_handle(attrs.st_ino, f, fd), attrs

    @_errno_boundary
    async def read(self, fh: int, off: int, size: int) -> bytes:
        h = self.handles[fh]
        if h.fd < 0:
            f = self.ov.refresh(h.found)
            if f.upper and self.by_upper.get(os.lstat(self.ov.up(f.path)).st_ino) == h.ino:
                # Copied up since this was opened (another descriptor wrote): read the copy.
                h.found, h.fd = f, self.ov.open_upper(f, os.O_RDONLY)
        if h.fd >= 0:
            return os.pread(h.fd, size, off)
        return self.ov.read_lower(h.found, off, size)

    @_errno_boundary
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        h = self.handles[fh]
        if h.fd < 0:
            raise pyfuse3.FUSEError(errno.EBADF)
        return os.pwrite(h.fd, buf, off)

    @_errno_boundary
    async def flush(self, fh: int) -> None:
        return None

    @_errno_boundary
    async def fsync(self, fh: int, datasync: bool) -> None:
        h = self.handles[fh]
        if h.fd >= 0:
            (os.fdatasync if datasync else os.fsync)(h.fd)

    @_errno_boundary
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        d = self.dirs.get(fh)
        f = self.ov.refresh(d.found) if d is not None else None
        if f is not None and f.upper:
            fd = os.open(self.ov.up(f.path), os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    @_errno_boundary
    async def release(self, fh: int) -> None:
        h = self.handles.pop(fh, None)
        if h is not None and h.fd >= 0:
            os.close(h.fd)

    # -- changes ---------------------------------------------------------------

    @_errno_boundary
    async def setattr(self, inode: int, attr: Any, fields: Any, fh: int | None, ctx: Any) -> pyfuse3.EntryAttributes:
        now = pyfuse3_now_ns()
        wanted = {
            "mode": attr.st_mode if fields.update_mode else None,
            "uid": attr.st_uid if fields.update_uid else None,
            "gid": attr.st_gid if fields.update_gid else None,
            "size": attr.st_size if fields.update_size else None,
            "atime_ns": (now if getattr(fields, "update_atime_now", False) else attr.st_atime_ns)
            if fields.update_atime else None,
            "mtime_ns": (now if getattr(fields, "update_mtime_now", False) else attr.st_mtime_ns)
            if fields.update_mtime else None,
        }
        if inode not in self.paths:  # no name left (or never looked up: then no open copy either)
            h = self.handles.get(fh) if fh is not None else None
            if h is None or h.fd < 0:  # fchmod and fchown come without the handle
                h = self._open_copy(inode)
            if h is not None and h.fd >= 0:
                set_attrs(h.fd, **wanted)  # on its descriptor
                return self._entry(inode, self.ov.stat_fd(h.fd))
        f = self._found(inode)
        if wanted["size"] is not None and fh is not None and fh in self.handles and self.handles[fh].fd >= 0:
            os.ftruncate(self.handles[fh].fd, wanted.pop("size"))
        was_upper = f.upper
        f = self.ov.setattr(f, **wanted)
        if not was_upper:
            self._claim(inode, f)
        return self._entry(inode, self.ov.stat(f))

    @_errno_boundary
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> pyfuse3.EntryAttributes:
        return self._reply(self.ov.mkdir(self._found(parent_inode), name, mode, ctx.uid, ctx.gid))

    @_errno_boundary
    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        return self._reply(self.ov.symlink(self._found(parent_inode), name, target, ctx.uid, ctx.gid))

    @_errno_boundary
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: Any) -> pyfuse3.EntryAttributes:
        return self._reply(self.ov.mknod(self._found(parent_inode), name, mode, rdev, ctx.uid, ctx.gid))

    @_errno_boundary
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        src = self._found(inode)
        was_upper = src.upper
        f = self.ov.link(src, self._found(new_parent_inode), new_name)
        if not was_upper:
            self._claim(inode, Found(src.path, src.lower, True))
        self.names.setdefault(inode, set()).add(f.path)  # another name; the inode keeps its path
        return self._entry(inode, self.ov.stat(f))

    @_errno_boundary
    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        parent = self._found(parent_inode)
        forget = self._forgetter(self.ov.step(parent, name))
        self.ov.unlink(parent, name)
        forget()

    @_errno_boundary
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        parent = self._found(parent_inode)
        forget = self._forgetter(self.ov.step(parent, name))
        self.ov.rmdir(parent, name)
        forget()

    @_errno_boundary
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes,
                     flags: int, ctx: Any) -> None:
        if flags & _RENAME_EXCHANGE:
            raise pyfuse3.FUSEError(errno.EINVAL)
        sp, dp = self._found(parent_inode_old), self._found(parent_inode_new)
        src = self.ov.step(sp, name_old)
        if src is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        ino = self._ino(src)
        dst = self.ov.step(dp, name_new)
        forget = self._forgetter(dst if dst is not None and dst.path != src.path else None)
        new = self.ov.rename(sp, name_old, dp, name_new, noreplace=bool(flags & _RENAME_NOREPLACE))
        forget()
        self.names.get(ino, set()).discard(src.path)
        self._moved(src.path, new.path)
        self._claim(ino, new)

    # -- xattrs and the rest -----------------------------------------------------

    @_errno_boundary
    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        value = self._xattrs(inode).get(name)
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value

    @_errno_boundary
    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        return list(self._xattrs(inode))

    def _xattrs(self, inode: int) -> dict[bytes, bytes]:
        src = self._source(inode)
        return self.ov.lower.xattrs(src) if isinstance(src, int) else self.ov.xattrs(src)

    @_errno_boundary
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any) -> None:
        if name in _ACL_XATTRS:
            # Setting an access ACL changes the mode, which the kernel keeps cached
            # (FUSE tells it nothing), so stat would show the old one for a second.
            # Refused, cp -a and tar fall back to chmod, as on a file system without ACLs.
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        f = self._found(inode)
        was_upper = f.upper
        f = self.ov.setxattr(f, name, value)
        if not was_upper:
            self._claim(inode, f)

    @_errno_boundary
    async def removexattr(self, inode: int, name: bytes, ctx: Any) -> None:
        f = self._found(inode)
        if name not in self.ov.xattrs(f):
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        was_upper = f.upper
        f = self.ov.removexattr(f, name)
        if not was_upper:
            self._claim(inode, f)

    @_errno_boundary
    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        v = self.ov.statfs()
        s = pyfuse3.StatvfsData()
        for field in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree",
                      "f_favail", "f_namemax"):
            setattr(s, field, getattr(v, field))
        return s

    async def forget(self, inode_list: Any) -> None:
        # Paths are kept for every inode ever handed out, so a number never changes meaning.
        return None


def pyfuse3_now_ns() -> int:
    import time

    return time.time_ns()
