"""Target presets: every preset compiles and exports; names, tags and dicts resolve."""

from __future__ import annotations

import pytest

import bridge
from bridge.cli import main
from bridge.cuda import device_code
from bridge.errors import DeviceError, TargetError
from bridge.targets import host_arch, presets, resolve
from tests.conftest import KERAS3, needs_tools

MODEL = KERAS3 / "models" / "seq_cnn.keras"
ELF_MACHINE = {"x86_64": 62, "aarch64": 183}
PRESETS = sorted(presets())
REQUIRED = {
    "x86-64",
    "x86-64-v3",
    "x86-64-v4",
    "native",
    "rpi4",
    "rpi5",
    "graviton3",
    "aarch64",
    "jetson-orin-nano",
    "jetson-agx-orin",
    "cuda-sm75",
    "cuda-sm80",
    "cuda-sm86",
    "cuda-sm89",
    "cuda-sm90",
}


def test_required_presets_exist():
    assert set(PRESETS) >= REQUIRED


@pytest.mark.parametrize("name", PRESETS)
def test_preset_compiles_and_exports(name, tmp_path):
    spec = resolve(name)
    needs_tools(spec)
    model = bridge.build(MODEL, target=name)
    library = model.export(tmp_path / "model.so")
    header = library.read_bytes()[:20]
    assert header[:4] == b"\x7fELF"
    assert int.from_bytes(header[18:20], "little") == ELF_MACHINE[spec.arch]
    assert model.metadata["target_name"] == name and model.metadata["arch"] == spec.arch
    if spec.device == "cuda":
        arch = spec.target["arch"]
        assert device_code(library) == [("fatbin", [arch])], "must hold compiled device code"
    else:
        assert device_code(library) == []
    assert model.runnable == (spec.arch == host_arch() and spec.device == "cpu")


def test_cross_compiled_model_says_where_to_run(tmp_path):
    needs_tools(resolve("rpi4"))
    model = bridge.build(MODEL, target="rpi4")
    with pytest.raises(DeviceError, match="aarch64"):
        model(None)
    loaded = bridge.load(model.export(tmp_path / "model.so"))
    with pytest.raises(DeviceError, match="aarch64"):
        loaded(None)


@pytest.mark.parametrize(
    "target, arch, device",
    [
        ("llvm", host_arch(), "cpu"),
        ("cuda", "x86_64", "cuda"),
        ("arm/rasp4b64", "aarch64", "cpu"),
        ({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a55"}, "aarch64", "cpu"),
        ('{"kind": "llvm", "mcpu": "x86-64-v3"}', "x86_64", "cpu"),
        ("nvidia/jetson-orin-nano", "aarch64", "cuda"),
    ],
)
def test_target_forms(target, arch, device):
    spec = resolve(target)
    assert (spec.arch, spec.device) == (arch, device)
    spec.tvm_target()


def test_unknown_target_suggests_closest():
    with pytest.raises(TargetError, match="Did you mean 'rpi4'"):
        resolve("rpi44")


def test_targets_cli_lists_presets(capsys):
    assert main(["targets"]) == 0
    text = capsys.readouterr().out
    for name in REQUIRED:
        assert name in text


@pytest.mark.parametrize(
    "target, close",
    [
        ({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a555"}, "cortex-a55"),
        ('{"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "skylakee"}', "skylake"),
        ('{"kind": "llvm", "mcpu": "znver44"}', "znver4"),
    ],
)
def test_unknown_mcpu_is_refused_quietly(target, close, capfd):
    """LLVM would log an error per kernel and build for a generic CPU: refuse it instead,
    naming the closest known CPUs, before TVM's LLVM writes anything."""
    with pytest.raises(TargetError, match=rf"does not know the CPU .*'{close}'.*Known CPUs"):
        resolve(target).tvm_target()
    assert capfd.readouterr().err == ""


def test_custom_mcpu_in_a_spec_is_checked():
    spec = resolve("aarch64")
    bad = type(spec)(name="mine", target=spec.target | {"mcpu": "cortex-x99"}, arch="aarch64")
    with pytest.raises(TargetError, match=r"'mine'.*cortex-x99"):
        bad.tvm_target()


def test_native_reports_its_cpu_features():
    from bridge.targets import cpu_features

    assert resolve("llvm").is_native and not resolve("x86-64").is_native
    assert "avx2" in cpu_features(resolve("x86-64-v3"))
    assert "avx2" not in cpu_features(resolve("x86-64"))
    assert "neon" in cpu_features(resolve("rpi4"))


def test_native_takes_the_cpus_own_simd_extensions(monkeypatch):
    """A VM may name an older CPU than it runs on (an AMX Xeon reported as "rocketlake", whose
    LLVM model has no AMX) or mask an extension: ``native`` follows /proc/cpuinfo."""
    from bridge import targets

    amx = {"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni"}
    amx |= {"amx_tile", "amx_int8"}
    monkeypatch.setattr(targets, "cpuinfo_flags", lambda: amx)
    assert targets.host_mattr("rocketlake") == ["+amx-tile", "+amx-int8"]
    monkeypatch.setattr(targets, "cpuinfo_flags", lambda: {"avx2", "fma"})  # AVX-512 masked
    assert "-avx512f" in targets.host_mattr("skylake-avx512")
    assert targets.host_mattr("haswell") == []
    monkeypatch.setattr(targets, "cpuinfo_flags", lambda: None)  # not x86 Linux
    assert targets.host_mattr("rocketlake") == []


@pytest.mark.skipif(host_arch() != "x86_64", reason="reads /proc/cpuinfo on x86")
def test_native_target_has_what_the_host_has():
    from bridge.schedules.int8_amx import has_amx
    from bridge.targets import NOTABLE_FEATURES, X86_HOST_FEATURES, cpu_features, cpuinfo_flags

    flags = cpuinfo_flags() or set()
    has = {X86_HOST_FEATURES[f] for f in flags if f in X86_HOST_FEATURES}
    lacks = set(X86_HOST_FEATURES.values()) - has
    features = set(cpu_features(resolve("native")))
    assert has & set(NOTABLE_FEATURES) <= features
    assert not lacks & features
    assert has_amx(resolve("native").tvm_target()) == ({"amx_tile", "amx_int8"} <= flags)
