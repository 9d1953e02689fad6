"""Builds the C extension parmapper._core: the engine (engine/src) and its
one CPython binding, with the system compiler.  The binding is one
translation unit: binding/_core.c includes the other files of binding/
(binding/core.h says why), so only it is compiled and the rest are its
dependencies (an edit to any of them rebuilds it)."""
import glob

from setuptools import Extension, setup

engine = sorted(glob.glob("engine/src/*.c"))
binding_parts = sorted(p for p in glob.glob("binding/*.[ch]") if p != "binding/_core.c")

setup(
    ext_modules=[
        Extension(
            "parmapper._core",
            sources=["binding/_core.c"] + engine,
            depends=binding_parts + sorted(glob.glob("engine/src/*.h"))
            + sorted(glob.glob("engine/include/*.h")),
            include_dirs=["engine/include", "engine/src"],
            define_macros=[("_GNU_SOURCE", "1")],
            extra_compile_args=["-std=c11", "-O2", "-Wall", "-Wno-missing-field-initializers"],
            extra_link_args=["-pthread"],
        )
    ],
)
