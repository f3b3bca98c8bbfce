/* The common case of imagefs.tarscan in C: runs of plain tar headers.
 *
 * scan_plain(buf, buf_start, pos, length, member_cls) parses consecutive
 * headers starting at stream offset `pos`, from `buf` (the bytes of the stream
 * from offset `buf_start`), and returns (members, next_pos).  It stops, and
 * leaves the header at next_pos to the Python scanner, at anything that is not
 * a plain member it can take exactly as the Python code would: an extended
 * header (PAX, GNU long names, sparse), an end-of-archive block, a number that
 * is not plain octal, a checksum that only the signed variant matches, a
 * member whose data runs past `length`, a name that would be skipped with a
 * warning, or a header not wholly inside `buf`.  Everything it returns is
 * what tarscan.scan would yield for the same bytes; tests/test_tarscan.py
 * runs the whole suite both ways and compares them on random archives.
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
    unsigned long sum = 0;
    for (int i = 0; i < BLOCK; i++)
        sum += (i >= 148 && i < 156) ? 0x20 : h[i];
    return stored == sum;
}

static PyObject *scan_plain(PyObject *self, PyObject *args)
{
    Py_buffer view;
    long long buf_start, pos, length;
    PyObject *member_cls;
    if (!PyArg_ParseTuple(args, "y*LLLO", &view, &buf_start, &pos, &length, &member_cls))
        return NULL;
    const unsigned char *buf = view.buf;
    Py_ssize_t blen = view.len;
    PyObject *out = PyList_New(0);
    unsigned char tmp[256 + 2];
    if (!out)
        goto fail;

    for (;;) {
        long long rel = pos - buf_start;
        if (rel < 0 || rel + BLOCK > blen)
            break;
        const unsigned char *h = buf + rel;
        if (!checksum_ok(h))
            break; /* zero block, signed checksum, corruption: Python decides */
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
        if (uid > 0xFFFFFFFFULL || gid > 0xFFFFFFFFULL)
            break;
        if (mtime > 9223372035ULL)
            break; /* out of range in ns: Python warns */
        long long data_at = pos + BLOCK;
        long long stored = (t == '1' || t == '2' || t == '3' || t == '4' || t == '5' || t == '6') ? 0 : (long long)size;
        if (length >= 0 && data_at + stored > length)
            break; /* truncated: Python says so */

        /* name: prefix "/" name for POSIX ustar */
        Py_ssize_t nlen = cstr_len(h, 100);
        if (!posix && (t == '0' || t == '\0') && nlen && h[nlen - 1] == '/')
            break; /* a directory marked only by its slash: Python's rule */
        Py_ssize_t plen = posix ? cstr_len(h + 345, 155) : 0;
        unsigned char name[256 + 2];
        Py_ssize_t full = 0;
        if (plen) {
            memcpy(name, h + 345, (size_t)plen);
            name[plen] = '/';
            full = plen + 1;
        }
        memcpy(name + full, h, (size_t)nlen);
        full += nlen;
        Py_ssize_t depth;
        Py_ssize_t plen_norm = normalize(name, full, tmp, &depth);
        if (plen_norm > MAX_PATH_LEN || depth >= MAX_DEPTH)
            break;
        PyObject *path = PyBytes_FromStringAndSize((const char *)tmp, plen_norm);
        if (!path)
            goto fail;

        PyObject *link;
        Py_ssize_t llen = cstr_len(h + 157, 100);
        if (kind == 0) {
            Py_ssize_t ldepth;
            Py_ssize_t ln = normalize(h + 157, llen, tmp, &ldepth);
            if (ln == 0) {
                Py_DECREF(path);
                break; /* a hard link to the root or nothing: Python warns */
            }
            link = PyBytes_FromStringAndSize((const char *)tmp, ln);
        } else if (kind == S_IFLNK) {
            link = PyBytes_FromStringAndSize((const char *)(h + 157), llen);
        } else {
            link = PyBytes_FromStringAndSize("", 0);
        }
        if (!link) {
            Py_DECREF(path);
            goto fail;
        }
        long long logical = kind == S_IFREG ? (long long)size : 0;
        /* Member(path, kind, mode, uid, gid, size, mtime_ns, linkname, rdev, offset, xattrs, sparse) */
        PyObject *fields = PyTuple_New(12);
        PyObject *items[12] = {
            path,
            PyLong_FromLong(kind),
            PyLong_FromUnsignedLongLong(mode & 07777),
            PyLong_FromUnsignedLongLong(uid),
            PyLong_FromUnsignedLongLong(gid),
            PyLong_FromLongLong(logical),
            PyLong_FromLongLong((long long)mtime * 1000000000LL),
            link,
            PyLong_FromUnsignedLongLong((unsigned long long)makedev((unsigned)major, (unsigned)minor)),
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
            goto fail;
        }
        for (int k = 0; k < 12; k++)
            PyTuple_SET_ITEM(fields, k, items[k]);
        PyObject *member = PyObject_Call(member_cls, fields, NULL);
        Py_DECREF(fields);
        if (!member)
            goto fail;
        if (PyList_Append(out, member) < 0) {
            Py_DECREF(member);
            goto fail;
        }
        Py_DECREF(member);
        pos = data_at + (stored + BLOCK - 1) / BLOCK * BLOCK;
    }
done:
    PyBuffer_Release(&view);
    return Py_BuildValue("(NL)", out, pos);
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
