#!/usr/bin/env python3
"""imagefs command line: a thin click shell over the `imagefs` package.

Library errors (`ImageFSError`) become one line on stderr and exit status 1;
usage errors exit 2 (click's convention).  A traceback only with --debug.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from typing import Any, Callable, TypeVar

import click

if __package__ in (None, "") and __name__ == "__main__":  # `python cli.py` from a checkout
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from imagefs import BuildOptions, ImageFSError, ImageTree  # noqa: E402
from imagefs import mount as mounting  # noqa: E402
from imagefs.archive import Archive  # noqa: E402
from imagefs.build import open_index  # noqa: E402
from imagefs.errors import LayerOutOfRange, printable  # noqa: E402
from imagefs.manifest import read_images  # noqa: E402
from imagefs.progress import TerminalProgress, human_size as _human  # noqa: E402

F = TypeVar("F", bound=Callable[..., Any])


class _OneLine(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"imagefs: {record.levelname.lower()}: {record.getMessage()}"


def _setup_logging(debug: bool, quiet: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine() if not debug else logging.Formatter("%(name)s %(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else (logging.ERROR if quiet else logging.WARNING))


def _errors_to_exit(fn: F, status: int = 1) -> F:
    """Turn library errors into `imagefs: message` and exit ``status`` (a traceback with --debug)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = bool(kwargs.get("debug")) or os.environ.get("IMAGEFS_DEBUG") == "1"
        try:
            return fn(*args, **kwargs)
        except ImageFSError as e:
            if debug:
                raise
            click.echo(f"imagefs: {e}", err=True)
            sys.exit(status)
        except BrokenPipeError:
            # `imagefs diff ... | head`: the reader left; that is not an error worth a line.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(status)
        except OSError as e:
            if debug:
                raise
            where = f"{os.fsdecode(e.filename)}: " if e.filename else ""
            click.echo(f"imagefs: {where}{e.strerror or e}", err=True)
            sys.exit(status)
        except KeyboardInterrupt:
            click.echo("imagefs: interrupted", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


def _exit_at_once() -> None:
    """End a successful `imagefs mount` without tearing the interpreter down.

    The daemon owns the mount now and nothing here needs cleaning up; the
    teardown of every imported module would add ~40 ms to each mount.  Not
    when click's test runner calls the command in-process.
    """
    try:
        real_stdout = sys.stdout.fileno() == 1
    except (OSError, ValueError):  # a test runner's in-memory stream
        return
    if real_stdout:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _common_index_options(fn: F) -> F:
    fn = click.option("--image", "image", metavar="REF",
                      help="Image to use when the archive holds several: tag (ubuntu:22.04, with or "
                           "without docker.io/library/), image id prefix, or 1-based index as `imagefs images` lists.")(fn)
    fn = click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
                      help="Where indexes are kept [default: $XDG_CACHE_HOME/imagefs or ~/.cache/imagefs].")(fn)
    fn = click.option("--no-cache", is_flag=True, help="Neither use nor keep a persistent index.")(fn)
    fn = click.option("--verify", is_flag=True,
                      help="Check every layer against its digest and diff_id while indexing; refuse on mismatch.")(fn)
    fn = click.option("-q", "--quiet", is_flag=True, help="No progress bar and no warnings.")(fn)
    fn = click.option("--debug", is_flag=True, help="Verbose logging and tracebacks.")(fn)
    return fn


def _progress(quiet: bool) -> TerminalProgress | None:
    return None if quiet else TerminalProgress()


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name=None, version=__import__("imagefs").__version__, prog_name="imagefs")
def main() -> None:
    """Mount container image archives read-only as the merged filesystem of their layers.

    ARCHIVE is what `docker save`, `podman save` or `skopeo copy` write: a
    docker-archive (manifest.json), a legacy v1.0 archive (repositories), an
    OCI image layout archive (index.json), or Docker 25+'s mix of both.
    Nothing is extracted: the layers' tar headers are indexed once and reads
    go straight to the bytes inside the archive.
    """


@main.command()
@click.argument("archive")
@click.argument("mountpoint")
@click.option("-f", "--foreground", is_flag=True, help="Stay in the foreground until unmounted (Ctrl-C unmounts).")
@click.option("-o", "options", multiple=True, metavar="OPT[,OPT...]",
              help="FUSE/mount options, as for mount(8): allow_other, fsname=NAME, max_read=N, ... "
                   "The mount is always nosuid,nodev,default_permissions, and ro unless --overlay.")
@click.option("--layer", type=int, default=None, metavar="N",
              help="Mount the image as it was after layer N (1 = base; negative counts from the top).")
@click.option("--log-file", type=click.Path(dir_okay=False, resolve_path=True), default=None,
              help="Where the background daemon writes its log [default: nowhere].")
@click.option("--overlay", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="Make the mount writable: changes go to DIR (created if missing) as an OCI layer "
                   "changeset (.wh. whiteouts); the archive is never written. Remount with the same DIR "
                   "to see them again; `imagefs commit DIR` turns them into a new image.")
@_common_index_options
@_errors_to_exit
def mount(archive: str, mountpoint: str, foreground: bool, options: tuple[str, ...], layer: int | None,
          log_file: str | None, overlay: str | None, image: str | None, cache_dir: str | None, no_cache: bool, verify: bool,
          quiet: bool, debug: bool) -> None:
    """Mount ARCHIVE read-only at MOUNTPOINT.

    Returns once MOUNTPOINT is ready (the daemon keeps running in the
    background) or prints why it is not and exits non-zero.  The first mount
    of an archive indexes it (with a progress bar on a terminal); later mounts
    of the same unchanged archive reuse the index and start at once.

    \b
    Example:
      imagefs mount ubuntu.tar /mnt/img && ls /mnt/img/etc
      imagefs umount /mnt/img
    """
    _setup_logging(debug, quiet)
    mp = mounting.check_mountpoint(mountpoint)
    if log_file is not None and not foreground:
        mounting.check_log_file(log_file)
    if overlay is not None:
        from imagefs.overlay import check_overlay_dir

        overlay = check_overlay_dir(overlay, mp, shared="allow_other" in mounting.split_o(options))
    opts = BuildOptions(image=image, layer=layer, cache_dir=cache_dir, use_cache=not no_cache, verify=verify)
    mopts = mounting.MountOptions(extra=mounting.split_o(options), debug=debug,
                                  overlay=overlay)
    mounting.fuse_options(mopts)  # refuse bad -o before the (long) indexing
    # Indexed in a child process, so the daemon (this process in the foreground,
    # else a fork of it) starts without the memory indexing used.
    index, tmp = open_index(archive, opts, _progress(quiet), build_in_child=True)
    try:
        if foreground:
            tree = ImageTree(index)
            if tmp is not None:
                os.unlink(tmp)
                tmp = None
            mounting.serve(tree, mp, mopts)
            return
        index_path = tmp or index.path
        mounting.spawn_daemon(
            {"index": index_path, "mountpoint": mp, "options": list(mopts.extra), "debug": debug,
             "overlay": overlay},
            mp, log_file,
        )
    finally:
        if tmp is not None:
            os.unlink(tmp)
    _exit_at_once()


@main.command()
@click.argument("mountpoint")
@click.option("--debug", is_flag=True, help="Tracebacks on errors.")
@_errors_to_exit
def umount(mountpoint: str, debug: bool) -> None:
    """Unmount MOUNTPOINT; also clears a stale mount whose daemon died."""
    mounting.unmount(mountpoint)


@main.command()
@click.argument("archive")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per image.")
@click.option("--debug", is_flag=True, help="Tracebacks on errors.")
@_errors_to_exit
def images(archive: str, as_json: bool, debug: bool) -> None:
    """List the images in ARCHIVE: index, id, layer count, size as stored (compressed layers count
    compressed), tags, and the platform where the archive names one."""
    _setup_logging(debug)
    arc = Archive(archive)
    try:
        found = read_images(arc)
        rows = []
        for n, img in enumerate(found, 1):
            sizes = []
            for layer in img.layers:
                m = arc.resolve(layer.member)
                sizes.append(m.size if m is not None else 0)
            rows.append({"index": n, "id": img.id, "tags": list(img.tags), "layers": len(img.layers),
                         "size": sum(sizes), "platform": img.platform})
    finally:
        arc.close()
    if as_json:  # json.dumps escapes what is not printable ASCII
        for row in rows:
            click.echo(json.dumps(row))
        return
    for row in rows:  # the strings are the archive's, for a terminal
        row.update(id=printable(row["id"]), tags=[printable(t) for t in row["tags"]],
                   platform=row["platform"] and printable(row["platform"]))
    # A platform column only where an index names them (a multi-platform OCI archive).
    width = max((len(row["platform"] or "") for row in rows), default=0)
    platform = (lambda row: f"{row['platform'] or '-':<{width}}  ") if width else (lambda row: "")
    click.echo(f"{'#':>3}  {'ID':<12}  {'LAYERS':>6}  {'SIZE':>10}  "
               f"{platform({'platform': 'PLATFORM'})}TAGS")
    for row in rows:
        click.echo(f"{row['index']:>3}  {row['id'].removeprefix('sha256:')[:12]:<12}  {row['layers']:>6}  "
                   f"{_human(row['size']):>10}  {platform(row)}{', '.join(row['tags']) or '<none>'}")


@main.command("index")
@click.argument("archive")
@click.option("--layer", type=int, default=None, metavar="N", help="Index the image as of layer N.")
@_common_index_options
@_errors_to_exit
def index_cmd(archive: str, layer: int | None, image: str | None, cache_dir: str | None, no_cache: bool,
              verify: bool, quiet: bool, debug: bool) -> None:
    """Build the persistent index of ARCHIVE ahead of time (mounts then start at once)."""
    _setup_logging(debug, quiet)
    opts = BuildOptions(image=image, layer=layer, cache_dir=cache_dir, use_cache=not no_cache, verify=verify)
    index, tmp = open_index(archive, opts, _progress(quiet))
    try:
        n = len(index.meta["layers"])
        if tmp is None:
            where = printable(index.path)
        else:  # open_index warned why the cache could not be used
            where = "not kept (--no-cache)" if no_cache else "not kept (the cache directory is not usable)"
        click.echo(f"{printable(archive)}: {index.n_inodes} inodes, {index.meta['members']} members in {n} "
                   f"layer{'s' if n != 1 else ''}; index {where}")
    finally:
        index.close()
        if tmp is not None:
            os.unlink(tmp)


def _open_side(spec: str, image: str | None, cache_dir: str | None, no_cache: bool) -> Any:
    """A diff side: a directory (a mount or any tree), ARCHIVE, or ARCHIVE@N (as of layer N)."""
    from imagefs.diff import DirSource, TreeSource

    if os.path.isdir(spec):
        return DirSource(spec)
    layer = None
    path = spec
    if not os.path.exists(spec) and "@" in spec:
        base, _, n = spec.rpartition("@")
        try:
            layer = int(n)
            path = base
        except ValueError:
            pass
    opts = BuildOptions(image=image, layer=layer, cache_dir=cache_dir, use_cache=not no_cache)
    try:
        index, tmp = open_index(path, opts, _progress(False))  # a first diff of a big image indexes it
    except LayerOutOfRange as e:
        raise LayerOutOfRange(e.layer, e.count, f"{spec}: layer {layer}") from None
    if tmp is not None:
        os.unlink(tmp)
    return TreeSource(ImageTree(index))


@main.command("diff")
@click.argument("a")
@click.argument("b")
@click.option("--image", "image_a", metavar="REF", help="Image of A when A holds several.")
@click.option("--image-b", "image_b", metavar="REF", help="Image of B when B holds several [default: --image].")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per change, one per line.")
@click.option("--stat", "as_stat", is_flag=True, help="Only a summary: counts and bytes added/removed.")
@click.option("--all", "show_all", is_flag=True, help="List every path below an added or deleted directory.")
@click.option("--mtime", is_flag=True, help="Also report changed modification times (of files, links and "
              "nodes: a directory's changes whenever anything in it does).")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None, help="Where indexes are kept.")
@click.option("--no-cache", is_flag=True, help="Neither use nor keep a persistent index.")
@click.option("--debug", is_flag=True, help="Tracebacks on errors.")
def diff_cmd(a: str, b: str, image_a: str | None, image_b: str | None, as_json: bool, as_stat: bool,
             show_all: bool, mtime: bool, cache_dir: str | None, no_cache: bool, debug: bool) -> None:
    """What changed from A to B, one line per path: A(dded), D(eleted), C(hanged) and what.

    A and B are image archives (ARCHIVE@N: the image as of layer N), imagefs
    mountpoints or any directories.  Layers both images share are not looked
    at; file contents are read only when sizes and layers do not decide.
    Exit status as diff(1): 0 same, 1 different, 2 trouble.

    \b
    Examples:
      imagefs diff app-41.tar app-42.tar
      imagefs diff app.tar@-2 app.tar        # what the top layer changed
      imagefs diff --json old.tar /mnt/new
    """
    _diff_impl(a, b, image_a, image_b, as_json, as_stat, show_all, mtime, cache_dir, no_cache, debug=debug)


def _diff(a: str, b: str, image_a: str | None, image_b: str | None, as_json: bool, as_stat: bool,
          show_all: bool, mtime: bool, cache_dir: str | None, no_cache: bool, debug: bool = False) -> None:
    from imagefs.diff import DiffOptions, diff

    _setup_logging(debug)
    if as_json and as_stat:
        raise click.UsageError("--json and --stat are alternatives: one line per change, or a summary")
    side_a = _open_side(a, image_a, cache_dir, no_cache)
    side_b = _open_side(b, image_b or image_a, cache_dir, no_cache)
    counts = {"A": 0, "D": 0, "C": 0}
    added = removed = 0
    for change in diff(side_a, side_b, DiffOptions(all=show_all, mtime=mtime)):
        counts[change.kind] += 1
        if change.b is not None and change.b.type == "f":
            added += change.b.size
        if change.a is not None and change.a.type == "f":
            removed += change.a.size
        if as_json:
            click.echo(json.dumps(change.as_dict()))
        elif not as_stat:
            click.echo(change.line())
    if as_stat:
        click.echo(f"{counts['A']} added, {counts['D']} deleted, {counts['C']} changed; "
                   f"{_human(added)} in new or changed files, {_human(removed)} in removed or replaced files")
    sys.exit(1 if any(counts.values()) else 0)


_diff_impl = _errors_to_exit(_diff, status=2)


@main.command("layers")
@click.argument("archive")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per layer, then a summary object.")
@_common_index_options
@_errors_to_exit
def layers_cmd(archive: str, as_json: bool, image: str | None, cache_dir: str | None, no_cache: bool,
               verify: bool, quiet: bool, debug: bool) -> None:
    """Per layer of ARCHIVE: digest, sizes, entries, files added/modified/deleted, wasted bytes, created_by."""
    from imagefs.inspect import layer_report

    _setup_logging(debug, quiet)
    opts = BuildOptions(image=image, cache_dir=cache_dir, use_cache=not no_cache, verify=verify)
    img, rows = layer_report(archive, opts, _progress(quiet))
    total = sum(r.file_bytes for r in rows)
    wasted = sum(r.wasted_bytes for r in rows)
    if as_json:
        for r in rows:
            click.echo(json.dumps(r.as_dict()))
        click.echo(json.dumps({"summary": True, "layers": len(rows), "file_bytes": total, "wasted_bytes": wasted}))
        return
    click.echo(f"{'#':>3}  {'DIGEST':<19}  {'STORED':>9}  {'SIZE':>9}  {'ENTRIES':>7}  {'ADDED':>6}  "
               f"{'MODIFIED':>8}  {'DELETED':>7}  {'WASTED':>9}  CREATED BY")
    for r in rows:
        digest = r.digest.removeprefix("sha256:")[:12]
        click.echo(f"{r.index:>3}  {digest:<19}  {_human(r.compressed_size):>9}  {_human(r.size):>9}  "
                   f"{r.entries:>7}  {r.added:>6}  {r.modified:>8}  {r.deleted:>7}  {_human(r.wasted_bytes):>9}  "
                   f"{printable(r.created_by)[:60]}")
    pct = 100.0 * wasted / total if total else 0.0
    click.echo(f"{len(rows)} layers, {_human(total)} in files, {_human(wasted)} wasted ({pct:.1f}%) "
               "by files that later layers overwrite or delete")


@main.command("commit")
@click.argument("overlay_dir", metavar="DIR")
@click.option("--archive", "archive", required=True,
              help="The archive the overlay was mounted over.")
@click.option("--image", metavar="REF", help="The image of ARCHIVE, when it holds several.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The new archive to write.")
@click.option("-t", "--tag", metavar="NAME:TAG", help="Tag of the new image (RepoTags).")
@click.option("-m", "--message", default="imagefs commit", show_default=True,
              help="created_by of the new history entry.")
@click.option("--debug", is_flag=True, help="Tracebacks on errors.")
@_errors_to_exit
def commit_cmd(overlay_dir: str, archive: str, image: str | None, output: str, tag: str | None,
               message: str, debug: bool) -> None:
    """Write the image with DIR's changes as a new top layer to a docker-save archive.

    The result loads with `docker load`/`podman load` and mounts with imagefs
    to the tree the overlay showed.  Unmount the overlay first.
    """
    from imagefs.commit import CommitOptions, commit

    _setup_logging(debug)
    image_id = commit(overlay_dir, archive, output, CommitOptions(image=image, tag=tag, message=message))
    click.echo(f"{printable(output)}: {image_id}")


if __name__ == "__main__":
    main()
