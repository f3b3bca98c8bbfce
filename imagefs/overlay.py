"""A scratch directory over an image: the writable layer of ``mount --overlay DIR``.

DIR is kept as a plain OCI layer changeset, so ``tar -C DIR -cf layer.tar .``
is a valid layer and a remount with the same DIR shows the same tree, with no
database beside it:

* a changed or new path is a real file, directory, link or node at its path;
* ``.wh.NAME`` (an empty file) hides NAME of the image;
* ``.wh..wh..opq`` in a directory hides everything the image has below it
  (a directory that replaced an image directory or an image non-directory).

Two things beside the changeset, both out of it: ``.wh..wh..imagefs-base``
at DIR's top records the image and layers DIR was made over (`BASE_FILE`),
and a copy made by a user who is not root keeps the image's owner in its
``user.imagefs.owner`` xattr (`OWNER_XATTR`), since it cannot be chowned.
``imagefs commit`` turns DIR into a layer with both applied.

Lookups walk the merged view one component at a time (`step`), consulting
DIR first; names starting with ``.wh.`` are never visible and cannot be
created.  Changes are ordered so that a crash at any point leaves DIR showing
the old state or the new one: a whiteout is written before the upper entry it
replaces is removed, copies are made under a hidden temporary name, synced
and renamed into place.

All methods take image paths (``bytes``, no leading slash, ``b""`` the root)
and raise OSError with the errno a POSIX file system would give.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import json
import logging
import os
import stat
from dataclasses import dataclass
from typing import Iterator

from .errors import MountError
from .index import ROOT_INO
from .paths import OPAQUE, WHITEOUT_PREFIX
from .tree import ImageTree, Stat

__all__ = ["BASE_FILE", "OWNER_XATTR", "Found", "Overlay", "Stat", "base_mismatch", "check_overlay_dir", "hold",
           "in_use", "read_base", "recorded_owner", "set_attrs"]

log = logging.getLogger(__name__)

# The image's owner of a copy in DIR that could not be given it: a user who is
# not root copies root's files up as their own (chown fails) and keeps the
# owner here, for the mount to show and commit to write.
OWNER_XATTR = "user.imagefs.owner"


def recorded_owner(target: bytes | int) -> tuple[int, int] | None:
    """The owner `OWNER_XATTR` keeps for a path or open descriptor in DIR, if any."""
    try:
        if isinstance(target, int):
            raw = os.getxattr(target, OWNER_XATTR)
        else:
            raw = os.getxattr(target, OWNER_XATTR, follow_symlinks=False)
        uid_s, gid_s = raw.split(b":")
        uid, gid = int(uid_s), int(gid_s)
    except (OSError, ValueError):
        return None
    # Anyone who can write DIR can set the xattr: an owner no file can have is none.
    return (uid, gid) if 0 <= uid <= 0xFFFFFFFF and 0 <= gid <= 0xFFFFFFFF else None


def stat_of(st: os.stat_result, owner: tuple[int, int] | None) -> Stat:
    """The Stat of a file in DIR, with the owner it was recorded to have."""
    uid, gid = owner if owner is not None else (st.st_uid, st.st_gid)
    return Stat(st.st_mode, uid, gid, st.st_nlink, st.st_size, st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns,
                st.st_rdev, st.st_blocks)

# Temporary names for copies being made: hidden by the ".wh..wh." rule (aufs
# metadata is dropped by every image reader) should a crash leave one behind.
TMP_PREFIX = b".wh..wh..imagefs-tmp."
# What DIR's changes were made over (image id, layers used): they mean the same
# only over the same tree, so a mount with another --layer or image is refused
# and `imagefs commit` stacks them on those layers.  Hidden the same way, and
# left out of a committed layer.
BASE_FILE = b".wh..wh..imagefs-base"
_CHUNK = 1 << 20
# The daemon's buffers are not aligned for O_DIRECT; the kernel already keeps
# the mount's own pages out of it, so DIR's file is opened without it.
_O_DIRECT = getattr(os, "O_DIRECT", 0)
_counter = itertools.count()


@dataclass(frozen=True, slots=True)
class Found:
    """A visible entry: its path, the image inode under it (0: none), whether DIR has it."""

    path: bytes
    lower: int
    upper: bool


def read_base(upper_dir: str) -> dict[str, object] | None:
    """What the changes in ``upper_dir`` were made over (see `BASE_FILE`), or None
    if that is not recorded (a DIR from before imagefs kept it, or a new one).

    Raises:
        MountError: the record is there but unreadable.
    """
    path = os.path.join(upper_dir, os.fsdecode(BASE_FILE))
    try:
        with open(path) as f:
            base = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as e:
        raise MountError(f"{path} is unreadable ({type(e).__name__}); remove it if DIR's changes fit this image"
                         ) from None
    if not isinstance(base, dict):
        raise MountError(f"{path} is not what imagefs writes; remove it if DIR's changes fit this image")
    return base


def base_mismatch(made: dict[str, object], image_id: str, layers_total: int, layers: int | None = None) -> str | None:
    """Why changes recorded (`read_base`) as made over ``made`` do not fit image
    ``image_id`` of ``layers_total`` layers, seen as of layer ``layers`` (None: as
    of the layers the record names, as commit stacks them); None if they fit."""
    if made.get("image") != image_id:
        return f"holds changes to image {made.get('image')}, not to {image_id} (choose it with --image)"
    n = made.get("layers")
    if type(n) is not int or not 1 <= n <= layers_total or made.get("layers_total") != layers_total:
        return (f"has a record of the layers it was made over ({n!r} of {made.get('layers_total')!r}) that does "
                "not fit the image")
    if layers is not None and n != layers:
        how = "without --layer" if n == layers_total else f"with --layer {n}"
        return f"holds changes made over layer {n} of {layers_total}: mount it {how}"
    return None


def set_attrs(target: bytes | int, mode: int | None = None, uid: int | None = None, gid: int | None = None,
              size: int | None = None, atime_ns: int | None = None, mtime_ns: int | None = None) -> None:
    """chmod, chown, truncate and utime a file in DIR: a path (a symlink is not
    followed) or an open descriptor (a file whose last name is gone).  None keeps a field."""
    nofollow = {} if isinstance(target, int) else {"follow_symlinks": False}

    def lstat() -> os.stat_result:
        return os.fstat(target) if isinstance(target, int) else os.lstat(target)

    if mode is not None and not stat.S_ISLNK(lstat().st_mode):
        os.chmod(target, stat.S_IMODE(mode))
    if uid is not None or gid is not None:
        os.chown(target, -1 if uid is None else uid, -1 if gid is None else gid, **nofollow)
    if size is not None:
        os.truncate(target, size)
    if atime_ns is not None or mtime_ns is not None:
        st = lstat()
        os.utime(target, ns=(st.st_atime_ns if atime_ns is None else atime_ns,
                             st.st_mtime_ns if mtime_ns is None else mtime_ns), **nofollow)


@contextlib.contextmanager
def _times_kept(directory: bytes) -> Iterator[None]:
    """The block changes ``directory``'s entries, not the directory as the mount shows
    it (a copy-up): its times are put back once the block has succeeded."""
    st = os.lstat(directory)
    yield
    os.utime(directory, ns=(st.st_atime_ns, st.st_mtime_ns))


def _remove_tree(path: bytes, ignore_errors: bool = False) -> None:
    """Remove ``path`` and all below it.  Not shutil.rmtree, which in Python 3.11
    recurses once per level: a tree in DIR may be 2,000 directories deep (PATH_MAX)."""
    stack = [(path, False)]
    while stack:
        p, emptied = stack.pop()
        try:
            if emptied:
                os.rmdir(p)
                continue
            if not stat.S_ISDIR(os.lstat(p).st_mode):
                os.unlink(p)
                continue
            stack.append((p, True))
            with os.scandir(p) as it:
                for e in it:
                    if e.is_dir(follow_symlinks=False):
                        stack.append((e.path, False))
                    else:
                        os.unlink(e.path)
        except OSError:
            if not ignore_errors:
                raise


def _whiteout_fits(name: bytes) -> bool:
    return len(WHITEOUT_PREFIX) + len(name) <= 255


def _join(parent: bytes, name: bytes) -> bytes:
    return parent + b"/" + name if parent else name


def _split(path: bytes) -> tuple[bytes, bytes]:
    head, _, tail = path.rpartition(b"/")
    return head, tail


def check_overlay_dir(path: str, mountpoint: str, shared: bool = False) -> str:
    """Create DIR if needed (mode 0700) and refuse one that cannot hold an overlay (MountError).

    DIR holds real setuid files and device nodes (copied up from the image) on
    a file system that is neither nosuid nor nodev, so other users must not be
    able to reach it; with ``shared`` (``-o allow_other``: others write
    through the mount) a DIR they can enter is refused.
    """
    # Resolved, so that no symlink hides DIR inside the mountpoint or the reverse.
    d = os.path.realpath(path)
    mp = os.path.realpath(mountpoint)
    if d == mp or d.startswith(mp + os.sep):
        raise MountError(f"overlay directory {d} is inside the mountpoint {mp}")
    if mp.startswith(d + os.sep):
        raise MountError(f"the mountpoint {mp} is inside the overlay directory {d}")
    try:
        if not os.path.exists(d):
            os.makedirs(os.path.dirname(d), exist_ok=True)
            os.mkdir(d, 0o700)
    except OSError as e:
        raise MountError(f"cannot create overlay directory {d}: {e.strerror}") from None
    if not os.path.isdir(d):
        raise MountError(f"overlay directory {d} is not a directory")
    if os.path.ismount(d):
        raise MountError(f"overlay directory {d} is a mount point of its own; use a directory inside it")
    if in_use(d):
        raise MountError(f"overlay directory {d} is in use by another mount")
    if read_base(d) is None and any(not n.startswith(os.fsdecode(TMP_PREFIX)) for n in os.listdir(d)):
        # An upper directory is taken as it is (kernel overlayfs does the same), but
        # this one was not made by an imagefs mount: its files become the mount's.
        log.warning("overlay directory %s already holds files, and no record of an imagefs mount: "
                    "they show in the mount as changes to this image", d)
    if not os.access(d, os.W_OK | os.X_OK):
        raise MountError(f"overlay directory {d} is not writable")
    st = os.stat(d)
    if shared and (st.st_mode & 0o077 or st.st_uid != os.geteuid()):
        raise MountError(
            f"overlay directory {d} is open to other users (mode {stat.S_IMODE(st.st_mode):04o}); with "
            f"allow_other they could plant setuid files or devices there: chmod 700 {d}")
    return d


def hold(upper_dir: str) -> int:
    """Take DIR for one mount: an exclusive lock on it, held by the returned
    descriptor (the daemon keeps it open until it exits).  Two mounts writing
    one DIR would each keep their own idea of it.

    Raises:
        MountError: another mount has it.
    """
    fd = os.open(upper_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise MountError(f"overlay directory {upper_dir} is in use by another mount") from None
    return fd


def in_use(upper_dir: str) -> bool:
    """Whether a mount holds DIR (see `hold`)."""
    try:
        os.close(hold(upper_dir))
    except MountError:
        return True
    except OSError:
        return False  # no such directory: nobody holds it
    return False


class Overlay:
    """The merged view of ``lower`` (the image) under the changes kept in ``upper_dir``."""

    def __init__(self, lower: ImageTree, upper_dir: str) -> None:
        self.lower = lower
        self.rootless = os.geteuid() != 0  # copies may then keep their owner in OWNER_XATTR
        self.top = os.fsencode(os.path.abspath(upper_dir))
        self._clean_temporaries()
        self._claim_base()

    def _claim_base(self) -> None:
        """Record what DIR is over, or refuse a tree other than the one it was made over."""
        meta = self.lower.index.meta
        base = {"image": meta["image"]["id"], "layers": len(meta["layers"]),
                "layers_total": meta["image"]["layers_total"]}
        made = read_base(os.fsdecode(self.top))
        why = base_mismatch(made, base["image"], base["layers_total"], base["layers"]) if made is not None else None
        if why is not None and set(os.listdir(self.top)) != {BASE_FILE}:
            raise MountError(f"{os.fsdecode(self.top)} {why}")
        if made != base:  # new, moved to another tree while empty, or a record with more than imagefs writes
            tmp = self._tmp_name(b"")
            with open(tmp, "w") as f:
                json.dump(base, f)
            os.rename(tmp, self.up(BASE_FILE))

    # -- paths in DIR ----------------------------------------------------------

    def up(self, path: bytes) -> bytes:
        return _join(self.top, path) if path else self.top

    def _lstat_up(self, path: bytes) -> os.stat_result | None:
        try:
            return os.lstat(self.up(path))
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            return None

    def _clean_temporaries(self) -> None:
        stack = [self.top]
        while stack:
            with os.scandir(stack.pop()) as it:
                for e in it:
                    if e.name.startswith(TMP_PREFIX):
                        _remove_tree(e.path, ignore_errors=True)
                    elif e.is_dir(follow_symlinks=False):
                        stack.append(e.path)

    # -- lookups ---------------------------------------------------------------

    def root(self) -> Found:
        return Found(b"", ROOT_INO, True)

    def step(self, parent: Found, name: bytes) -> Found | None:
        """The visible entry ``name`` in directory ``parent``, or None."""
        if name.startswith(WHITEOUT_PREFIX) or name in (b"", b".", b".."):
            return None
        path = _join(parent.path, name)
        up = self._lstat_up(path) if parent.upper else None
        lower = 0
        if parent.lower and not (parent.upper and self._hides_lower(parent.path, name)):
            lower = self.lower.lookup(parent.lower, name)
        if up is None and not lower:
            return None
        if up is not None and lower:
            up_dir = stat.S_ISDIR(up.st_mode)
            lower_dir = stat.S_ISDIR(self.lower.attr(lower).mode)
            if up_dir and lower_dir:
                # A merged directory, unless it was made anew where the image's was deleted
                # (opaque): that one shows nothing of the image, nor is it its inode.
                if os.path.lexists(self.up(path) + b"/" + OPAQUE):
                    lower = 0
            elif up_dir or lower_dir:
                lower = 0  # a directory over a file, or the reverse, replaces it
            # else a file over an image file: kept for the inode number of a copy (see
            # rwops and replaces_image_file).
        return Found(path, lower, up is not None)

    def replaces_image_file(self, f: Found) -> bool:
        """Whether DIR's file ``f``, over image file ``f.lower``, is a new file rather
        than that file's copy.  A copy-up gives every visible name of a hard-linked
        image file the copy, so a name that still shows the image file means ``f``
        replaced its own (the image is scanned for the names: once per link group)."""
        if self.lower.attr(f.lower).nlink <= 1:
            return False
        for path in self._names_of(f.lower):
            if path != f.path:
                other = self.resolve(path)
                if other is not None and not other.upper and other.lower == f.lower:
                    return True
        return False

    def _hides_lower(self, parent: bytes, name: bytes) -> bool:
        d = self.up(parent)
        if os.path.lexists(d + b"/" + OPAQUE):
            return True
        return _whiteout_fits(name) and os.path.lexists(d + b"/" + WHITEOUT_PREFIX + name)

    def resolve(self, path: bytes) -> Found | None:
        found: Found | None = self.root()
        for name in path.split(b"/") if path else ():
            assert found is not None
            if not self.is_dir(found):
                return None
            found = self.step(found, name)
            if found is None:
                return None
        return found

    def refresh(self, f: Found) -> Found:
        """``f`` with its ``upper`` flag as DIR has it now (it changes on copy-up)."""
        upper = f.path == b"" or os.path.lexists(self.up(f.path))
        return f if upper == f.upper else Found(f.path, f.lower, upper)

    def is_dir(self, f: Found) -> bool:
        return stat.S_ISDIR(self.stat(f).mode)

    def stat(self, f: Found) -> Stat:
        if f.path == b"":
            # DIR itself is private (0700, see check_overlay_dir); the mount's root
            # shows the image's root, with DIR's times so changes below it show.
            st = os.lstat(self.top)
            return self.lower.stat(ROOT_INO)._replace(
                nlink=st.st_nlink, mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns)
        if f.upper:
            p = self.up(f.path)
            return stat_of(os.lstat(p), recorded_owner(p) if self.rootless else None)
        return self.lower.stat(f.lower)

    def stat_fd(self, fd: int) -> Stat:
        """The Stat of an open file in DIR (also once its last name is gone)."""
        return stat_of(os.fstat(fd), recorded_owner(fd) if self.rootless else None)

    def listdir(self, d: Found) -> Iterator[tuple[bytes, Found]]:
        """The visible entries of directory ``d`` (merged, whiteouts applied)."""
        seen: set[bytes] = set()
        hidden: set[bytes] = set()
        opaque = False
        if d.upper:
            with os.scandir(self.up(d.path)) as it:
                names = [e.name for e in it]
            for name in names:
                if name.startswith(WHITEOUT_PREFIX):
                    if name == OPAQUE:
                        opaque = True
                    else:
                        hidden.add(name[len(WHITEOUT_PREFIX):])
                    continue
                seen.add(name)
            for name in sorted(seen):
                found = self.step(d, name)
                if found is not None:
                    yield name, found
        if d.lower and not opaque:
            for _pos, name, ino in self.lower.entries(d.lower):
                if name not in seen and name not in hidden and not name.startswith(WHITEOUT_PREFIX):
                    yield name, Found(_join(d.path, name), ino, False)

    def readlink(self, f: Found) -> bytes:
        return os.readlink(self.up(f.path)) if f.upper else self.lower.readlink(f.lower)

    def xattrs(self, f: Found) -> dict[bytes, bytes]:
        if not f.upper:
            return self.lower.xattrs(f.lower)
        p = self.up(f.path)
        out = {}
        for name in os.listxattr(p, follow_symlinks=False):
            if name != OWNER_XATTR:
                out[os.fsencode(name)] = os.getxattr(p, name, follow_symlinks=False)
        return out

    def read_lower(self, f: Found, offset: int, size: int) -> bytes:
        return self.lower.read(f.lower, offset, size)

    # -- copy-up ---------------------------------------------------------------

    def _tmp_name(self, parent: bytes) -> bytes:
        return self.up(parent) + b"/" + TMP_PREFIX + b"%d.%d" % (os.getpid(), next(_counter))

    def copy_up(self, f: Found) -> Found:
        """Make DIR hold ``f`` (with its parents), keeping attributes, xattrs and content."""
        if f.upper or os.path.lexists(self.up(f.path)):
            return Found(f.path, f.lower, True)
        parent_path, name = _split(f.path)
        parent = self.resolve(parent_path)
        assert parent is not None
        self.copy_up(parent)
        tmp = self._tmp_name(parent_path)
        # A copy-up is not a change of the parent: keep its times (taken before the
        # temporary name appears in it), as overlayfs does.
        with _times_kept(self.up(parent_path)):
            try:
                self._copy_of(f.lower, tmp)
                os.rename(tmp, self.up(f.path))
            except BaseException:
                if os.path.isdir(tmp) and not os.path.islink(tmp):
                    _remove_tree(tmp, ignore_errors=True)
                elif os.path.lexists(tmp):
                    os.unlink(tmp)
                raise
        a = self.lower.attr(f.lower)
        if not stat.S_ISDIR(a.mode) and a.nlink > 1:  # symlinks, FIFOs and devices can be linked too
            self._copy_up_hardlinks(f)
        return Found(f.path, f.lower, True)

    def _copy_of(self, ino: int, tmp: bytes) -> None:
        """Make image inode ``ino`` at ``tmp``: content (synced), mode, owner, times, xattrs."""
        a = self.lower.attr(ino)
        mode = a.mode
        if stat.S_ISDIR(mode):
            os.mkdir(tmp, 0o700)
        elif stat.S_ISREG(mode):
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                off = 0
                while off < a.size:
                    chunk = self.lower.read(ino, off, _CHUNK)
                    if not chunk:
                        break
                    os.pwrite(fd, chunk, off)
                    off += len(chunk)
                os.ftruncate(fd, a.size)
                os.fsync(fd)
            finally:
                os.close(fd)
        elif stat.S_ISLNK(mode):
            os.symlink(self.lower.readlink(ino), tmp)
        else:
            os.mknod(tmp, mode, a.rdev)
        self._set_attrs(tmp, mode, a.uid, a.gid, a.mtime_ns, self.lower.xattrs(ino))

    def _copy_up_hardlinks(self, f: Found) -> None:
        """Give every visible name of a hard-linked image file the copied file, so the
        names stay one inode (the image is scanned once for them: rare and O(n))."""
        for path in self._names_of(f.lower):
            if path == f.path:
                continue
            other = self.resolve(path)
            if other is None or other.upper or other.lower != f.lower:
                continue
            parent_path, _ = _split(path)
            parent = self.resolve(parent_path)
            assert parent is not None
            self.copy_up(parent)
            with _times_kept(self.up(parent_path)):  # not a change of the directory, as for any copy-up
                os.link(self.up(f.path), self.up(path), follow_symlinks=False)

    def _names_of(self, ino: int) -> Iterator[bytes]:
        stack = [(ROOT_INO, b"")]
        while stack:
            d, prefix = stack.pop()
            for _pos, name, child in self.lower.entries(d):
                path = _join(prefix, name)
                if child == ino:
                    yield path
                elif stat.S_ISDIR(self.lower.attr(child).mode):
                    stack.append((child, path))

    def _set_attrs(self, path: bytes, mode: int, uid: int, gid: int, mtime_ns: int,
                   xattrs: dict[bytes, bytes]) -> None:
        try:
            os.chown(path, uid, gid, follow_symlinks=False)
        except PermissionError:
            if not self.rootless:
                raise
            # Not root: the copy stays the user's, and remembers whose it is.  (A
            # symlink takes no user xattr: that copy-up fails as before, EPERM.)
            os.setxattr(path, OWNER_XATTR, b"%d:%d" % (uid, gid), follow_symlinks=False)
        if not stat.S_ISLNK(mode):
            os.chmod(path, stat.S_IMODE(mode))
        for k, v in xattrs.items():
            try:
                os.setxattr(path, k, v, follow_symlinks=False)
            except OSError:
                pass  # e.g. security.* the host refuses; the content still matters more
        os.utime(path, ns=(mtime_ns, mtime_ns), follow_symlinks=False)

    # -- changes ---------------------------------------------------------------

    def _parent_for_new(self, parent: Found, name: bytes) -> Found:
        self._check_new(parent, name)
        return self.copy_up(parent)

    def _check_new(self, parent: Found, name: bytes) -> None:
        """Refuse to create ``name`` in ``parent`` for any reason, before anything is copied up."""
        if name.startswith(WHITEOUT_PREFIX):
            raise OSError(errno.EPERM, "names starting with .wh. are reserved for whiteouts")
        if len(name) > 255:
            raise OSError(errno.ENAMETOOLONG, "name too long")
        if not self.is_dir(parent):
            raise OSError(errno.ENOTDIR, "not a directory")
        if self.step(parent, name) is not None:
            raise OSError(errno.EEXIST, "exists")

    def _drop_whiteout(self, parent: Found, name: bytes) -> bool:
        """Remove ``.wh.NAME``; True if there was one (an image entry was deleted there)."""
        if not _whiteout_fits(name):
            return False
        try:
            os.unlink(self.up(parent.path) + b"/" + WHITEOUT_PREFIX + name)
            return True
        except FileNotFoundError:
            return False

    def _lower_had(self, parent: Found, name: bytes) -> bool:
        return bool(parent.lower) and bool(self.lower.lookup(parent.lower, name))

    def _whiteout(self, parent: Found, name: bytes) -> None:
        if not _whiteout_fits(name):
            raise OSError(errno.ENAMETOOLONG, "an image entry with a name this long cannot be deleted "
                          "(its whiteout .wh.NAME would exceed 255 bytes)")
        fd = os.open(self.up(parent.path) + b"/" + WHITEOUT_PREFIX + name, os.O_WRONLY | os.O_CREAT, 0)
        os.close(fd)

    def _new_group(self, parent: Found, gid: int) -> tuple[int, bool]:
        """The group of a new entry in ``parent`` (made by group ``gid``), and whether a
        new directory there is set-group-ID: a set-group-ID directory passes on its
        group, and to directories the bit, as every Linux file system does (the owner
        is set here, so the host file system's own rule is overridden)."""
        st = self.stat(parent)
        return (st.gid, True) if st.mode & stat.S_ISGID else (gid, False)

    def _chown_new(self, target: bytes | int, uid: int, group: int, gid: int) -> None:
        """Give a new entry (a path, not followed, or a descriptor) its owner ``uid``
        and ``group`` (`_new_group`).  Not root, a set-group-ID directory's group may
        be one the user is not in, which the host refuses: then the maker's ``gid``."""
        nofollow = {} if isinstance(target, int) else {"follow_symlinks": False}
        try:
            os.chown(target, uid, group, **nofollow)
        except PermissionError:
            if not self.rootless or group == gid:
                raise
            os.chown(target, uid, gid, **nofollow)

    def create(self, parent: Found, name: bytes, mode: int, flags: int, uid: int, gid: int) -> tuple[int, Found]:
        """Create and open a regular file; returns the descriptor and the entry."""
        parent = self._parent_for_new(parent, name)
        group, _ = self._new_group(parent, gid)
        path = _join(parent.path, name)
        fd = os.open(self.up(path), (flags | os.O_CREAT | os.O_EXCL) & ~(os.O_NOFOLLOW | _O_DIRECT), stat.S_IMODE(mode))
        try:
            self._chown_new(fd, uid, group, gid)
        except OSError:
            pass
        self._drop_whiteout(parent, name)
        return fd, Found(path, 0, True)

    def mkdir(self, parent: Found, name: bytes, mode: int, uid: int, gid: int) -> Found:
        parent = self._parent_for_new(parent, name)
        group, setgid = self._new_group(parent, gid)
        if setgid:
            mode |= stat.S_ISGID
        path = _join(parent.path, name)
        tmp = self._tmp_name(parent.path)
        os.mkdir(tmp, 0o700)
        try:
            if self._lower_had(parent, name):
                # The image had something here that was deleted: the new directory must not
                # show the image's old contents.
                os.close(os.open(tmp + b"/" + OPAQUE, os.O_WRONLY | os.O_CREAT, 0o644))
            self._chown_new(tmp, uid, group, gid)
            os.chmod(tmp, stat.S_IMODE(mode))
            os.rename(tmp, self.up(path))
        except BaseException:
            _remove_tree(tmp, ignore_errors=True)
            raise
        self._drop_whiteout(parent, name)
        return Found(path, 0, True)

    def symlink(self, parent: Found, name: bytes, target: bytes, uid: int, gid: int) -> Found:
        parent = self._parent_for_new(parent, name)
        group, _ = self._new_group(parent, gid)
        path = _join(parent.path, name)
        os.symlink(target, self.up(path))
        self._chown_new(self.up(path), uid, group, gid)
        self._drop_whiteout(parent, name)
        return Found(path, 0, True)

    def mknod(self, parent: Found, name: bytes, mode: int, rdev: int, uid: int, gid: int) -> Found:
        parent = self._parent_for_new(parent, name)
        group, _ = self._new_group(parent, gid)
        path = _join(parent.path, name)
        os.mknod(self.up(path), mode, rdev)
        self._chown_new(self.up(path), uid, group, gid)
        self._drop_whiteout(parent, name)
        return Found(path, 0, True)

    def link(self, src: Found, parent: Found, name: bytes) -> Found:
        if self.is_dir(src):
            raise OSError(errno.EPERM, "hard link to a directory")
        self._check_new(parent, name)  # a refused link leaves nothing copied up
        src = self.copy_up(src)
        parent = self._parent_for_new(parent, name)
        path = _join(parent.path, name)
        os.link(self.up(src.path), self.up(path))
        self._drop_whiteout(parent, name)
        return Found(path, 0, True)

    def unlink(self, parent: Found, name: bytes) -> None:
        f = self.step(parent, name)
        if f is None:
            raise OSError(errno.ENOENT, "no such file")
        if self.is_dir(f):
            raise OSError(errno.EISDIR, "is a directory")
        self._remove(parent, name, f)

    def _remove(self, parent: Found, name: bytes, f: Found) -> None:
        if self._lower_had(parent, name) and not self._hides_lower(parent.path, name):
            parent = self.copy_up(parent)
            self._whiteout(parent, name)  # first: a crash before the removal shows the old state
        if f.upper:
            p = self.up(f.path)
            if stat.S_ISDIR(os.lstat(p).st_mode):
                _remove_tree(p)
            else:
                os.unlink(p)

    def rmdir(self, parent: Found, name: bytes) -> None:
        f = self.step(parent, name)
        if f is None:
            raise OSError(errno.ENOENT, "no such directory")
        if not self.is_dir(f):
            raise OSError(errno.ENOTDIR, "not a directory")
        if next(iter(self.listdir(f)), None) is not None:
            raise OSError(errno.ENOTEMPTY, "directory not empty")
        self._remove(parent, name, f)

    def rename(self, sp: Found, sname: bytes, dp: Found, dname: bytes, noreplace: bool = False) -> Found:
        src = self.step(sp, sname)
        if src is None:
            raise OSError(errno.ENOENT, "no such file")
        if dname.startswith(WHITEOUT_PREFIX):
            raise OSError(errno.EPERM, "names starting with .wh. are reserved for whiteouts")
        dst = self.step(dp, dname)
        if src.path == _join(dp.path, dname):
            return src
        src_dir = self.is_dir(src)
        if src_dir and src.lower and not (src.upper and os.path.lexists(self.up(src.path) + b"/" + OPAQUE)):
            # Like kernel overlayfs without redirect_dir: mv falls back to copy + delete.
            # (An opaque directory shows nothing of the image: it moves like a new one.)
            raise OSError(errno.EXDEV, "renaming an image directory is not supported")
        if src_dir and (dp.path + b"/").startswith(src.path + b"/"):
            raise OSError(errno.EINVAL, "cannot move a directory into itself")
        if dst is not None:
            if noreplace:
                raise OSError(errno.EEXIST, "exists")
            dst_dir = self.is_dir(dst)
            if dst_dir and not src_dir:
                raise OSError(errno.EISDIR, "is a directory")
            if src_dir and not dst_dir:
                raise OSError(errno.ENOTDIR, "not a directory")
            if dst_dir and next(iter(self.listdir(dst)), None) is not None:
                raise OSError(errno.ENOTEMPTY, "directory not empty")
        src = self.copy_up(src)
        dp = self.copy_up(dp)
        sp = self.resolve(sp.path) or sp
        target = _join(dp.path, dname)
        lower_target = self._lower_had(dp, dname)  # visible, or deleted with .wh.NAME
        if src_dir and lower_target:
            # Opaque before it lands: from the moment it is there, the image's old
            # directory must not show through it (nor after a crash).
            os.close(os.open(self.up(src.path) + b"/" + OPAQUE, os.O_WRONLY | os.O_CREAT, 0o644))
        if self._lower_had(sp, sname) and not self._hides_lower(sp.path, sname):
            self._whiteout(sp, sname)
        aside = None
        if dst is not None and dst.upper and src_dir:
            # DIR's copy of the target holds only whiteouts (it is empty in the merged
            # view), and rename(2) will not replace a non-empty directory.  Removing it
            # first would let a crash bring back the image files those whiteouts hide:
            # hide the whole target with .wh.NAME (if the image has one), then move the
            # copy aside.
            if lower_target:
                self._whiteout(dp, dname)
            aside = self._tmp_name(dp.path)
            os.rename(self.up(target), aside)
        os.rename(self.up(src.path), self.up(target))
        self._drop_whiteout(dp, dname)
        if aside is not None:
            _remove_tree(aside)
        return Found(target, 0, True)

    def setattr(self, f: Found, mode: int | None = None, uid: int | None = None, gid: int | None = None,
                size: int | None = None, atime_ns: int | None = None, mtime_ns: int | None = None) -> Found:
        if f.path == b"" and (mode is not None or uid is not None or gid is not None):
            # The root's mode and owner are the image's; DIR's own must stay private.
            raise OSError(errno.EPERM, "the root of an overlay mount keeps the image's mode and owner")
        f = self.copy_up(f)
        set_attrs(self.up(f.path), mode, uid, gid, size, atime_ns, mtime_ns)
        return f

    def setxattr(self, f: Found, name: bytes, value: bytes) -> Found:
        if name == os.fsencode(OWNER_XATTR):
            raise OSError(errno.EPERM, f"{OWNER_XATTR} is imagefs' own")
        f = self.copy_up(f)
        os.setxattr(self.up(f.path), name, value, follow_symlinks=False)
        return f

    def removexattr(self, f: Found, name: bytes) -> Found:
        if name == os.fsencode(OWNER_XATTR):
            raise OSError(errno.EPERM, f"{OWNER_XATTR} is imagefs' own")
        f = self.copy_up(f)
        os.removexattr(self.up(f.path), name, follow_symlinks=False)
        return f

    def open_upper(self, f: Found, flags: int) -> int:
        """A descriptor on DIR's copy of ``f`` (copied up first when opened for writing)."""
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC):
            f = self.copy_up(f)
        return os.open(self.up(f.path), flags & ~(os.O_CREAT | os.O_EXCL | _O_DIRECT) | os.O_NOFOLLOW)

    def statfs(self) -> os.statvfs_result:
        return os.statvfs(self.top)
