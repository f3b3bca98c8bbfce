"""The part of the build pyproject.toml cannot say: the optional C halves of
the tar scanner and of the index writer.

``optional=True``: without a C compiler the install still succeeds and
imagefs.tarscan and imagefs.index use their pure-Python paths (same results,
slower indexing).
"""

from setuptools import Extension, setup

setup(ext_modules=[
    Extension("imagefs._tarfast", ["imagefs/_tarfast.c"], optional=True),
    Extension("imagefs._indexfast", ["imagefs/_indexfast.c"], optional=True),
])
