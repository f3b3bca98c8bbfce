/* The common case of imagefs.tarscan in C: runs of plain tar headers.
 *
 * scan_plain(buf, buf_start, pos, length, member_cls) parses consecutive
 * headers starting at stream offset `pos`, from `buf` (the bytes of the stream
 * from offset `buf_start`), and returns (members, next_pos, short): short is
 * true when it stopped only because `buf` ended there.  It also takes a
 * PAX extended header that only sets path, linkpath, size, uid, gid or mtime
 * (what Go's archive/tar, and so Docker and buildah, write for long names and
 * sub-second times), together with the member it applies to.  It stops, and
 * leaves the header at next_pos to the Python scanner, at anything that is not
 * a member it can take exactly as the Python code would: other extended
 * headers (xattrs, GNU long names, sparse, global PAX), an end-of-archive
 * block, a number or PAX record that is not plain, a checksum that only the
 * signed variant matches, a member whose data runs past `length`, a name that
 * would be skipped with a warning, or a header not wholly inside `buf`.
 * Everything it returns is what tarscan.scan would yield for the same bytes;
 * tests/test_tarscan.py runs the whole suite both ways and compares them on
 * random archives.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#define BLOCK 512
#define MAX_PATH_LEN 16384
#define MAX_DEPTH 1024

/* Plain octal as tar writers put it: optional spaces, digits, then spaces or
 * NULs to the end of the field (Python's int() accepts more; those go to it).
 * Returns 0 and sets *out, or -1 for anything else. */
static int octal(const unsigned char *f, int n, unsigned long long *out)
{
    int i = 0;
    unsigned long long v = 0;
    int digits = 0;
    while (i < n && f[i] == ' ')
        i++;
    while (i < n && f[i] >= '0' && f[i] <= '7') {
        if (v >> 60)
            return -1;
        v = v * 8 + (unsigned long long)(f[i] - '0');
        i++;
        digits++;
    }
    /* the rest: trailing spaces, then a NUL and anything (Python cuts at the first NUL) */
    while (i < n && f[i] == ' ')
        i++;
    if (i < n && f[i] != '\0')
        return -1;
    if (!digits) {
        /* Python: int(b"", 8) fails, then the stripped field is empty -> 0; but a
         * field of only spaces before the NUL also gives 0.  Both are 0 here. */
        v = 0;
    }
    *out = v;
    return 0;
}

static Py_ssize_t cstr_len(const unsigned char *f, Py_ssize_t n)
{
    const unsigned char *z = memchr(f, 0, (size_t)n);
    return z ? z - f : n;
}

/* imagefs.paths.normalize for a name without NUL: drop "", "." and resolve
 * ".." lexically, never above the root.  Writes into out (capacity >= n). */
static Py_ssize_t normalize(const unsigned char *name, Py_ssize_t n, unsigned char *out, Py_ssize_t *depth)
{
    Py_ssize_t o = 0, i = 0;
    Py_ssize_t parts = 0;
    while (i < n) {
        Py_ssize_t j = i;
        while (j < n && name[j] != '/')
            j++;
        Py_ssize_t len = j - i;
        if (len == 0 || (len == 1 && name[i] == '.')) {
            /* skip */
        } else if (len == 2 && name[i] == '.' && name[i + 1] == '.') {
            if (parts) {
                while (o > 0 && out[o - 1] != '/')
                    o--;
                if (o > 0)
                    o--; /* the slash before the dropped part */
                parts--;
            }
        } else {
            if (parts)
                out[o++] = '/';
            memcpy(out + o, name + i, (size_t)len);
            o += len;
            parts++;
        }
        i = j + 1;
    }
    *depth = parts ? parts - 1 : 0; /* number of slashes */
    return o;
}

static int checksum_ok(const unsigned char *h)
{
    unsigned long long stored;
    if (octal(h + 148, 8, &stored) < 0)
        return 0;
    /* All bytes, then the checksum field counted as spaces: a loop without
     * branches, which the compiler vectorises (the per-byte test cost 2 us). */
    unsigned int sum = 0;
    for (int i = 0; i < BLOCK; i++)
        sum += h[i];
    for (int i = 148; i < 156; i++)
        sum -= h[i];
    return stored == sum + 8 * 0x20;
}

/* The PAX records that are plain numbers, by their place in struct pax. */
enum { PAX_SIZE, PAX_UID, PAX_GID, PAX_NUMBERS };
static const char *const pax_number_keys[PAX_NUMBERS] = {"size", "uid", "gid"};

/* What a PAX header says about the member after it (pointers into the buffer). */
struct pax {
    const unsigned char *path, *link; /* NULL: not set */
    Py_ssize_t path_len, link_len;
    int has[PAX_NUMBERS], has_mtime;
    unsigned long long num[PAX_NUMBERS];
    long long mtime_ns;
};

/* Plain decimal as Python's int() reads it, without sign, spaces or "_" (those
 * go to Python); at most 18 digits, so the value fits in 63 bits. */
static int decimal(const unsigned char *s, Py_ssize_t n, unsigned long long *out)
{
    if (n < 1 || n > 18)
        return -1;
    unsigned long long v = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (unsigned long long)(s[i] - '0');
    }
    *out = v;
    return 0;
}

/* tarscan._pax_mtime for "SECONDS[.FRACTION]" with plain digits, in range. */
static int pax_mtime(const unsigned char *s, Py_ssize_t n, long long *out)
{
    const unsigned char *dot = memchr(s, '.', (size_t)n);
    Py_ssize_t whole_len = dot ? dot - s : n;
    unsigned long long whole, frac = 0;
    if (decimal(s, whole_len, &whole) < 0 || whole > 9223372035ULL)
        return -1; /* signs, empty or out of range: Python's rules */
    if (dot) {
        Py_ssize_t i = whole_len + 1;
        for (int k = 0; i < n; i++, k++) {
            if (s[i] < '0' || s[i] > '9')
                return -1;
            if (k < 9)
                frac = frac * 10 + (unsigned long long)(s[i] - '0');
        }
        for (Py_ssize_t k = n - whole_len - 1; k < 9; k++)
            frac *= 10; /* "1.5" is 1.500000000 */
    }
    *out = (long long)(whole * 1000000000ULL + frac);
    return 0;
}

static int key_is(const unsigned char *k, Py_ssize_t n, const char *want)
{
    return (size_t)n == strlen(want) && memcmp(k, want, (size_t)n) == 0;
}

static int key_starts(const unsigned char *k, Py_ssize_t n, const char *prefix)
{
    size_t len = strlen(prefix);
    return (size_t)n >= len && memcmp(k, prefix, len) == 0;
}

/* tarscan._parse_pax and the record rules of tarscan.scan, for the keys a
 * plain member may carry; -1 for anything that must go to Python (corrupt
 * records, NULs in names, and keys with rules of their own: xattrs, sparse
 * files, device numbers). */
static int parse_pax(const unsigned char *d, Py_ssize_t n, struct pax *p)
{
    Py_ssize_t pos = 0;
    while (pos < n) {
        if (d[pos] == 0)
            break; /* padding after the last record */
        Py_ssize_t sp = pos;
        while (sp < n && d[sp] >= '0' && d[sp] <= '9')
            sp++;
        unsigned long long len;
        if (sp >= n || d[sp] != ' ' || decimal(d + pos, sp - pos, &len) < 0)
            return -1;
        if (len <= (unsigned long long)(sp - pos) || len > (unsigned long long)(n - pos))
            return -1;
        const unsigned char *rec = d + sp + 1;
        Py_ssize_t rlen = pos + (Py_ssize_t)len - (sp + 1);
        if (rlen < 1 || rec[rlen - 1] != '\n')
            return -1;
        const unsigned char *eq = memchr(rec, '=', (size_t)(rlen - 1));
        if (!eq)
            return -1;
        const unsigned char *key = rec, *val = eq + 1;
        Py_ssize_t klen = eq - rec, vlen = rec + rlen - 1 - val;
        int number = -1;
        for (int k = 0; k < PAX_NUMBERS; k++) {
            if (key_is(key, klen, pax_number_keys[k]))
                number = k;
        }
        if (number >= 0) {
            if (decimal(val, vlen, &p->num[number]) < 0)
                return -1;
            p->has[number] = 1;
        } else if (key_is(key, klen, "path") || key_is(key, klen, "linkpath")) {
            if (memchr(val, 0, (size_t)vlen))
                return -1;
            if (klen == 4) {
                p->path = val;
                p->path_len = vlen;
            } else {
                p->link = val;
                p->link_len = vlen;
            }
        } else if (key_is(key, klen, "mtime")) {
            if (pax_mtime(val, vlen, &p->mtime_ns) < 0)
                return -1;
            p->has_mtime = 1;
        } else if (key_starts(key, klen, "SCHILY.") || key_starts(key, klen, "LIBARCHIVE.xattr.") ||
                   key_starts(key, klen, "GNU.sparse.")) {
            return -1;
        } /* anything else (atime, ctime, uname, comment, ...) is ignored, as in Python */
        pos += (Py_ssize_t)len;
    }
    return 0;
}

/* imagefs.paths.normalize as bytes; *depth is its number of slashes. */
static PyObject *normalized(const unsigned char *name, Py_ssize_t n, Py_ssize_t *depth)
{
    unsigned char small[512] = {0};
    unsigned char *out = n <= (Py_ssize_t)sizeof small ? small : PyMem_Malloc((size_t)n);
    if (!out)
        return PyErr_NoMemory();
    Py_ssize_t len = normalize(name, n, out, depth);
    PyObject *b = PyBytes_FromStringAndSize((const char *)out, len);
    if (out != small)
        PyMem_Free(out);
    return b;
}

/* Member(path, kind, mode, uid, gid, size, mtime_ns, linkname, rdev, offset, xattrs, sparse);
 * steals path and link. */
static PyObject *new_member(PyObject *member_cls, PyObject *path, int kind, unsigned long long mode,
                            unsigned long long uid, unsigned long long gid, long long size, long long mtime_ns,
                            PyObject *link, unsigned long long rdev, long long data_at)
{
    PyObject *fields = PyTuple_New(12);
    PyObject *items[12] = {
        path,
        PyLong_FromLong(kind),
        PyLong_FromUnsignedLongLong(mode),
        PyLong_FromUnsignedLongLong(uid),
        PyLong_FromUnsignedLongLong(gid),
        PyLong_FromLongLong(size),
        PyLong_FromLongLong(mtime_ns),
        link,
        PyLong_FromUnsignedLongLong(rdev),
        PyLong_FromLongLong(data_at),
        PyTuple_New(0),
        Py_NewRef(Py_None),
    };
    int bad = fields == NULL;
    for (int k = 0; k < 12; k++) {
        if (items[k] == NULL)
            bad = 1;
    }
    if (bad) {
        for (int k = 0; k < 12; k++)
            Py_XDECREF(items[k]);
        Py_XDECREF(fields);
        return NULL;
    }
    for (int k = 0; k < 12; k++)
        PyTuple_SET_ITEM(fields, k, items[k]);
    /* tuple.__new__(Member, fields): what the NamedTuple's own __new__ does,
     * without running its Python frame (a third of the cost of a member). */
    PyObject *args = PyTuple_Pack(1, fields);
    Py_DECREF(fields);
    if (!args)
        return NULL;
    PyObject *member = PyTuple_Type.tp_new((PyTypeObject *)member_cls, args, NULL);
    Py_DECREF(args);
    return member;
}

#define ROUND_UP(n) (((n) + BLOCK - 1) / BLOCK * BLOCK)

static PyObject *scan_plain(PyObject *self, PyObject *args)
{
    Py_buffer view;
    long long buf_start, pos, length;
    PyObject *member_cls;
    if (!PyArg_ParseTuple(args, "y*LLLO", &view, &buf_start, &pos, &length, &member_cls))
        return NULL;
    if (!PyType_Check(member_cls) || !PyType_IsSubtype((PyTypeObject *)member_cls, &PyTuple_Type)) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_TypeError, "member_cls must be a tuple type (tarscan.Member)");
        return NULL;
    }
    const unsigned char *buf = view.buf;
    Py_ssize_t blen = view.len;
    PyObject *out = PyList_New(0);
    int short_buf = 0; /* stopped because the buffer ended, not at a header for Python */
    if (!out)
        goto fail;

    for (;;) {
        /* Every `break` below leaves `pos` at the header Python must read. */
        long long rel = pos - buf_start;
        if (rel < 0 || rel + BLOCK > blen) {
            short_buf = 1;
            break;
        }
        const unsigned char *h = buf + rel;
        if (!checksum_ok(h))
            break; /* zero block, signed checksum, corruption: Python decides */
        struct pax pax = {0};
        long long member_at = pos;
        if (h[156] == 'x') {
            unsigned long long xsize;
            if (octal(h + 124, 12, &xsize) < 0 || xsize > (1ULL << 26))
                break;
            member_at = pos + BLOCK + ROUND_UP((long long)xsize);
            long long mrel = member_at - buf_start;
            if (mrel + BLOCK > blen) {
                short_buf = 1;
                break;
            }
            if (parse_pax(h + BLOCK, (Py_ssize_t)xsize, &pax) < 0)
                break;
            h = buf + mrel;
            if (!checksum_ok(h))
                break;
        }
        unsigned char t = h[156];
        int kind;
        switch (t) {
        case '0': case '\0': case '7': kind = S_IFREG; break;
        case '1': kind = 0; break;
        case '2': kind = S_IFLNK; break;
        case '3': kind = S_IFCHR; break;
        case '4': kind = S_IFBLK; break;
        case '5': kind = S_IFDIR; break;
        case '6': kind = S_IFIFO; break;
        default: goto done;
        }
        int posix = memcmp(h + 257, "ustar\0", 6) == 0;
        int gnu = memcmp(h + 257, "ustar ", 6) == 0;
        if (!posix && !gnu)
            break; /* v7 and friends: rare, and with rules of their own */
        unsigned long long mode, uid, gid, size, mtime, major = 0, minor = 0;
        if (octal(h + 100, 8, &mode) < 0 || octal(h + 108, 8, &uid) < 0 || octal(h + 116, 8, &gid) < 0 ||
            octal(h + 124, 12, &size) < 0 || octal(h + 136, 12, &mtime) < 0)
            break;
        if (t == '3' || t == '4') {
            if (octal(h + 329, 8, &major) < 0 || octal(h + 337, 8, &minor) < 0)
                break;
            if (major > 0xFFFFFFFFULL || minor > 0xFFFFFFFFULL)
                break;
        }
        if (pax.has[PAX_SIZE])
            size = pax.num[PAX_SIZE];
        if (pax.has[PAX_UID])
            uid = pax.num[PAX_UID];
        if (pax.has[PAX_GID])
            gid = pax.num[PAX_GID];
        if (uid > 0xFFFFFFFFULL || gid > 0xFFFFFFFFULL)
            break;
        if (!pax.has_mtime && mtime > 9223372035ULL)
            break; /* out of range in ns: Python warns */
        long long mtime_ns = pax.has_mtime ? pax.mtime_ns : (long long)mtime * 1000000000LL;
        long long data_at = member_at + BLOCK;
        long long stored = (t == '1' || t == '2' || t == '3' || t == '4' || t == '5' || t == '6') ? 0 : (long long)size;
        if (length >= 0 && data_at + stored > length)
            break; /* truncated: Python says so */

        /* the name: PAX path, or ustar prefix "/" name */
        const unsigned char *name = pax.path;
        Py_ssize_t nlen = pax.path_len;
        unsigned char joined[256 + 2];
        if (!name) {
            Py_ssize_t plen = posix ? cstr_len(h + 345, 155) : 0;
            Py_ssize_t blen_name = cstr_len(h, 100);
            nlen = 0;
            if (plen) {
                memcpy(joined, h + 345, (size_t)plen);
                joined[plen] = '/';
                nlen = plen + 1;
            }
            memcpy(joined + nlen, h, (size_t)blen_name);
            nlen += blen_name;
            name = joined;
        }
        if (!posix && (t == '0' || t == '\0') && nlen && name[nlen - 1] == '/')
            break; /* a directory marked only by its slash: Python's rule */
        if (nlen > 4 * MAX_PATH_LEN)
            break; /* Python warns (normalising it could only shorten it so far) */
        Py_ssize_t depth;
        PyObject *path = normalized(name, nlen, &depth);
        if (!path)
            goto fail;
        if (PyBytes_GET_SIZE(path) > MAX_PATH_LEN || depth >= MAX_DEPTH) {
            Py_DECREF(path);
            break;
        }

        const unsigned char *lname = pax.link ? pax.link : h + 157;
        Py_ssize_t llen = pax.link ? pax.link_len : cstr_len(h + 157, 100);
        PyObject *link;
        if (kind == 0) {
            Py_ssize_t ldepth;
            link = normalized(lname, llen, &ldepth);
            if (link && PyBytes_GET_SIZE(link) == 0) {
                Py_DECREF(link);
                Py_DECREF(path);
                break; /* a hard link to the root or nothing: Python warns */
            }
        } else if (kind == S_IFLNK) {
            link = PyBytes_FromStringAndSize((const char *)lname, llen);
        } else {
            link = PyBytes_FromStringAndSize("", 0);
        }
        if (!link) {
            Py_DECREF(path);
            goto fail;
        }
        long long logical = kind == S_IFREG ? (long long)size : 0;
        PyObject *member = new_member(member_cls, path, kind, mode & 07777, uid, gid, logical, mtime_ns, link,
                                      (unsigned long long)makedev((unsigned)major, (unsigned)minor), data_at);
        if (!member)
            goto fail;
        if (PyList_Append(out, member) < 0) {
            Py_DECREF(member);
            goto fail;
        }
        Py_DECREF(member);
        pos = data_at + ROUND_UP(stored);
    }
done:
    PyBuffer_Release(&view);
    return Py_BuildValue("(NLN)", out, pos, PyBool_FromLong(short_buf));
fail:
    Py_XDECREF(out);
    PyBuffer_Release(&view);
    return NULL;
}

static PyMethodDef methods[] = {
    {"scan_plain", scan_plain, METH_VARARGS, "Parse a run of plain tar headers (see the module source)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "imagefs._tarfast", NULL, -1, methods};

PyMODINIT_FUNC PyInit__tarfast(void) { return PyModule_Create(&module); }
