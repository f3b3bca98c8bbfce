/* The least a FUSE server can do to serve a big file from an archive: the
 * benchmark's floor for `cat` through FUSE (the "minimal C FUSE server" peer).
 *
 *   blobfs ARCHIVE OFFSET LENGTH MOUNTPOINT
 *
 * mounts a read-only directory holding one file, "blob": LENGTH bytes of
 * ARCHIVE from OFFSET.  Each read is one pread into a reused buffer and one
 * reply, on libfuse's single-threaded loop; OPEN answers ENOSYS (the kernel
 * then keeps the page cache across opens, as imagefs does) and attributes
 * are cached for a long time.  Whatever imagefs does in Python on top of
 * that, this does not: what it reaches is what the kernel's FUSE path gives.
 * The benchmark widens the mount's readahead to 1 MiB, as imagefs does its own.
 */
#define FUSE_USE_VERSION 34
#include <fuse_lowlevel.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define BLOB_INO 2
#define MAX_REPLY (4 << 20)

static int archive_fd;
static off_t blob_offset;
static off_t blob_length;
static char *reply_buf;

static void fill_stat(struct stat *st, fuse_ino_t ino)
{
    memset(st, 0, sizeof *st);
    st->st_ino = ino;
    if (ino == FUSE_ROOT_ID) {
        st->st_mode = S_IFDIR | 0555;
        st->st_nlink = 2;
    } else {
        st->st_mode = S_IFREG | 0444;
        st->st_nlink = 1;
        st->st_size = blob_length;
        st->st_blksize = 131072;
    }
}

static void blob_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    struct fuse_entry_param e;
    if (parent != FUSE_ROOT_ID || strcmp(name, "blob") != 0) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    memset(&e, 0, sizeof e);
    e.ino = BLOB_INO;
    e.attr_timeout = e.entry_timeout = 86400;
    fill_stat(&e.attr, BLOB_INO);
    fuse_reply_entry(req, &e);
}

static void blob_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct stat st;
    (void)fi;
    if (ino != FUSE_ROOT_ID && ino != BLOB_INO) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    fill_stat(&st, ino);
    fuse_reply_attr(req, &st, 86400);
}

static void blob_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    (void)ino;
    (void)fi;
    fuse_reply_err(req, ENOSYS);
}

static void blob_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
    (void)fi;
    if (ino != BLOB_INO) {
        fuse_reply_err(req, EISDIR);
        return;
    }
    if (off >= blob_length) {
        fuse_reply_buf(req, NULL, 0);
        return;
    }
    if ((off_t)size > blob_length - off)
        size = (size_t)(blob_length - off);
    if (size > MAX_REPLY)
        size = MAX_REPLY;
    ssize_t n = pread(archive_fd, reply_buf, size, blob_offset + off);
    if (n < 0)
        fuse_reply_err(req, errno);
    else
        fuse_reply_buf(req, reply_buf, (size_t)n);
}

static const struct fuse_lowlevel_ops blob_ops = {
    .lookup = blob_lookup,
    .getattr = blob_getattr,
    .open = blob_open,
    .read = blob_read,
};

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: blobfs ARCHIVE OFFSET LENGTH MOUNTPOINT\n");
        return 2;
    }
    archive_fd = open(argv[1], O_RDONLY | O_CLOEXEC);
    blob_offset = atoll(argv[2]);
    blob_length = atoll(argv[3]);
    reply_buf = aligned_alloc(4096, MAX_REPLY);
    if (archive_fd < 0 || !reply_buf || blob_offset < 0 || blob_length < 0) {
        perror("blobfs");
        return 1;
    }
    char *fuse_argv[] = {argv[0], "-o", "ro,fsname=blobfs,subtype=blobfs", NULL};
    struct fuse_args args = FUSE_ARGS_INIT(3, fuse_argv);
    struct fuse_session *se = fuse_session_new(&args, &blob_ops, sizeof blob_ops, NULL);
    if (!se)
        return 1;
    if (fuse_session_mount(se, argv[4]) != 0) {
        fuse_session_destroy(se);
        return 1;
    }
    fuse_daemonize(0); /* returns in the child once the parent has exited: the mount exists */
    int ret = fuse_session_loop(se);
    fuse_session_unmount(se);
    fuse_session_destroy(se);
    return ret < 0 ? 1 : 0;
}
