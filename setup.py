"""The part of the build pyproject.toml cannot say: the optional C half of the tar scanner.

``optional=True``: without a C compiler the install still succeeds and
imagefs.tarscan uses its pure-Python path (same results, slower indexing).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("imagefs._tarfast", ["imagefs/_tarfast.c"], optional=True)])
