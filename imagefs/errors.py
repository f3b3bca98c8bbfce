"""The errors imagefs raises.  Each message is the one line a user sees.

    ImageFSError                 anything imagefs itself refuses or cannot do
    ├── ArchiveError             the archive file: missing, unreadable, not a tar, truncated
    │   └── TarFormatError       a corrupt or truncated tar header inside a layer or archive
    ├── ImageFormatError         a tar that is not a container image, or a broken manifest
    │   └── IntegrityError       a layer's bytes do not match its digest (--verify)
    ├── ImageSelectError         --image names nothing, or several images and no --image
    │   └── LayerOutOfRange      --layer N (or ARCHIVE@N) is not a layer of the image
    ├── IndexCacheError          the persistent index cannot be read or written
    ├── IndexingCrashed          the process building an index died or hit a bug
    └── MountError               the mountpoint or FUSE itself is the problem

`printable` makes any text one safe line: messages, and what the CLI prints.

The CLI turns any of these into ``imagefs: <message>`` on stderr and exit status 1;
the FUSE layer turns them into an errno.
"""

from __future__ import annotations

__all__ = [
    "ArchiveError",
    "ImageFSError",
    "ImageFormatError",
    "ImageSelectError",
    "IndexCacheError",
    "IndexingCrashed",
    "IntegrityError",
    "LayerOutOfRange",
    "MountError",
    "TarFormatError",
    "printable",
]


def printable(text: str) -> str:
    """``text`` as one line that cannot drive a terminal or fail to encode: names
    from archives and paths from the command line may hold newlines, escapes,
    lone surrogates (bytes that are not UTF-8)."""
    return "".join(c if c.isprintable() else "\\x%02x" % ord(c) if ord(c) < 256 else "\\u%04x" % ord(c)
                   for c in text)


class ImageFSError(Exception):
    """Base of every error imagefs raises on purpose; ``str(err)`` is the user's line.

    Control characters in the message are escaped, so it stays one line and
    cannot drive the terminal, whatever archive names it quotes.
    """

    def __init__(self, message: str) -> None:
        super().__init__(printable(str(message)))


class ArchiveError(ImageFSError):
    """The archive file cannot be opened or read as a tar."""


class TarFormatError(ArchiveError):
    """A tar stream has a corrupt, truncated or impossible header."""


class ImageFormatError(ImageFSError):
    """The archive is a tar but not a container image we understand, or is inconsistent."""


class IntegrityError(ImageFormatError):
    """A layer's bytes do not match the digest the image records for it."""


class ImageSelectError(ImageFSError):
    """The image to use cannot be chosen (unknown or ambiguous reference)."""


class LayerOutOfRange(ImageSelectError):
    """The layer asked for is not in the image; ``named`` is how the user asked for it."""

    def __init__(self, layer: int, count: int, named: str | None = None) -> None:
        self.layer = layer
        self.count = count
        self.named = named or f"--layer {layer}"
        super().__init__(f"{self.named} is out of range: the image has {count} layers (1..{count} or -1..-{count})")

    def __reduce__(self) -> tuple[type, tuple[int, int, str]]:
        # It crosses from the indexing child to the CLI by pickle, which would call
        # __init__ with the message alone.
        return (type(self), (self.layer, self.count, self.named))


class IndexCacheError(ImageFSError):
    """The persistent index is unusable (the caller rebuilds or runs without it)."""


class IndexingCrashed(ImageFSError):
    """The process building an index died or failed unexpectedly (killed, out of memory, a bug)."""


class MountError(ImageFSError):
    """Mounting or unmounting failed for a reason outside the image."""
