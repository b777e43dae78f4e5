"""Compile CUDA source to a cubin with NVRTC on a machine with no GPU, for the tests.

NVRTC is a host library: compiling needs no device. It comes from NVIDIA's
``nvidia-cuda-nvrtc`` wheel, CUDA 13's (in the test extra, so CI has it: what CuPy 14 on
CUDA 13 compiles the kernels with on the GPU machine), or CUDA 12's ``-cu12`` one. Compiling to a real architecture (``-arch=sm_90``) runs ptxas as well, so inline
PTX is checked too, not only the C++.
"""

from __future__ import annotations

import ctypes
import glob
import os
import re

import pytest


def _library():
    """libnvrtc from NVIDIA's wheels, CUDA 13's (nvidia/cu13/lib) before CUDA 12's
    (nvidia/cuda_nvrtc/lib), or None."""
    try:
        import nvidia
    except ImportError:
        return None
    for sub in ("cu13", "cuda_nvrtc"):
        for folder in getattr(nvidia, "__path__", []):
            for path in sorted(glob.glob(os.path.join(folder, sub, "lib", "libnvrtc.so*"))):
                if "alt" not in os.path.basename(path):
                    return ctypes.CDLL(path)
    return None


def _log(lib, prog):
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    buf = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, buf)
    return buf.value.decode(errors="replace")


def _check(lib, status, what, prog=None):
    if status != 0:
        log = _log(lib, prog) if prog is not None else ""
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        pytest.fail(f"NVRTC {what}: {lib.nvrtcGetErrorString(status).decode()}\n{log}")


def _cubin_ctypes(lib, source, name, options):
    """(the cubin, NVRTC's log)."""
    prog = ctypes.c_void_p()
    _check(lib, lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0, None, None),
           "createProgram")
    try:
        opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
        _check(lib, lib.nvrtcCompileProgram(prog, len(options), opts), "compileProgram", prog)
        size = ctypes.c_size_t()
        _check(lib, lib.nvrtcGetCUBINSize(prog, ctypes.byref(size)), "getCUBINSize", prog)
        buf = ctypes.create_string_buffer(size.value)
        _check(lib, lib.nvrtcGetCUBIN(prog, buf), "getCUBIN", prog)
        return buf.raw, _log(lib, prog)
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


def cubin(source, name="kernels.cu", arch="sm_90", options=("--std=c++14",)):
    """The cubin (bytes) of ``source`` for ``arch``; fails the test with NVRTC's log when it
    does not compile, skips it where no NVRTC is installed."""
    return _compile(source, name, arch, options)[0]


def _compile(source, name, arch, options):
    """(cubin, NVRTC's log) of ``source``, as :func:`cubin`."""
    options = [f"-arch={arch}", *options]
    lib = _library()
    if lib is not None:
        return _cubin_ctypes(lib, source, name, options)
    try:
        from cupy_backends.cuda.libs import nvrtc
    except ImportError:
        pytest.skip("no NVRTC: install the test extra (nvidia-cuda-nvrtc-cu12) or CuPy")
    prog = nvrtc.createProgram(source, name, [], [])
    try:
        nvrtc.compileProgram(prog, options)
    except Exception as exc:  # the log says where
        pytest.fail(f"NVRTC: {exc}\n{nvrtc.getProgramLog(prog)}")
    return nvrtc.getCUBIN(prog), nvrtc.getProgramLog(prog)


def ptxas_spills(source, options, arch="sm_90"):
    """{kernel: bytes of spill stores} as ptxas reports them (``-Xptxas=-v``) when it
    assembles ``source`` for ``arch``."""
    _, log = _compile(source, "kernels.cu", arch, [*options, "-Xptxas=-v"])
    spills, kernel = {}, None
    for line in log.splitlines():
        found = re.search(r"Function properties for (\w+)", line)
        kernel = found.group(1) if found else kernel
        found = re.search(r"(\d+) bytes spill stores", line)
        if found and kernel is not None:
            spills[kernel] = int(found.group(1))
    return spills


def assert_compiles(source, kernels, name="kernels.cu", options=("--std=c++14",)):
    """``source`` compiles (with ``options``) and assembles for sm_90 and defines each of ``kernels``."""
    binary = cubin(source, name, options=options)
    missing = [k for k in kernels if k.encode() not in binary]
    assert not missing, f"kernels missing from the cubin: {missing}"
