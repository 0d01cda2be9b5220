"""Memory and size: weights kept out of the library are transformed at build time (main runs
no weight transform and the same kernels as with bound weights), a loaded model holds each
weight once, ``optimize_for`` trades Winograd's larger weights for size, sizes are reported."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.runtime.vm import VirtualMachine

import bridge
from bridge.compile import compile_model
from bridge.export import BuiltModel
from bridge.runtime import metadata_path, params_path
from bridge.schedules import winograd
from bridge.schedules.prepack import WINOGRAD_BUDGET, _winograd_layers
from bridge.signature import TensorInfo
from bridge.targets import resolve
from tests.conftest import KERAS3, reference

TARGET = tvm.target.Target("llvm")
RNG = np.random.default_rng(7)


def conv_net(size: int = 32, channels: int = 16, dense: int | None = None):
    """x -> 3x3 conv (Winograd-eligible) -> relu -> 1x1 conv (packed) [-> dense]: a Relax
    module taking its weights after the input, and the weights."""
    x = relax.Var("x", relax.TensorType([1, size, size, channels], "float32"))
    shapes = {"c3/kernel": (3, 3, channels, 32), "c1/kernel": (1, 1, 32, 64)}
    if dense:
        shapes["fc/kernel"] = (size * size * 64, dense)
    weights = {k: relax.Var(k, relax.TensorType(list(s), "float32")) for k, s in shapes.items()}
    builder = relax.BlockBuilder()
    with builder.function("main", [x, *weights.values()], attrs={"num_input": 1}):
        with builder.dataflow():
            y = builder.emit(
                relax.op.nn.conv2d(
                    x,
                    weights["c3/kernel"],
                    padding=[1, 1, 1, 1],
                    data_layout="NHWC",
                    kernel_layout="HWIO",
                )
            )
            y = builder.emit(relax.op.nn.relu(y))
            y = builder.emit(
                relax.op.nn.conv2d(
                    y, weights["c1/kernel"], data_layout="NHWC", kernel_layout="HWIO"
                )
            )
            if dense:
                y = builder.emit(relax.op.reshape(y, [1, size * size * 64]))
                y = builder.emit(relax.op.matmul(y, weights["fc/kernel"]))
            out = builder.emit_output(y)
        builder.emit_func_output(out)
    params = {k: RNG.standard_normal(s).astype("float32") * 0.1 for k, s in shapes.items()}
    return builder.get(), params


def kernel_calls(executable) -> list[list[str]]:
    """``main``'s kernel calls as ``[kernel, input registers...]`` (the VM's text form)."""
    main = executable.as_text().split("\n\n")[0]
    calls = []
    for line in main.splitlines():
        match = re.match(r"\s*call\s+(\S+)\s+in:\s*(.*?)\s*dst:", line)
        if match and not match.group(1).startswith("vm.builtin"):
            calls.append([match.group(1), *re.findall(r"%\d+", match.group(2))])
    return calls


def run(compiled, x: np.ndarray) -> np.ndarray:
    vm = VirtualMachine(compiled.executable, tvm.cpu())
    args = [tvm.runtime.tensor(x)] + [tvm.runtime.tensor(p) for p in compiled.params]
    return vm["main"](*args).numpy()


def built(compiled, mod, name: str = "net") -> BuiltModel:
    x = mod["main"].params[0]
    out = mod["main"].ret_ty
    metadata = {
        "arch": "x86_64",
        "device": "cpu",
        "target": "llvm",
        "model": name,
        "params": compiled.param_names,
    }
    return BuiltModel(
        compiled.executable,
        [TensorInfo("x", tuple(int(d) for d in x.ty.shape.values), "float32")],
        [TensorInfo("y", tuple(int(d) for d in out.shape.values), "float32")],
        metadata,
        spec=resolve("llvm"),
        params=compiled.params,
    )


@pytest.fixture(scope="module")
def both():
    mod, params = conv_net()
    bound = compile_model(mod, params, TARGET, separate_params=False, optimize_for="speed")
    separate = compile_model(mod, params, TARGET, separate_params=True, optimize_for="speed")
    return mod, params, bound, separate


def test_separate_params_run_the_bound_builds_kernels_and_no_weight_transform(both):
    _, params, bound, separate = both
    calls = kernel_calls(separate.executable)
    assert [c[0] for c in calls] == [c[0] for c in kernel_calls(bound.executable)]
    assert {"winograd_product", "conv2d_nhwc_packed"} <= {c[0] for c in calls}
    # the weights arrive transformed (Winograd's 6x6 taps, packed by output block) ...
    shapes = [p.shape for p in separate.params]
    assert shapes[0][0] == 36 and len(shapes[1]) == 5, shapes
    assert separate.param_names == [
        "c3/kernel (winograd F(4x4, 3x3))",
        "c1/kernel (packed)",
    ]
    # ... so no kernel of main reads weights alone (a per-call weight transform)
    weights = {f"%{i}" for i in range(1, 1 + len(separate.params))}
    transforms = [c for c in calls if set(c[1:-1]) and set(c[1:-1]) <= weights]
    assert not transforms, transforms
    assert bound.params == [] and sum(p.nbytes for p in separate.params) > sum(
        p.nbytes for p in params.values()
    )


def test_separate_params_outputs_equal_bound(both):
    _, _, bound, separate = both
    x = RNG.standard_normal((1, 32, 32, 16)).astype("float32")
    np.testing.assert_array_equal(run(separate, x), run(bound, x))


def test_arena_is_the_planned_storage(both):
    _, _, bound, separate = both
    # winograd V (36x64x16) and M (36x64x32) and the outputs, reused by static planning
    assert separate.arena_bytes == bound.arena_bytes
    assert 32 * 32 * 64 * 4 <= separate.arena_bytes < 4 * 36 * 64 * 48 * 4 + 32 * 32 * 96 * 4
    assert bound.library_weight_bytes >= sum(p.nbytes for p in separate.params)
    assert separate.library_weight_bytes < 1024


def test_optimize_for_size_gives_a_smaller_library(tmp_path):
    mod, params = conv_net()
    sizes = {}
    for goal in ("size", "speed"):
        compiled = compile_model(mod, params, TARGET, separate_params=False, optimize_for=goal)
        library = built(compiled, mod).export(tmp_path / goal / "model.so")
        sizes[goal] = library.stat().st_size
        calls = {c[0] for c in kernel_calls(compiled.executable)}
        assert ("winograd_product" in calls) == (goal == "speed"), calls
    weights = params["c3/kernel"].nbytes
    assert sizes["speed"] - sizes["size"] >= 3 * weights * 0.9, sizes  # F(4, 3): 4x weights


def test_balanced_spends_its_budget_where_winograd_saves_most():
    """A 3x3 conv on a large map (few weights, much work) and one on a small map (many
    weights, little work): "balanced" transforms the first only."""
    x = relax.Var("x", relax.TensorType([1, 64, 64, 16], "float32"))
    small = relax.const(RNG.standard_normal((3, 3, 16, 16)).astype("float32"))
    big = relax.const(RNG.standard_normal((3, 3, 16, 256)).astype("float32"))
    builder = relax.BlockBuilder()
    with builder.function("main", [x]):
        with builder.dataflow():
            y = builder.emit(
                relax.op.nn.conv2d(
                    x, small, padding=[1] * 4, data_layout="NHWC", kernel_layout="HWIO"
                )
            )
            y = builder.emit(relax.op.nn.max_pool2d(y, 8, 8, layout="NHWC"))
            y = builder.emit(
                relax.op.nn.conv2d(
                    y, big, padding=[1] * 4, data_layout="NHWC", kernel_layout="HWIO"
                )
            )
            out = builder.emit_output(y)
        builder.emit_func_output(out)
    mod = builder.get()
    chosen = _winograd_layers(mod, "balanced")
    assert len(chosen) == 1 and next(iter(chosen)).same_as(small)
    assert next(iter(chosen.values())) is winograd.F4
    assert (
        WINOGRAD_BUDGET * (small.value.numpy().nbytes + big.value.numpy().nbytes)
        >= 27 * 16 * 16 * 4
    )
    assert _winograd_layers(mod, "speed") is None and _winograd_layers(mod, "size") == {}


def test_balanced_takes_the_smaller_tile_where_the_larger_does_not_fit():
    """A 3x3 conv on a 14x14 map whose F(4, 3) weights (4x) exceed the budget and F(2, 3)'s
    (1.8x) do not: "balanced" transforms it with F(2, 3) (it took none before: ResNet50's
    14x14 stage, 0.93x at batch 1, 0.92x at batch 8)."""
    x = relax.Var("x", relax.TensorType([1, 14, 14, 64], "float32"))
    conv3x3 = relax.const(RNG.standard_normal((3, 3, 64, 64)).astype("float32"))
    conv1x1 = relax.const(RNG.standard_normal((1, 1, 64, 4096)).astype("float32"))
    builder = relax.BlockBuilder()
    with builder.function("main", [x]):
        with builder.dataflow():
            y = builder.emit(
                relax.op.nn.conv2d(
                    x, conv3x3, padding=[1] * 4, data_layout="NHWC", kernel_layout="HWIO"
                )
            )
            y = builder.emit(
                relax.op.nn.conv2d(y, conv1x1, data_layout="NHWC", kernel_layout="HWIO")
            )
            out = builder.emit_output(y)
        builder.emit_func_output(out)
    mod = builder.get()
    budget = WINOGRAD_BUDGET * (conv3x3.value.numpy().nbytes + conv1x1.value.numpy().nbytes)
    assert 7 * 64 * 64 * 4 <= budget < 27 * 64 * 64 * 4  # F(2, 3) fits, F(4, 3) does not
    chosen = _winograd_layers(mod, "balanced")
    assert len(chosen) == 1 and next(iter(chosen)).same_as(conv3x3)
    assert next(iter(chosen.values())) is winograd.F2


LOAD_AND_RUN = textwrap.dedent(
    """
    import sys
    import numpy as np
    import psutil
    import tvm.runtime.vm  # the runtime's own footprint is not the model's
    import bridge

    before = psutil.Process().memory_info().rss
    model = bridge.load(sys.argv[1])
    model(np.ones(model.inputs[0].shape, "float32"))
    # VmHWM: this process's peak (ru_maxrss would start at the forking parent's)
    status = open("/proc/self/status").read()
    peak = int(status.split("VmHWM:")[1].split()[0]) * 1024
    print(peak - before)
    """
)


def test_loaded_model_holds_its_weights_once(tmp_path):
    """A fresh process loading and running a model with 32 MiB of weights grows by about
    that much, not by two copies (numpy arrays and TVM tensors were both kept)."""
    mod, params = conv_net(size=16, dense=512)  # fc: 16 * 16 * 64 x 512 floats = 32 MiB
    compiled = compile_model(mod, params, TARGET, separate_params=True, optimize_for="size")
    library = built(compiled, mod).export(tmp_path / "model.so")
    weights = params_path(library).stat().st_size
    assert weights > 32 << 20
    result = subprocess.run(
        [sys.executable, "-c", LOAD_AND_RUN, str(library)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    grown = int(result.stdout.split()[-1])
    assert grown < 1.35 * weights, f"loading grew RSS by {grown / weights:.2f}x the weights"
    loaded = bridge.load(library)
    assert all(p is t for p, t in zip(loaded._params, loaded._param_tensors))


def test_sizes_are_in_the_metadata(tmp_path):
    models = KERAS3 / "models"
    inputs, outputs = reference(models / "seq_cnn.npz")
    model = bridge.build(models / "seq_cnn.keras", batch_size=2)
    library = model.export(tmp_path / "model.so")
    meta = json.loads(metadata_path(library).read_text())
    assert meta["library_bytes"] == library.stat().st_size
    assert meta["params_bytes"] == sum(p.numpy().nbytes for p in model._params)
    assert 0 < meta["params_bytes"] <= params_path(library).stat().st_size
    assert meta["weights_bytes"] > 0 and meta["arena_bytes"] > 0
    assert meta["optimize_for"] == "balanced"
    assert any(name.startswith("conv1/kernel") for name in meta["params"]), meta["params"]
    np.testing.assert_allclose(bridge.load(library)(*inputs), outputs[0], rtol=1e-4, atol=1e-4)
