"""Builds the C extension parmapper._core: the engine (engine/src) and its
one CPython binding (binding/_core.c), with the system compiler."""
import glob

from setuptools import Extension, setup

engine = sorted(glob.glob("engine/src/*.c"))

setup(
    ext_modules=[
        Extension(
            "parmapper._core",
            sources=["binding/_core.c"] + engine,
            include_dirs=["engine/include", "engine/src"],
            define_macros=[("_GNU_SOURCE", "1")],
            extra_compile_args=["-std=c11", "-O2", "-Wall", "-Wno-missing-field-initializers"],
            extra_link_args=["-pthread"],
        )
    ],
)
