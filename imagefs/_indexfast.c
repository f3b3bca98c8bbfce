/* The record-building half of imagefs.index.write_index in C.
 *
 * layout(root, encode_extras) walks the merged tree (imagefs.merge.Node
 * objects) breadth first, exactly as index._layout does, and returns
 * (inodes, dirents, pool, n_inodes, n_dirents, with_xattrs): the INODE and
 * DIRENT sections and the string pool of an index file, byte for byte what
 * the Python version builds (tests compare the two on random trees).
 * encode_extras(member) -> (sparse_blob, xattr_blob) is called for the rare
 * member with a sparse map or xattrs, so their encoding lives in one place.
 *
 * The walk holds borrowed references only: the tree is not changed while it
 * runs (encode_extras only reads its member).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define INODE_SIZE 92 /* struct "<IIIIQqQiQQIQIIIIi" */
#define DIRENT_SIZE 16 /* struct "<QII" */
#define ROOT_INO 1

/* Member field positions (imagefs.tarscan.Member is a NamedTuple) */
enum { M_PATH, M_KIND, M_MODE, M_UID, M_GID, M_SIZE, M_MTIME, M_LINK, M_RDEV, M_OFFSET, M_XATTRS, M_SPARSE };

typedef struct {
    unsigned char *data;
    size_t len, cap;
} Buf;

static int buf_reserve(Buf *b, size_t more)
{
    if (b->len + more <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 1 << 16;
    while (cap < b->len + more)
        cap *= 2;
    unsigned char *p = PyMem_Realloc(b->data, cap);
    if (!p) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = p;
    b->cap = cap;
    return 0;
}

static int buf_add(Buf *b, const void *data, size_t n)
{
    if (buf_reserve(b, n) < 0)
        return -1;
    if (n)
        memcpy(b->data + b->len, data, n);
    b->len += n;
    return 0;
}

static void put32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void put64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

/* One inode of the walk: its Node, parent inode and link count. */
typedef struct {
    PyObject *node;
    PyObject *children; /* the Node's dict, or NULL for a non-directory */
    uint32_t parent, nlink, first, count;
} Slot;

/* Node -> inode number, to give every name of a hard-linked inode one number
 * (index._layout's `inos`): open addressing on the pointer. */
typedef struct {
    PyObject **keys;
    uint32_t *vals;
    size_t cap, used;
} PtrMap;

static size_t ptr_hash(PyObject *p, size_t cap)
{
    uint64_t h = (uint64_t)(uintptr_t)p * 0x9E3779B97F4A7C15ULL;
    return (size_t)(h >> 17) & (cap - 1);
}

static int map_grow(PtrMap *m)
{
    size_t cap = m->cap ? m->cap * 2 : 1 << 12;
    PyObject **keys = PyMem_Calloc(cap, sizeof *keys);
    uint32_t *vals = PyMem_Calloc(cap, sizeof *vals);
    if (!keys || !vals) {
        PyMem_Free(keys);
        PyMem_Free(vals);
        PyErr_NoMemory();
        return -1;
    }
    for (size_t i = 0; i < m->cap; i++) {
        if (!m->keys[i])
            continue;
        size_t j = ptr_hash(m->keys[i], cap);
        while (keys[j])
            j = (j + 1) & (cap - 1);
        keys[j] = m->keys[i];
        vals[j] = m->vals[i];
    }
    PyMem_Free(m->keys);
    PyMem_Free(m->vals);
    m->keys = keys;
    m->vals = vals;
    m->cap = cap;
    return 0;
}

/* The inode of `p`, or 0 after reserving a place where `ino` is then stored. */
static uint32_t *map_slot(PtrMap *m, PyObject *p)
{
    if ((m->used + 1) * 2 > m->cap && map_grow(m) < 0)
        return NULL;
    size_t j = ptr_hash(p, m->cap);
    while (m->keys[j] && m->keys[j] != p)
        j = (j + 1) & (m->cap - 1);
    if (!m->keys[j]) {
        m->keys[j] = p;
        m->vals[j] = 0;
        m->used++;
    }
    return &m->vals[j];
}

typedef struct {
    const char *name;
    Py_ssize_t len;
    PyObject *child;
} Named;

static int by_name(const void *a, const void *b)
{
    const Named *x = a, *y = b;
    Py_ssize_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->name, y->name, (size_t)n);
    if (c)
        return c;
    return (x->len > y->len) - (x->len < y->len);
}

static PyObject *s_member, *s_layer, *s_children, *s_touched;

static int get_int(PyObject *obj, PyObject *name, long long *out)
{
    PyObject *v = PyObject_GetAttr(obj, name);
    if (!v)
        return -1;
    *out = PyLong_AsLongLong(v);
    Py_DECREF(v);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

/* A field of `member` as an integer in [lo, hi] (struct.pack's range check). */
static int field(PyObject *member, int i, long long lo, unsigned long long hi, unsigned long long *out)
{
    PyObject *v = PyTuple_GET_ITEM(member, i);
    int overflow;
    long long s = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (s == -1 && PyErr_Occurred())
        return -1;
    if (overflow > 0) {
        unsigned long long u = PyLong_AsUnsignedLongLong(v);
        if (u == (unsigned long long)-1 && PyErr_Occurred())
            return -1;
        if (u > hi)
            goto range;
        *out = u;
        return 0;
    }
    if (overflow < 0 || s < lo || (s >= 0 && (unsigned long long)s > hi))
        goto range;
    *out = (unsigned long long)s;
    return 0;
range:
    PyErr_Format(PyExc_OverflowError, "index field %d of a member is out of range", i);
    return -1;
}

/* Children of one directory, sorted by name, appended as dirents; new inodes
 * are appended to `slots`. */
static int list_dir(Slot **slots, size_t *nslots, size_t *cap, size_t at, PtrMap *map, Buf *dirents, Buf *pool,
                    uint32_t *ndirents, Named **names, size_t *names_cap)
{
    PyObject *children = (*slots)[at].children;
    Py_ssize_t n = PyDict_GET_SIZE(children);
    if ((size_t)n > *names_cap) {
        Named *p = PyMem_Realloc(*names, (size_t)n * sizeof *p);
        if (!p) {
            PyErr_NoMemory();
            return -1;
        }
        *names = p;
        *names_cap = (size_t)n;
    }
    Py_ssize_t pos = 0, k = 0;
    PyObject *key, *child;
    while (PyDict_Next(children, &pos, &key, &child)) {
        if (!PyBytes_Check(key)) {
            PyErr_SetString(PyExc_TypeError, "a directory entry name is not bytes");
            return -1;
        }
        (*names)[k].name = PyBytes_AS_STRING(key);
        (*names)[k].len = PyBytes_GET_SIZE(key);
        (*names)[k].child = child;
        k++;
    }
    if (n > 1)
        qsort(*names, (size_t)n, sizeof **names, by_name);
    uint32_t dir_ino = (uint32_t)at + 1;
    uint32_t first = *ndirents, subdirs = 0;
    if (buf_reserve(dirents, (size_t)n * DIRENT_SIZE) < 0)
        return -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        child = (*names)[i].child;
        PyObject *grand = PyObject_GetAttr(child, s_children);
        if (!grand)
            return -1;
        int is_dir = grand != Py_None;
        if (is_dir && !PyDict_Check(grand)) {
            Py_DECREF(grand);
            PyErr_SetString(PyExc_TypeError, "a Node's children are not a dict");
            return -1;
        }
        uint32_t *known = map_slot(map, child); /* a hard link's Node is met once per name */
        if (!known) {
            Py_DECREF(grand);
            return -1;
        }
        uint32_t ino;
        if (*known) {
            ino = *known;
            (*slots)[ino - 1].nlink++;
            Py_DECREF(grand);
        } else {
            if (*nslots == *cap) {
                size_t ncap = *cap * 2;
                Slot *p = PyMem_Realloc(*slots, ncap * sizeof *p);
                if (!p) {
                    Py_DECREF(grand);
                    PyErr_NoMemory();
                    return -1;
                }
                *slots = p;
                *cap = ncap;
            }
            if (*nslots >= 0xFFFFFFFEu) {
                Py_DECREF(grand);
                PyErr_SetString(PyExc_OverflowError, "too many inodes for an index");
                return -1;
            }
            ino = (uint32_t)*nslots + 1;
            Slot *s = &(*slots)[(*nslots)++];
            s->node = child;
            s->children = is_dir ? grand : NULL; /* borrowed: the Node keeps it */
            s->parent = dir_ino;
            s->nlink = is_dir ? 2 : 1;
            s->first = s->count = 0;
            Py_DECREF(grand);
            *known = ino;
        }
        if (is_dir)
            subdirs++;
        unsigned char *d = dirents->data + dirents->len;
        put64(d, pool->len);
        put32(d + 8, (uint32_t)(*names)[i].len);
        put32(d + 12, ino);
        dirents->len += DIRENT_SIZE;
        if (buf_add(pool, (*names)[i].name, (size_t)(*names)[i].len) < 0)
            return -1;
        (*ndirents)++;
    }
    Slot *dir = &(*slots)[at];
    dir->first = first;
    dir->count = *ndirents - first;
    dir->nlink = 2 + subdirs;
    return 0;
}

static int pool_blob(Buf *pool, PyObject *blob, uint64_t *off, uint32_t *len)
{
    if (!PyBytes_Check(blob)) {
        PyErr_SetString(PyExc_TypeError, "encode_extras must return bytes");
        return -1;
    }
    *off = pool->len;
    *len = (uint32_t)PyBytes_GET_SIZE(blob);
    return buf_add(pool, PyBytes_AS_STRING(blob), (size_t)PyBytes_GET_SIZE(blob));
}

/* The INODE record of one slot, with its symlink target, sparse map and xattrs in the pool. */
static int write_inode(unsigned char *rec, Slot *s, PyObject *encode_extras, Buf *pool, long long *with_xattrs)
{
    PyObject *member = PyObject_GetAttr(s->node, s_member);
    if (!member)
        return -1;
    int rc = -1;
    long long layer, touched;
    if (!PyTuple_Check(member) || PyTuple_GET_SIZE(member) < 12) {
        PyErr_SetString(PyExc_TypeError, "a Node's member is not a Member");
        goto out;
    }
    if (get_int(s->node, s_layer, &layer) < 0 || get_int(s->node, s_touched, &touched) < 0)
        goto out;
    if (layer < INT32_MIN || layer > INT32_MAX || touched < INT32_MIN || touched > INT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "layer number out of range");
        goto out;
    }
    unsigned long long kind, mode, uid, gid, size, mtime, rdev, offset;
    if (field(member, M_KIND, 0, 0xFFFFFFFFULL, &kind) < 0 || field(member, M_MODE, 0, 0xFFFFFFFFULL, &mode) < 0 ||
        field(member, M_UID, 0, 0xFFFFFFFFULL, &uid) < 0 || field(member, M_GID, 0, 0xFFFFFFFFULL, &gid) < 0 ||
        field(member, M_SIZE, 0, UINT64_MAX, &size) < 0 ||
        field(member, M_MTIME, INT64_MIN, INT64_MAX, &mtime) < 0 ||
        field(member, M_RDEV, 0, UINT64_MAX, &rdev) < 0 || field(member, M_OFFSET, 0, UINT64_MAX, &offset) < 0)
        goto out;
    uint64_t extra_off = 0, xattr_off = 0;
    uint32_t extra_len = 0, xattr_len = 0;
    PyObject *sparse = PyTuple_GET_ITEM(member, M_SPARSE);
    PyObject *xattrs = PyTuple_GET_ITEM(member, M_XATTRS);
    int has_xattrs = PyObject_IsTrue(xattrs);
    if (has_xattrs < 0)
        goto out;
    PyObject *extras = NULL;
    if ((kind != S_IFLNK && sparse != Py_None) || has_xattrs) {
        extras = PyObject_CallOneArg(encode_extras, member);
        if (!extras)
            goto out;
        if (!PyTuple_Check(extras) || PyTuple_GET_SIZE(extras) != 2) {
            Py_DECREF(extras);
            PyErr_SetString(PyExc_TypeError, "encode_extras must return two bytes objects");
            goto out;
        }
    }
    if (kind == S_IFLNK) {
        if (pool_blob(pool, PyTuple_GET_ITEM(member, M_LINK), &extra_off, &extra_len) < 0)
            goto extras_out;
    } else if (sparse != Py_None) {
        if (pool_blob(pool, PyTuple_GET_ITEM(extras, 0), &extra_off, &extra_len) < 0)
            goto extras_out;
    }
    if (has_xattrs) {
        (*with_xattrs)++;
        if (pool_blob(pool, PyTuple_GET_ITEM(extras, 1), &xattr_off, &xattr_len) < 0)
            goto extras_out;
    }
    put32(rec, (uint32_t)(kind | (kind == S_IFLNK ? 0777 : mode))); /* Linux: a symlink is 0777 */
    put32(rec + 4, (uint32_t)uid);
    put32(rec + 8, (uint32_t)gid);
    put32(rec + 12, s->nlink);
    put64(rec + 16, size);
    put64(rec + 24, mtime);
    put64(rec + 32, rdev);
    put32(rec + 40, (uint32_t)(int32_t)layer);
    put64(rec + 44, offset);
    put64(rec + 52, extra_off);
    put32(rec + 60, extra_len);
    put64(rec + 64, xattr_off);
    put32(rec + 72, xattr_len);
    put32(rec + 76, s->first);
    put32(rec + 80, s->count);
    put32(rec + 84, s->parent);
    put32(rec + 88, (uint32_t)(int32_t)touched);
    rc = 0;
extras_out:
    Py_XDECREF(extras);
out:
    Py_DECREF(member);
    return rc;
}

static PyObject *layout(PyObject *self, PyObject *args)
{
    PyObject *root, *encode_extras;
    if (!PyArg_ParseTuple(args, "OO", &root, &encode_extras))
        return NULL;
    PyObject *result = NULL, *root_children = PyObject_GetAttr(root, s_children);
    if (!root_children)
        return NULL;
    if (!PyDict_Check(root_children)) {
        Py_DECREF(root_children);
        PyErr_SetString(PyExc_TypeError, "the root is not a directory");
        return NULL;
    }
    size_t cap = 1 << 12, nslots = 1;
    Slot *slots = PyMem_Malloc(cap * sizeof *slots);
    PtrMap map = {0};
    Buf dirents = {0}, pool = {0};
    Named *names = NULL;
    size_t names_cap = 0;
    uint32_t ndirents = 0;
    long long with_xattrs = 0;
    unsigned char *inodes = NULL;
    if (!slots) {
        PyErr_NoMemory();
        goto out;
    }
    slots[0] = (Slot){root, root_children, ROOT_INO, 2, 0, 0};
    uint32_t *root_ino = map_slot(&map, root);
    if (!root_ino)
        goto out;
    *root_ino = ROOT_INO;
    for (size_t at = 0; at < nslots; at++) {
        if (slots[at].children &&
            list_dir(&slots, &nslots, &cap, at, &map, &dirents, &pool, &ndirents, &names, &names_cap) < 0)
            goto out;
    }
    inodes = PyMem_Malloc(nslots * INODE_SIZE + 1);
    if (!inodes) {
        PyErr_NoMemory();
        goto out;
    }
    for (size_t i = 0; i < nslots; i++) {
        if (write_inode(inodes + i * INODE_SIZE, &slots[i], encode_extras, &pool, &with_xattrs) < 0)
            goto out;
    }
    result = Py_BuildValue("(y#y#y#nIL)", (const char *)inodes, (Py_ssize_t)(nslots * INODE_SIZE),
                           (const char *)(dirents.data ? dirents.data : (unsigned char *)""), (Py_ssize_t)dirents.len,
                           (const char *)(pool.data ? pool.data : (unsigned char *)""), (Py_ssize_t)pool.len,
                           (Py_ssize_t)nslots, ndirents, with_xattrs);
out:
    Py_DECREF(root_children);
    PyMem_Free(slots);
    PyMem_Free(map.keys);
    PyMem_Free(map.vals);
    PyMem_Free(dirents.data);
    PyMem_Free(pool.data);
    PyMem_Free(names);
    PyMem_Free(inodes);
    return result;
}

/* ---- readdirplus: a directory's entries as the FUSE kernel protocol's records ----
 *
 * readdirplus(index, inode_off, dirent_off, pool_off, n_inodes, ino, start, size,
 *             timeout, blksize, dir_size) -> bytes | None
 *
 * What fuseops.ReadOnlyOperations.readdir makes through pyfuse3 and libfuse's
 * fuse_add_direntry_plus, one struct fuse_direntplus per entry ("." and ".."
 * first, then the index's dirents; the kernel's offset of position p is
 * p + 3), until the next record would not fit in `size` bytes; b"" past the
 * end; None when `ino` is not a directory of the index (the Python handler
 * then answers with the error).  Attributes as tree.ImageTree.stat gives them.
 * The layout is the kernel ABI's (include/uapi/linux/fuse.h), stable since
 * protocol 7.9. */

#define R_MODE 0
#define R_UID 4
#define R_GID 8
#define R_NLINK 12
#define R_SIZE 16
#define R_MTIME 24
#define R_RDEV 32
#define R_EXTRA_OFF 52
#define R_EXTRA_LEN 60
#define R_FIRST 76
#define R_COUNT 80
#define R_PARENT 84
#define ENTRY_OUT_SIZE 128 /* struct fuse_entry_out (with struct fuse_attr, 88 bytes) */
#define DIRENT_NAME_OFF 24 /* offsetof(struct fuse_dirent, name) */

static uint32_t get32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get64(const unsigned char *p)
{
    return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

typedef struct {
    const unsigned char *base;
    Py_ssize_t len;
    uint64_t inode_off, dirent_off, pool_off, n_inodes;
    uint64_t timeout_sec;
    uint32_t timeout_nsec, blksize;
    uint64_t dir_size;
} View;

/* The INODE record of `ino`, or NULL if it is not in the file. */
static const unsigned char *record_of(const View *v, uint64_t ino)
{
    if (ino < 1 || ino > v->n_inodes)
        return NULL;
    uint64_t at = v->inode_off + (ino - 1) * INODE_SIZE;
    return at + INODE_SIZE <= (uint64_t)v->len ? v->base + at : NULL;
}

/* One struct fuse_direntplus at `out` (room checked by the caller): what
 * fill_entry() and convert_stat() of libfuse make of tree.stat(ino). */
static int put_entry(const View *v, unsigned char *out, uint64_t ino, const unsigned char *name, uint32_t namelen,
                     uint64_t off, size_t padded)
{
    const unsigned char *r = record_of(v, ino);
    if (!r)
        return -1;
    uint32_t mode = get32(r + R_MODE), fmt = mode & S_IFMT;
    uint64_t size = 0, blocks = 0;
    if (fmt == S_IFREG) {
        uint64_t stored = size = get64(r + R_SIZE);
        uint32_t extra_len = get32(r + R_EXTRA_LEN);
        if (extra_len) { /* a sparse map: "S" then (offset, length) pairs; holes are not stored */
            uint64_t at = v->pool_off + get64(r + R_EXTRA_OFF);
            if (at + extra_len > (uint64_t)v->len)
                return -1;
            stored = 0;
            for (uint32_t i = 1; i + 16 <= extra_len; i += 16)
                stored += get64(v->base + at + i + 8);
        }
        blocks = (stored + 511) / 512;
    } else if (fmt == S_IFDIR) {
        size = v->dir_size;
        blocks = v->dir_size / 512;
    } else if (fmt == S_IFLNK) {
        size = get32(r + R_EXTRA_LEN); /* the target's length */
    }
    int64_t mtime = (int64_t)get64(r + R_MTIME);
    uint64_t t = mtime > 0 ? (uint64_t)mtime : 0;
    memset(out, 0, padded);
    put64(out, ino);                      /* entry_out.nodeid */
    put64(out + 16, v->timeout_sec);      /* entry_valid */
    put64(out + 24, v->timeout_sec);      /* attr_valid */
    put32(out + 32, v->timeout_nsec);
    put32(out + 36, v->timeout_nsec);
    unsigned char *a = out + 40;          /* struct fuse_attr */
    put64(a, ino);
    put64(a + 8, size);
    put64(a + 16, blocks);
    for (int k = 0; k < 3; k++) {
        put64(a + 24 + 8 * k, t / 1000000000ULL);
        put32(a + 48 + 4 * k, (uint32_t)(t % 1000000000ULL));
    }
    put32(a + 60, mode);
    put32(a + 64, get32(r + R_NLINK));
    put32(a + 68, get32(r + R_UID));
    put32(a + 72, get32(r + R_GID));
    put32(a + 76, (uint32_t)get64(r + R_RDEV)); /* dev_t cut to 32 bits, as libfuse does */
    put32(a + 80, v->blksize);
    unsigned char *d = out + ENTRY_OUT_SIZE; /* struct fuse_dirent */
    put64(d, ino);
    put64(d + 8, off);
    put32(d + 16, namelen);
    put32(d + 20, fmt >> 12);
    memcpy(d + DIRENT_NAME_OFF, name, namelen);
    return 0;
}

static size_t padded_size(uint32_t namelen)
{
    return (ENTRY_OUT_SIZE + DIRENT_NAME_OFF + namelen + 7) & ~(size_t)7;
}

static PyObject *readdirplus(PyObject *self, PyObject *args)
{
    Py_buffer buf;
    View v;
    unsigned long long ino, start;
    Py_ssize_t size;
    double timeout;
    unsigned int blksize;
    unsigned long long dir_size;
    if (!PyArg_ParseTuple(args, "y*KKKKKKndIK", &buf, &v.inode_off, &v.dirent_off, &v.pool_off, &v.n_inodes, &ino,
                          &start, &size, &timeout, &blksize, &dir_size))
        return NULL;
    v.base = buf.buf;
    v.len = buf.len;
    v.blksize = blksize;
    v.dir_size = dir_size;
    /* libfuse's calc_timeout_sec/_nsec */
    v.timeout_sec = timeout <= 0 ? 0 : (uint64_t)timeout;
    double frac = timeout - (double)v.timeout_sec;
    v.timeout_nsec = frac <= 0 ? 0 : frac >= 0.999999999 ? 999999999 : (uint32_t)(frac * 1e9);
    PyObject *result = NULL;
    unsigned char *out = NULL;
    const unsigned char *r = record_of(&v, ino);
    if (!r || (get32(r + R_MODE) & S_IFMT) != S_IFDIR || size < 0) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    uint64_t first = get32(r + R_FIRST), count = get32(r + R_COUNT), parent = get32(r + R_PARENT);
    if (start >= count + 2) {
        result = PyBytes_FromStringAndSize("", 0);
        goto done;
    }
    out = PyMem_Malloc(size ? (size_t)size : 1);
    if (!out) {
        PyErr_NoMemory();
        goto done;
    }
    size_t used = 0;
    for (uint64_t id = start; id < count + 2; id++) {
        const unsigned char *name;
        uint32_t namelen;
        uint64_t child;
        if (id == 0) {
            name = (const unsigned char *)".", namelen = 1, child = ino;
        } else if (id == 1) {
            name = (const unsigned char *)"..", namelen = 2, child = parent;
        } else {
            uint64_t at = v.dirent_off + (first + id - 2) * DIRENT_SIZE;
            if (at + DIRENT_SIZE > (uint64_t)v.len)
                goto corrupt;
            uint64_t name_at = v.pool_off + get64(v.base + at);
            namelen = get32(v.base + at + 8);
            child = get32(v.base + at + 12);
            if (name_at + namelen > (uint64_t)v.len || memchr(v.base + name_at, 0, namelen))
                goto corrupt;
            name = v.base + name_at;
        }
        size_t padded = padded_size(namelen);
        if (padded > (size_t)size - used)
            break;
        if (put_entry(&v, out + used, child, name, namelen, id + 1, padded) < 0)
            goto corrupt;
        used += padded;
    }
    result = PyBytes_FromStringAndSize((const char *)out, (Py_ssize_t)used);
    goto done;
corrupt:
    result = Py_NewRef(Py_None); /* the Python handler reads the same records and says what is wrong */
done:
    PyMem_Free(out);
    PyBuffer_Release(&buf);
    return result;
}

static PyMethodDef methods[] = {
    {"layout", layout, METH_VARARGS, "The inode, dirent and pool sections of an index (see the module source)."},
    {"readdirplus", readdirplus, METH_VARARGS, "A directory's FUSE readdirplus records (see the module source)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "imagefs._indexfast", NULL, -1, methods};

PyMODINIT_FUNC PyInit__indexfast(void)
{
    s_member = PyUnicode_InternFromString("member");
    s_layer = PyUnicode_InternFromString("layer");
    s_children = PyUnicode_InternFromString("children");
    s_touched = PyUnicode_InternFromString("touched");
    if (!s_member || !s_layer || !s_children || !s_touched)
        return NULL;
    return PyModule_Create(&module);
}
