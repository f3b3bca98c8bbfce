#!/usr/bin/env python3
"""Patch a pyfuse3 3.5.0 source tree for a read-only image mount that is as fast as a local disk.

Each hunk removes a cost that stock pyfuse3 imposes on every request; imagefs
detects the patch level (``pyfuse3._pyfuse3.IMAGEFS_PATCH``) and works with a
stock pyfuse3 too, only slower.

1. read() learns the inode when the kernel sends no file handle.  A read-only
   image mount answers ``open`` with ENOSYS, after which the kernel stops
   sending OPEN and RELEASE and keeps file pages across opens (FUSE "no_open"
   mode): two round trips less per file, ``grep -r`` over 200,000 small files
   17 s -> under 1 s.  Stock pyfuse3 hands read() only the handle, 0 there.
2. The same for readdirplus: with opendir answering ENOSYS the kernel stops
   sending OPENDIR/RELEASEDIR, and readdir gets the inode.
3. opendir can ask the kernel to cache listings (``imagefs_cache_readdir``).
4. (level 4) ``pyfuse3.imagefs_serve()``: a request loop without trio, for
   handlers that never suspend.  Stock pyfuse3 parks in trio's epoll loop
   before every request (a lock, a registration, two epoll_waits, a trip
   through the scheduler): about 100 us per request, which on a first
   ``find`` over an image costs more than the requests' work.  This loop
   polls the FUSE fd and the signal wakeup fd, runs each handler's coroutine
   to completion and writes the reply; ``pyfuse3.imagefs_exit()`` (from a
   signal handler) ends it.
5. (level 4) trio is imported on first use and the version is not looked up
   with importlib.metadata: 0.23 s less start-up for every mount.
6. (level 5; level 6: only within a burst) ``imagefs_serve(wake_fd, spin_us)``
   keeps asking for the next request for *spin_us* microseconds before it
   sleeps in poll(), within a burst (four requests in a row each within
   *spin_us* of the one before).  A `find` or `grep -r` sends its next request a few dozen
   microseconds after the reply; a daemon that has gone to sleep by then
   costs a cross-CPU wake-up per request (on these VMs, a halted vCPU woken
   by an IPI).  300 us of spinning took the first `find` over 300k files from
   12 s to 9 s.  An idle mount does not spin, and neither does one that gets
   a request now and then (spinning after each would burn most of a CPU at
   one request per 400 us).
7. (level 7) readdirplus asks ``operations.imagefs_readdirplus(fh, off, size)``
   first, if the operations have it: bytes (the kernel's direntplus records,
   which imagefs makes in C from its index) are sent as the reply at once;
   anything else (None, an exception) falls back to readdir().  A first `find` spent a third of the
   daemon's time building the same records one Python call per entry.
8. (level 8) ``-o max_read=N`` works: libfuse refuses the kernel's INIT
   unless the init handler repeats the mount's max_read in the connection
   info, which stock pyfuse3 leaves at 0 (the mount dies with EPROTO).  The
   init handler now copies ``operations.imagefs_max_read``.  And the lazy
   trio of level 4 replaces itself with the module on first use, rather than
   run an import statement on every use (the trio loop uses it per request).

Usage: python3 ci/patch_pyfuse3.py SOURCE_DIR   (an unpacked pyfuse3 sdist)
       python3 ci/patch_pyfuse3.py --level      (print the patch level this script makes)
       python3 ci/patch_pyfuse3.py --version    (print the pyfuse3 version it patches)
"""

import pathlib
import sys

LEVEL = 8
VERSION = "3.5.0"  # the hunks below match this release's sources only

# (file relative to the sdist, text that must occur exactly once, replacement)
HUNKS = [
    ("src/pyfuse3/handlers.pxi",
     """    conn.want &= ~(<unsigned> FUSE_CAP_READDIRPLUS_AUTO)
""",
     """    conn.want &= ~(<unsigned> FUSE_CAP_READDIRPLUS_AUTO)
    # imagefs: libfuse refuses the INIT unless this repeats -o max_read=N (0: none given)
    conn.max_read = getattr(operations, 'imagefs_max_read', 0)
"""),
    ("src/pyfuse3/handlers.pxi",
     """    c.off = off
    c.fh = fi.fh
    save_retval(fuse_read_async(c))
""",
     """    c.off = off
    c.fh = fi.fh if fi.fh else ino  # imagefs: no_open mode has no handle
    save_retval(fuse_read_async(c))
"""),
    ("src/pyfuse3/handlers.pxi",
     """    c.off = off
    c.fh = fi.fh
    save_retval(fuse_readdirplus_async(c))
""",
     """    c.off = off
    c.fh = fi.fh if fi.fh else ino  # imagefs: no_opendir mode
    save_retval(fuse_readdirplus_async(c))
"""),
    ("src/pyfuse3/handlers.pxi",
     """        c.fi.fh = await operations.opendir(c.ino, ctx)
""",
     """        c.fi.fh = await operations.opendir(c.ino, ctx)
        if getattr(operations, 'imagefs_cache_readdir', False):
            c.fi.cache_readdir = 1
            c.fi.keep_cache = 1
"""),
    ("src/pyfuse3/handlers.pxi",
     """    c.fh = fi.fh if fi.fh else ino  # imagefs: no_opendir mode
    save_retval(fuse_readdirplus_async(c))
""",
     """    c.fh = fi.fh if fi.fh else ino  # imagefs: no_opendir mode
    cdef int ret
    fast = getattr(operations, 'imagefs_readdirplus', None)
    if fast is not None:
        try:
            raw = fast(c.fh, off, size)
        except Exception:
            log.exception('imagefs_readdirplus failed; readdir answers')
            raw = None
        if type(raw) is bytes:
            ret = fuse_reply_buf(req, PyBytes_AsString(raw), len(raw))
            if ret != 0:
                log.error('fuse_readdirplus(): fuse_reply_* failed with %s', strerror(-ret))
            return
    save_retval(fuse_readdirplus_async(c))
"""),
    ("Include/fuse_common.pxd",
     """        unsigned int keep_cache
""",
     """        unsigned int keep_cache
        unsigned int cache_readdir
"""),
    ("src/pyfuse3/internal.pxi",
     """@async_wrapper
async def _session_loop(nursery, int min_tasks, int max_tasks):
""",
     """from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC

cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd *fds, unsigned long nfds, int timeout)
    enum: POLLIN


def imagefs_serve(int wake_fd, int spin_us=0):
    '''imagefs: answer requests in this thread, without an event loop, until unmounted.

    For handlers that never suspend (an immutable image answers every request
    from memory or the page cache): each request is read as soon as poll()
    says there is one, and its handler's coroutine is run to completion with
    send(None).  Within a burst (the last four requests each came within
    *spin_us* microseconds of the one before), the next one is asked for again
    and again for *spin_us* before the loop sleeps in poll(): a request that
    follows at once then needs no wake-up.  When *wake_fd* (the signal wakeup
    fd, see signal.set_wakeup_fd) becomes readable, pending Python signal
    handlers run; one that calls imagefs_exit() ends the loop.  Raises
    RuntimeError if a handler suspends.
    '''
    cdef int res
    cdef fuse_buf buf
    cdef pollfd fds[2]
    cdef timespec now
    cdef long long spin_ns = <long long> spin_us * 1000
    cdef long long spin_until = 0
    cdef long long last_done = 0  # when the previous request was answered (0: none yet)
    cdef long long t
    cdef int streak = 0  # requests in a row that came within spin_ns of the one before
    cdef bint spinning = False
    buf.mem = NULL
    buf.size = 0
    buf.pos = 0
    buf.flags = 0
    fds[0].fd = session_fd
    fds[0].events = POLLIN
    fds[1].fd = wake_fd
    fds[1].events = POLLIN
    os.set_blocking(session_fd, False)
    try:
        while not fuse_session_exited(session):
            res = fuse_session_receive_buf(session, &buf)
            if res == -errno.EAGAIN and spinning:
                clock_gettime(CLOCK_MONOTONIC, &now)
                t = now.tv_sec * 1000000000 + now.tv_nsec
                if spin_until == 0:
                    spin_until = t + spin_ns
                    continue
                if t < spin_until:
                    continue
            spin_until = 0
            if res == -errno.EAGAIN:
                with nogil:
                    res = poll(fds, 2, -1)
                if fds[1].revents:
                    while True:
                        try:
                            if not os.read(wake_fd, 512):
                                break
                        except BlockingIOError:
                            break
                    cpython.exc.PyErr_CheckSignals()
                continue
            if res == -errno.EINTR:
                cpython.exc.PyErr_CheckSignals()
                continue
            elif res < 0:
                raise OSError(-res, 'fuse_session_receive_buf failed with ' + strerror(-res))
            elif res == 0:
                break
            if spin_ns:
                clock_gettime(CLOCK_MONOTONIC, &now)
                t = now.tv_sec * 1000000000 + now.tv_nsec
                streak = streak + 1 if last_done != 0 and t - last_done < spin_ns else 0
                # A few in a row: a burst (find, grep -r), not one file's open+read pair.
                spinning = streak >= 4
            save_retval(None)
            fuse_session_process_buf(session, &buf)
            if py_retval is not None:
                coro = py_retval
                save_retval(None)
                try:
                    coro.send(None)
                except StopIteration:
                    pass
                else:
                    coro.close()
                    raise RuntimeError('imagefs_serve: a request handler suspended')
            if spin_ns:
                clock_gettime(CLOCK_MONOTONIC, &now)
                last_done = now.tv_sec * 1000000000 + now.tv_nsec
    finally:
        stdlib.free(buf.mem)


def imagefs_exit():
    '''imagefs: make imagefs_serve() return after the request it is on (signal-safe).'''
    fuse_session_exit(session)


@async_wrapper
async def _session_loop(nursery, int min_tasks, int max_tasks):
"""),
    ("src/pyfuse3/__init__.pyx",
     """import sys
import trio
import threading
""",
     """import sys
import threading


class _LazyTrio:
    '''imagefs: trio is imported when first used.  Importing it takes 0.2 s,
    most of a mount's start-up, and a mount served by imagefs_serve() never
    uses it.  pyfuse3.asyncio still replaces this module attribute.'''

    def __getattr__(self, name):
        global trio
        import trio as real
        if isinstance(trio, _LazyTrio):
            trio = real  # from now on the module itself, with no call per use
        return getattr(real, name)


trio = _LazyTrio()
"""),
    ("src/pyfuse3/_pyfuse3.py",
     """from importlib.metadata import PackageNotFoundError, version as package_version
""",
     """"""),
    ("src/pyfuse3/_pyfuse3.py",
     """try:
    __version__ = package_version('pyfuse3')
except PackageNotFoundError:
    __version__ = 'unknown'
""",
     f"""__version__ = '{VERSION}'  # imagefs: importlib.metadata costs 25 ms of every start
"""),
]

MARKER = ("\n# Added by imagefs' ci/patch_pyfuse3.py (see there for what each level adds).\n"
          "IMAGEFS_PATCH = %d\n" % LEVEL)


def main(src: str) -> None:
    root = pathlib.Path(src)
    texts: dict[str, str] = {}
    for rel, old, new in HUNKS:
        if rel not in texts:
            texts[rel] = (root / rel).read_text()
        text = texts[rel]
        if text.count(old) != 1:
            sys.exit(f"patch_pyfuse3: {rel} is not what this patch expects (a hunk matches "
                     f"{text.count(old)} times; already patched, or another pyfuse3 version?)")
        texts[rel] = text.replace(old, new)
    for rel, text in texts.items():
        (root / rel).write_text(text)
    with open(root / "src" / "pyfuse3" / "_pyfuse3.py", "a") as f:
        f.write(MARKER)
    print(f"patch_pyfuse3: patched {src} to level {LEVEL}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--level"]:
        print(LEVEL)
    elif sys.argv[1:] == ["--version"]:
        print(VERSION)
    elif len(sys.argv) == 2:
        main(sys.argv[1])
    else:
        sys.exit(__doc__.split("Usage: ")[1])
