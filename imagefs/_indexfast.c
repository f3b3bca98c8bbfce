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
    put32(rec, (uint32_t)(kind | mode));
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

static PyMethodDef methods[] = {
    {"layout", layout, METH_VARARGS, "The inode, dirent and pool sections of an index (see the module source)."},
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
