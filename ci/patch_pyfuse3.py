#!/usr/bin/env python3
"""Patch a pyfuse3 source tree so that ``read`` learns the inode when there is no file handle.

Why: a read-only image mount answers ``open`` with ENOSYS, after which the
kernel stops sending OPEN and RELEASE altogether and keeps file pages cached
across opens (FUSE "no_open" mode).  That saves two round trips per file, the
difference between ``grep -r`` taking 17 s or under 1 s on 200,000 small
files.  But pyfuse3 hands ``read`` only the file handle, which is 0 in that
mode; the inode number is in the request and libfuse passes it, pyfuse3 drops
it.  This patch passes the inode instead when the handle is 0, and marks the
package (``pyfuse3._pyfuse3.IMAGEFS_PATCH``) so imagefs knows it can use
no_open mode.  Unpatched pyfuse3 works too, with the ordinary open/release.

The same for readdirplus: with no handle (opendir answered ENOSYS, so the
kernel stops sending OPENDIR/RELEASEDIR) it gets the inode.

Another hunk lets an Operations object ask the kernel to cache directory
listings (``imagefs_cache_readdir = True``: opendir replies with
``cache_readdir`` and ``keep_cache``), so a second ``find`` or ``ls -R`` over
an immutable image is answered from the kernel's cache instead of one
READDIRPLUS per directory through Python.

Usage: python3 ci/patch_pyfuse3.py SOURCE_DIR   (an unpacked pyfuse3 sdist)
"""

import pathlib
import sys

OLD = """cdef void fuse_read (fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                     fuse_file_info *fi):
    cdef _Container c = _Container()
    c.req = req
    c.size = size
    c.off = off
    c.fh = fi.fh
"""
NEW = OLD.replace("    c.fh = fi.fh\n", "    c.fh = fi.fh if fi.fh else ino  # imagefs: no_open mode has no handle\n")
OLD_RDP = """    c.req = req
    c.size = size
    c.off = off
    c.fh = fi.fh
    save_retval(fuse_readdirplus_async(c))
"""
NEW_RDP = OLD_RDP.replace("    c.fh = fi.fh\n", "    c.fh = fi.fh if fi.fh else ino  # imagefs: no_opendir mode\n")
OLD_DIR = """        c.fi.fh = await operations.opendir(c.ino, ctx)
"""
NEW_DIR = OLD_DIR + """        if getattr(operations, 'imagefs_cache_readdir', False):
            c.fi.cache_readdir = 1
            c.fi.keep_cache = 1
"""
OLD_PXD = """        unsigned int keep_cache
"""
NEW_PXD = OLD_PXD + """        unsigned int cache_readdir
"""
MARKER = ("\n# Added by imagefs' ci/patch_pyfuse3.py: read() gets the inode when fh is 0,\n"
          "# and opendir can ask for cached listings.\nIMAGEFS_READ_INO = True\nIMAGEFS_PATCH = 2\n")


def main(src: str) -> None:
    root = pathlib.Path(src) / "src" / "pyfuse3"
    handlers = root / "handlers.pxi"
    text = handlers.read_text()
    if NEW in text:
        print("patch_pyfuse3: already patched")
        return
    if text.count(OLD) != 1 or text.count(OLD_DIR) != 1 or text.count(OLD_RDP) != 1:
        sys.exit("patch_pyfuse3: handlers.pxi is not what this patch expects")
    pxd = pathlib.Path(src) / "Include" / "fuse_common.pxd"
    pxd_text = pxd.read_text()
    if pxd_text.count(OLD_PXD) != 1:
        sys.exit("patch_pyfuse3: Include/fuse_common.pxd is not what this patch expects")
    handlers.write_text(text.replace(OLD, NEW).replace(OLD_DIR, NEW_DIR).replace(OLD_RDP, NEW_RDP))
    pxd.write_text(pxd_text.replace(OLD_PXD, NEW_PXD))
    with open(root / "_pyfuse3.py", "a") as f:
        f.write(MARKER)
    print("patch_pyfuse3: patched", handlers)


if __name__ == "__main__":
    main(sys.argv[1])
