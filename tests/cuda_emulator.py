"""Run CUDA kernel source on the CPU, so the fused CUDA kernels are tested without a GPU.

The source of :mod:`gpudnn.kernels.cuda` is compiled by the host C++ compiler with a shim
that makes CUDA's names plain C++: ``__global__`` functions become ordinary functions,
``blockIdx``/``threadIdx``/``blockDim``/``gridDim`` globals, ``__shared__`` a static (one
block runs at a time) and ``__syncthreads()`` a switch between fibers (ucontext): every
thread of a block is a fiber on one OS thread, run in turn until it reaches the barrier or
returns, so the emulation is deterministic. ``__shfl_down_sync`` is an exchange between two
such barriers (every thread of the block must call it in step). A barrier reached by some threads while others
have returned is reported as an error (undefined behaviour on a GPU).

``EmulatedCupy()`` stands in for the ``cupy`` module: NumPy for arrays, plus
``RawModule`` whose functions are called as CuPy's are, ``f(grid, block, args)``. The
launcher checks what CuPy cannot check for us: each argument's C type against the
kernel's parameter (an ``np.int64`` for ``long long``, an array of float32 for ``float*``;
a bare Python scalar is refused, its C type being CuPy's guess), the block size limit,
and the count of arguments. So ``CupyKernels(EmulatedCupy())`` runs its real launch code
on NumPy arrays.

float16 (the kernels' ``half_t``) is emulated with GCC's ``_Float16`` (the GPU build's PTX
conversions are replaced, so they are only checked by NVRTC and a GPU run). Grids may be
2-D; blocks are 1-D.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile

import numpy as np

COMPILER = shutil.which(os.environ.get("CXX", "g++"))

SHIM = r"""
#include <cmath>
#include <math.h>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <ucontext.h>

struct dim3 { unsigned int x, y, z; };
// external linkage: the compiler must reload them after every call (a fiber switch)
dim3 gridDim, blockDim, blockIdx, threadIdx;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__
#define __shared__ static

#define __align__(n)
#define __launch_bounds__(...)
// float16 storage as the kernel source names it (on a GPU: 16 bits converted by PTX cvt)
#define GPUDNN_HOST_EMULATION
typedef _Float16 half_t;
inline float to_acc(half_t h) { return (float)h; }
inline half_t to_half(float f) { return (half_t)f; }  // round to nearest even, as cvt.rn

namespace emu {
enum State { RUNNING, AT_BARRIER, DONE };
const size_t STACK = 256 * 1024;
static ucontext_t scheduler;
static ucontext_t* fibers = nullptr;
static char* stacks = nullptr;
static State* state = nullptr;
static unsigned current = 0, capacity = 0;
static void (*body)(void**) = nullptr;
static void** body_args = nullptr;
static char error[256] = "";

static void fiber_main() {
    body(body_args);
    state[current] = DONE;  // uc_link returns to the scheduler
}
}  // namespace emu

void __syncthreads() {
    emu::state[emu::current] = emu::AT_BARRIER;
    swapcontext(&emu::fibers[emu::current], &emu::scheduler);
}

// __shfl_down_sync(mask, v, o): lane l gets lane l + o's v (its own past lane 31). Emulated
// as a block-wide exchange between two barriers, so it holds where every thread of the block
// makes the same calls in step, as the kernels' warp sums do (a call some threads skip is
// reported as a barrier error).
template <typename T> T __shfl_down_sync(unsigned, T v, int o) {
    static T slot[1024];
    unsigned t = threadIdx.x;
    slot[t] = v;
    __syncthreads();
    T r = t % 32 + o < 32 && t + o < blockDim.x ? slot[t + o] : v;
    __syncthreads();
    return r;
}

extern "C" const char* emu_error() { return emu::error; }

// Run body(args) as every thread of a (gx, gy) grid of 1-D blocks; 0 on success.
extern "C" int emu_launch(void (*body)(void**), void** args, unsigned gx, unsigned gy, unsigned block) {
    using namespace emu;
    error[0] = 0;
    if (block > capacity) {
        free(fibers); free(stacks); free(state);
        fibers = (ucontext_t*)calloc(block, sizeof(ucontext_t));
        stacks = (char*)malloc((size_t)block * STACK);
        state = (State*)calloc(block, sizeof(State));
        capacity = block;
    }
    emu::body = body; body_args = args;
    gridDim = {gx, gy, 1}; blockDim = {block, 1, 1};
    for (unsigned by = 0; by < gy; ++by)
    for (unsigned bx = 0; bx < gx; ++bx) {
        blockIdx = {bx, by, 0};
        for (unsigned t = 0; t < block; ++t) {
            getcontext(&fibers[t]);
            fibers[t].uc_stack.ss_sp = stacks + (size_t)t * STACK;
            fibers[t].uc_stack.ss_size = STACK;
            fibers[t].uc_link = &scheduler;
            makecontext(&fibers[t], fiber_main, 0);
            state[t] = RUNNING;
        }
        for (;;) {
            unsigned waiting = 0, done = 0;
            for (unsigned t = 0; t < block; ++t) {
                if (state[t] == DONE) { ++done; continue; }
                current = t; threadIdx = {t, 0, 0};
                state[t] = RUNNING;
                swapcontext(&scheduler, &fibers[t]);
                if (state[t] == DONE) ++done; else ++waiting;
            }
            if (done == block) break;
            if (done) {
                snprintf(error, sizeof error, "block (%u, %u): %u threads wait at __syncthreads() "
                         "while %u have returned", bx, by, waiting, done);
                return 1;
            }
        }
    }
    return 0;
}

// The C type of each kernel parameter, as a letter: p<letter> for a pointer.
template <typename T> struct code { static constexpr char c = '?'; };
template <> struct code<float> { static constexpr char c = 'f'; };
template <> struct code<double> { static constexpr char c = 'd'; };
template <> struct code<half_t> { static constexpr char c = 'e'; };
template <> struct code<int> { static constexpr char c = 'i'; };
template <> struct code<long long> { static constexpr char c = 'q'; };
template <> struct code<unsigned int> { static constexpr char c = 'I'; };
template <typename T> struct letters { static constexpr char s[3] = {code<T>::c, 0, 0}; };
template <typename T> struct letters<T*> { static constexpr char s[3] = {'p', code<T>::c, 0}; };
template <typename T> struct letters<const T*> { static constexpr char s[3] = {'p', code<T>::c, 0}; };

template <typename... A> struct kernel {
    template <void (*F)(A...), size_t... I>
    static void call(void** args, std::index_sequence<I...>) { F(*static_cast<A*>(args[I])...); }
    template <void (*F)(A...)>
    static void thunk(void** args) { call<F>(args, std::index_sequence_for<A...>{}); }
    static const char* signature() {
        static std::string s;
        if (s.empty()) {
            const char* parts[] = {letters<A>::s..., nullptr};
            for (int i = 0; parts[i]; ++i) { s += parts[i]; s += ' '; }
        }
        return s.c_str();
    }
};
template <typename... A> kernel<A...> kernel_of(void (*)(A...)) { return {}; }
#pragma gpudnn_emulated_source
"""
MARK = "#pragma gpudnn_emulated_source"

# one entry point per kernel: its thunk (void**) and its signature
LAUNCHER = r"""
extern "C" void (*emu_thunk_{name}())(void**) {{
    using K = decltype(kernel_of(&{name}));
    return &K::template thunk<&{name}>;
}}
extern "C" const char* emu_signature_{name}() {{ return decltype(kernel_of(&{name}))::signature(); }}
"""

CTYPES = {"f": ctypes.c_float, "d": ctypes.c_double, "i": ctypes.c_int32,
          "q": ctypes.c_int64, "I": ctypes.c_uint32}
SCALAR = {"f": np.float32, "d": np.float64, "i": np.int32, "q": np.int64, "I": np.uint32}
POINTEE = {"f": "float32", "d": "float64", "e": "float16", "i": "int32", "q": "int64"}


class EmulatorError(RuntimeError):
    pass


def _preprocess(source, options):
    """The kernel names (``extern "C"`` functions) after the preprocessor ran."""
    out = subprocess.run([COMPILER, "-E", "-P", "-x", "c++", "-std=c++17", *options, "-"],
                         input=SHIM + source, capture_output=True, text=True)
    if out.returncode:
        raise EmulatorError(f"preprocessing failed:\n{out.stderr}")
    body = out.stdout.split(MARK, 1)[-1]
    return sorted(set(re.findall(r'extern\s+"C"\s+void\s+(\w+)\s*\(', body)))


_CACHE = {}


def compile_module(source, defines=()):
    """Compile ``source`` with the shim into a shared library; returns (ctypes.CDLL, names)."""
    if COMPILER is None:
        raise EmulatorError("no C++ compiler (g++) to emulate CUDA kernels with")
    options = [f"-D{d}" for d in defines]
    key = hashlib.sha256((SHIM + source + repr(options)).encode()).hexdigest()[:16]
    if key in _CACHE:
        return _CACHE[key]
    names = _preprocess(source, options)
    text = SHIM + source + "".join(LAUNCHER.format(name=n) for n in names)
    build = tempfile.mkdtemp(prefix="gpudnn-cuda-emu-")
    src, lib = os.path.join(build, "kernels.cpp"), os.path.join(build, "kernels.so")
    with open(src, "w") as f:
        f.write(text)
    # -fno-gnu-unique (GCC's; clang makes no such symbols): a template kernel's __shared__
    # arrays (statics here) are otherwise STB_GNU_UNIQUE symbols, one per process across every
    # module loaded: a module compiled with a larger THIN_ROWS would write past the first
    # module's smaller array
    unique = [] if "clang" in os.path.basename(COMPILER) else ["-fno-gnu-unique"]
    out = subprocess.run([COMPILER, "-O1", "-std=c++17", "-fPIC", "-shared", *unique, *options,
                          "-o", lib, src], capture_output=True, text=True)
    if out.returncode:
        raise EmulatorError(f"compiling the CUDA source for the CPU failed:\n{out.stderr}")
    dll = ctypes.CDLL(lib)
    dll.emu_launch.restype = ctypes.c_int
    dll.emu_launch.argtypes = [ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_uint] * 3
    dll.emu_error.restype = ctypes.c_char_p
    _CACHE[key] = (dll, names)
    return _CACHE[key]


class EmulatedFunction:
    """One kernel, called as a CuPy ``RawModule`` function: ``f(grid, block, args)``."""

    def __init__(self, dll, name):
        self.dll, self.name = dll, name
        thunk = getattr(dll, f"emu_thunk_{name}")
        thunk.restype = ctypes.c_void_p
        self.thunk = thunk()
        sig = getattr(dll, f"emu_signature_{name}")
        sig.restype = ctypes.c_char_p
        self.params = sig().decode().split()
        self.launches = 0

    def _argument(self, i, code, value):
        where = f"{self.name} argument {i}"
        if code.startswith("p"):
            if not isinstance(value, np.ndarray):
                raise EmulatorError(f"{where}: a pointer parameter given {type(value).__name__}")
            if value.dtype.name != POINTEE[code[1]]:
                raise EmulatorError(f"{where}: {POINTEE[code[1]]}* given a {value.dtype.name} array")
            return ctypes.c_void_p(value.ctypes.data)
        if type(value) is not SCALAR[code]:
            raise EmulatorError(f"{where}: the kernel takes {SCALAR[code].__name__}, given "
                                f"{type(value).__name__} {value!r} (its C type would be CuPy's guess)")
        return CTYPES[code](value)

    def __call__(self, grid, block, args, shared_mem=0):
        grid, block = (grid if isinstance(grid, tuple) else (grid,)), (block if isinstance(block, tuple) else (block,))
        grid = grid + (1,) * (3 - len(grid))
        if grid[2] != 1 or any(b != 1 for b in block[1:]):
            raise EmulatorError(f"{self.name}: only 2-D grids of 1-D blocks are emulated, got {grid}, {block}")
        if not (1 <= block[0] <= 1024) or not (1 <= grid[0] < 2**31) or not (1 <= grid[1] <= 65535):
            raise EmulatorError(f"{self.name}: invalid launch grid {grid}, block {block}")
        if len(args) != len(self.params):
            raise EmulatorError(f"{self.name} takes {len(self.params)} arguments, given {len(args)}")
        values = [self._argument(i, c, v) for i, (c, v) in enumerate(zip(self.params, args))]
        pointers = (ctypes.c_void_p * len(values))(*[ctypes.addressof(v) for v in values])
        if self.dll.emu_launch(self.thunk, pointers, int(grid[0]), int(grid[1]), int(block[0])):
            raise EmulatorError(f"{self.name}: {self.dll.emu_error().decode()}")
        self.launches += 1


class EmulatedRawModule:
    """Stands in for ``cupy.RawModule(code=..., options=...)``."""

    def __init__(self, code, options=(), name_expressions=None):
        defines = [o[2:] for o in options if o.startswith("-D")]
        self.dll, self.names = compile_module(code, defines)
        self._functions = {}

    def get_function(self, name):
        if name not in self.names:
            raise EmulatorError(f"no kernel {name!r} in the module (has {', '.join(self.names)})")
        if name not in self._functions:
            self._functions[name] = EmulatedFunction(self.dll, name)
        return self._functions[name]


class EmulatedCupy:
    """The ``cupy`` module as the fused kernels see it: NumPy, plus ``RawModule``."""

    RawModule = EmulatedRawModule

    def __getattr__(self, name):
        return getattr(np, name)
