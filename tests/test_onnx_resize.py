"""``Resize`` on the MLX executor beyond ONNX's node cases: older opsets, dtypes, refusals.

Oracles: ``onnx.reference`` (the definition) and ONNX Runtime; tolerances are
float32 rounding of a weighted sum of at most a few taps.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import edgelstm  # noqa: F401  (loads BLAS before mlx)
from edgelstm.converters.onnx_exec.runner import OnnxMLXRunner, run_onnx
from edgelstm.errors import UnsupportedError


def _model(opset, x_dtype, shape, scales=None, sizes=None, roi=None, **attrs):
    inits = []
    ins = ["x", "", "", ""]
    if roi is not None:
        inits.append(numpy_helper.from_array(np.asarray(roi, np.float32), "roi"))
        ins[1] = "roi"
    elif opset < 13:
        inits.append(numpy_helper.from_array(np.zeros(0, np.float32), "roi"))
        ins[1] = "roi"
    if scales is not None:
        inits.append(numpy_helper.from_array(np.asarray(scales, np.float32), "scales"))
        ins[2] = "scales"
    elif opset < 13:
        inits.append(numpy_helper.from_array(np.zeros(0, np.float32), "scales"))
        ins[2] = "scales"
    if sizes is not None:
        inits.append(numpy_helper.from_array(np.asarray(sizes, np.int64), "sizes"))
        ins[3] = "sizes"
    while ins[-1] == "":
        ins.pop()
    node = helper.make_node("Resize", ins, ["y"], **attrs)
    t = helper.np_dtype_to_tensor_dtype(np.dtype(x_dtype))
    g = helper.make_graph([node], "r", [helper.make_tensor_value_info("x", t, shape)],
                          [helper.make_tensor_value_info("y", t, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def _ort(model, feeds):
    import onnxruntime as ort

    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, feeds)[0]


CASES = [
    (11, dict(mode="linear"), dict(scales=[1, 1, 0.6, 1.7])),
    (11, dict(mode="cubic", coordinate_transformation_mode="align_corners"),
     dict(sizes=[1, 2, 7, 3])),
    (13, dict(mode="nearest", coordinate_transformation_mode="asymmetric",
              nearest_mode="floor"), dict(scales=[1, 1, 2.5, 0.5])),
    (13, dict(mode="linear", coordinate_transformation_mode="pytorch_half_pixel"),
     dict(sizes=[1, 2, 1, 9])),
    (13, dict(mode="linear", coordinate_transformation_mode="tf_crop_and_resize",
              extrapolation_value=-2.0), dict(sizes=[1, 2, 4, 4], roi=[0, 0, -0.2, 0.1,
                                                                      1, 1, 0.9, 1.3])),
    (18, dict(mode="cubic", antialias=1, axes=[3]), dict(scales=[0.4])),
    (18, dict(mode="linear", antialias=1, axes=[2, 3]), dict(sizes=[3, 2])),
    (19, dict(mode="linear", coordinate_transformation_mode="half_pixel_symmetric"),
     dict(scales=[1, 1, 1.3, 0.7])),
]


@pytest.mark.parametrize(("opset", "attrs", "io"), CASES)
def test_float_modes_match_the_reference_and_ort(opset, attrs, io):
    x = np.random.default_rng(opset).standard_normal((1, 2, 5, 6)).astype(np.float32)
    m = _model(opset, np.float32, x.shape, **io, **attrs)
    got = run_onnx(m, {"x": x})["y"]
    want = ReferenceEvaluator(m).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    if not attrs.get("antialias"):  # ORT's antialias filter support differs at the edges
        np.testing.assert_allclose(got, _ort(m, {"x": x}), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int32, np.float16])
@pytest.mark.parametrize("nearest_mode", ["round_prefer_floor", "round_prefer_ceil", "ceil"])
def test_nearest_is_exact_in_any_dtype(dtype, nearest_mode):
    x = (np.arange(2 * 3 * 7).reshape(1, 2, 3, 7) % 100).astype(dtype)
    m = _model(13, dtype, x.shape, scales=[1, 1, 1.7, 0.6], mode="nearest",
               nearest_mode=nearest_mode)
    got = run_onnx(m, {"x": x})["y"]
    want = ReferenceEvaluator(m).run(None, {"x": x})[0]
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got, _ort(m, {"x": x}))


def test_float16_linear_runs_in_float32_and_casts_back():
    x = np.random.default_rng(0).standard_normal((1, 1, 4, 4)).astype(np.float16)
    m = _model(13, np.float16, x.shape, scales=[1, 1, 2, 2], mode="linear")
    got = run_onnx(m, {"x": x})["y"]
    want = ReferenceEvaluator(m).run(None, {"x": x})[0]
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), atol=2e-3)


def test_compiled_runs_equal_the_first_call():
    x = np.random.default_rng(1).standard_normal((1, 2, 5, 6)).astype(np.float32)
    m = _model(19, np.float32, x.shape, scales=[1, 1, 1.5, 0.5], mode="cubic")
    r = OnnxMLXRunner(m)
    first = r.run({"x": x})["y"]
    for _ in range(3):
        np.testing.assert_array_equal(r.run({"x": x})["y"], first)


@pytest.mark.parametrize(("opset", "dtype", "attrs", "match"), [
    (10, np.float32, dict(mode="linear"), "opset < 11"),
    (13, np.float32, dict(mode="nearest", antialias=1), "antialias"),
    (13, np.int8, dict(mode="linear"), "integer rounding"),
    (13, np.float32, dict(mode="area"), "'mode' = 'area'"),
    (13, np.float32, dict(mode="nearest", nearest_mode="round_half_even"), "nearest_mode"),
])
def test_inexact_combinations_are_refused_by_name(opset, dtype, attrs, match):
    x = np.ones((1, 1, 2, 2), dtype)
    if opset == 10:
        node = helper.make_node("Resize", ["x", "scales"], ["y"], **attrs)
        t = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        g = helper.make_graph(
            [node], "r", [helper.make_tensor_value_info("x", t, x.shape)],
            [helper.make_tensor_value_info("y", t, None)],
            [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 10)])
    else:
        m = _model(opset, dtype, x.shape, scales=[1, 1, 2, 2], **attrs)
    with pytest.raises(UnsupportedError, match=match):
        run_onnx(m, {"x": x})


def test_resize_from_runtime_sizes_falls_back_to_op_by_op():
    """``sizes`` fed as a graph input is read on the host: the node runs eagerly."""
    x = np.random.default_rng(2).standard_normal((1, 1, 3, 4)).astype(np.float32)
    node = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="linear")
    g = helper.make_graph(
        [node], "r",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape),
         helper.make_tensor_value_info("sizes", TensorProto.INT64, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)])
    r = OnnxMLXRunner(m)
    for sizes in ([1, 1, 5, 7], [1, 1, 5, 7], [1, 1, 2, 9], [1, 1, 5, 7]):
        feeds = {"x": x, "sizes": np.array(sizes, np.int64)}
        got = r.run(feeds)["y"]
        want = ReferenceEvaluator(m).run(None, feeds)[0]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert r._compiled.eager_nodes == {0}  # the traced attempt found the host read
