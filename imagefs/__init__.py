"""imagefs: mount container image archives read-only as the merged filesystem of their layers."""

from .build import BuildOptions
from .errors import (
    ArchiveError,
    ImageFormatError,
    ImageFSError,
    ImageSelectError,
    IndexCacheError,
    IntegrityError,
    LayerOutOfRange,
    MountError,
    TarFormatError,
)
from .tree import ImageTree

__all__ = [
    "ArchiveError",
    "BuildOptions",
    "ImageFSError",
    "ImageFormatError",
    "ImageSelectError",
    "ImageTree",
    "IndexCacheError",
    "IntegrityError",
    "LayerOutOfRange",
    "MountError",
    "TarFormatError",
]

__version__ = "0.1.0"
