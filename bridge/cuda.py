"""CUDA without a GPU: compile real device code, and prove a library carries it.

TVM hands generated CUDA C to ``ffi.Module.create.cuda``, registered only by
``libtvm_runtime_cuda.so``. That library needs the driver (``libcuda.so.1``); on a build machine
without one it fails to load, and TVM then silently stores CUDA *source* in the library, which
no device can run. :func:`enable_offline_codegen` loads the real driver when there is one, else
a tiny stub with the symbols TVM's runtime imports, so nvcc compiles a fatbin for the target's
arch. :func:`device_code` reads an exported library and says what it carries.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import struct
import subprocess
from pathlib import Path

from bridge.cache import cache_dir
from bridge.errors import CompileError

STUB_SOURCE = r"""
/* Build-time stand-in for libcuda.so.1 (bridge): the driver symbols libtvm_runtime_cuda.so
   imports. Every call fails with CUDA_ERROR_STUB_LIBRARY (34); it only lets the module load. */
int cuGetErrorName(int e, const char** s) { (void)e; if (s) *s = "CUDA_ERROR_STUB"; return 0; }
int cuGetErrorString(int e, const char** s) { (void)e; if (s) *s = "CUDA stub"; return 0; }
int cuDeviceGetName(void) { return 34; }
int cuFuncSetAttribute(void) { return 34; }
int cuLaunchKernelEx(void) { return 34; }
int cuModuleGetFunction(void) { return 34; }
int cuModuleLoadData(void) { return 34; }
int cuModuleUnload(void) { return 34; }
int cuTensorMapEncodeTiled(void) { return 34; }
"""
FACTORY = "ffi.Module.create.cuda"


def _load_driver() -> str:
    """Load libcuda.so.1 globally: the real driver if present, else the stub (built once)."""
    try:
        ctypes.CDLL("libcuda.so.1", mode=ctypes.RTLD_GLOBAL)
        return "driver"
    except OSError:
        pass
    digest = hashlib.sha256(STUB_SOURCE.encode()).hexdigest()[:12]
    stub = cache_dir() / f"cuda-stub-{digest}" / "libcuda.so.1"
    if not stub.exists():
        stub.parent.mkdir(parents=True, exist_ok=True)
        source = stub.with_name("cuda_stub.c")
        source.write_text(STUB_SOURCE)
        partial = stub.with_name(f"libcuda.so.1.{os.getpid()}")
        subprocess.run(
            [
                os.environ.get("CC", "cc"),
                "-shared",
                "-fPIC",
                "-O2",
                "-Wl,-soname,libcuda.so.1",
                "-o",
                str(partial),
                str(source),
            ],
            check=True,
        )
        partial.replace(stub)
    ctypes.CDLL(str(stub), mode=ctypes.RTLD_GLOBAL)
    return "stub"


def _load_cudart() -> None:
    candidates = ["libcudart.so.13"]
    for root in (os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if root:
            candidates += [str(Path(root) / d / "libcudart.so.13") for d in ("lib64", "lib")]
    for candidate in candidates:
        try:
            ctypes.CDLL(candidate, mode=ctypes.RTLD_GLOBAL)
            return
        except OSError:
            continue
    raise CompileError(
        "CUDA targets need the CUDA 13 toolkit (libcudart.so.13 and nvcc); "
        "install it or set CUDA_PATH"
    )


def enable_offline_codegen() -> str:
    """Make TVM compile CUDA kernels with nvcc into fatbins; returns 'driver' or 'stub'."""
    import tvm

    os.environ.setdefault("TVM_CUDA_COMPILE_MODE", "nvcc")  # nvrtc needs cuda-python
    if tvm.get_global_func(FACTORY, allow_missing=True) is not None:
        return "loaded"
    _load_cudart()
    how = _load_driver()
    library = Path(tvm.__file__).parent / "lib" / "libtvm_runtime_cuda.so"
    ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)  # its initializers register the factory
    if tvm.get_global_func(FACTORY, allow_missing=True) is None:
        raise CompileError(f"TVM's CUDA runtime ({library.name}) did not register {FACTORY}")
    return how


# --- reading device code out of an exported library ---------------------------------------------


class _Cursor:
    def __init__(self, data: bytes, offset: int = 0):
        self.data, self.offset = data, offset

    def u64(self) -> int:
        self.offset += 8
        return struct.unpack_from("<Q", self.data, self.offset - 8)[0]

    def blob(self) -> bytes:
        size = self.u64()
        self.offset += size
        return self.data[self.offset - size : self.offset]

    def skip_array(self, item_size: int) -> None:
        count = self.u64()  # read first: `offset += u64()` would lose u64's own advance
        self.offset += count * item_size


def _symbol_offset(data: bytes, names: tuple[bytes, ...]) -> int | None:
    """File offset of the first dynamic symbol in ``names`` (ELF64 little-endian)."""
    if data[:4] != b"\x7fELF":
        return None
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    entsize, count = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * entsize) for i in range(count)]
    for _, kind, _, _, offset, size, link, *_ in sections:
        if kind != 11:  # SHT_DYNSYM
            continue
        strtab = sections[link][4]
        for i in range(size // 24):
            name, _, _, _, value, _ = struct.unpack_from("<IBBHQQ", data, offset + 24 * i)
            if data[strtab + name : data.index(b"\0", strtab + name)] in names:
                section = next(s for s in sections if s[1] != 8 and s[3] <= value < s[3] + s[5])
                return value - section[3] + section[4]
    return None


def _classify(code: bytes) -> tuple[str, list[str]]:
    """(format, archs) of one CUDA module's code."""
    if code[:4] == b"\x50\xed\x55\xba":  # fatbin: entries of kind 1 (PTX) or 2 (ELF) with arch
        position, archs = struct.unpack_from("<H", code, 6)[0], []
        end = 16 + struct.unpack_from("<Q", code, 8)[0]
        while position < end:
            kind, header, payload, arch = struct.unpack_from("<H2xIQ12xI", code, position)
            archs.append(f"sm_{arch}" if kind == 2 else f"compute_{arch}")
            position += header + payload
        return "fatbin", archs
    if code[:4] == b"\x7fELF" and struct.unpack_from("<H", code, 18)[0] == 190:  # EM_CUDA
        flags = struct.unpack_from("<I", code, 48)[0]
        return "cubin", [f"sm_{(flags >> 8) & 0xFF if code[8] >= 8 else flags & 0xFF}"]
    if code.lstrip()[:2] == b"//" and b".target" in code:
        return "ptx", []
    return "source", []


def device_code(library: str | Path) -> list[tuple[str, list[str]]]:
    """(format, archs) for every CUDA module in an exported library; [] if it has none.

    format is 'fatbin', 'cubin' or 'ptx' (compiled), or 'source' (CUDA C, unusable on a device).
    """
    data = Path(library).read_bytes()
    start = _symbol_offset(data, (b"__tvm_ffi__library_bin", b"__tvm_dev_mblob"))
    if start is None:
        return []
    cursor = _Cursor(data, start + 8)  # <size> <indptr[]> <children[]> then <kind> [<payload>]
    modules = cursor.u64() - 1
    cursor.offset += 8 * (modules + 1)
    cursor.skip_array(8)
    found = []
    for _ in range(modules):
        kind = cursor.blob()
        if kind == b"_lib":
            continue
        payload = cursor.blob()
        if kind != b"cuda":
            continue
        module = _Cursor(payload)  # <fmt> <n> n x (<key> <name> <dtypes> <tags> <extra>) <code>
        module.blob()
        for _ in range(module.u64()):
            module.blob()
            module.blob()
            module.skip_array(4)
            for _ in range(module.u64()):
                module.blob()
            module.skip_array(4)
        found.append(_classify(module.blob()))
    return found


def check_device_code(library: str | Path, arch: str) -> list[tuple[str, list[str]]]:
    """Raise CompileError unless every CUDA module holds compiled code for ``arch``."""
    found = device_code(library)
    if not found or any(fmt == "source" or arch not in archs for fmt, archs in found):
        raise CompileError(
            f"{library}: expected compiled {arch} device code, found {found or 'none'}"
            " (CUDA source would need a compiler on the device)"
        )
    return found


__all__ = ["check_device_code", "device_code", "enable_offline_codegen"]
