"""ONNX's own recurrent conformance cases (LSTM/GRU/RNN node tests) through the MLX runner."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import edgelstm  # noqa: F401  (loads BLAS before mlx)
from edgelstm.converters.onnx_exec.runner import run_onnx

RTOL, ATOL = 1e-5, 1e-5


def _recurrent_cases():
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():  # other ops' case generators warn about overflow
        warnings.simplefilter("ignore")
        cases = collect_testcases(None)
    return [c for c in cases if any(k in c.name for k in ("lstm", "gru", "rnn"))]


CASES = _recurrent_cases()


def test_case_count():
    names = sorted(c.name for c in CASES)
    assert len(names) == 18, names
    assert {"test_lstm_batchwise", "test_gru_batchwise", "test_simple_rnn_batchwise"} <= set(names)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_conformance_case(case):
    graph = case.model.graph
    for inputs, expected in case.data_sets:
        feeds = {vi.name: v for vi, v in zip(graph.input, inputs, strict=True)}
        got = run_onnx(case.model, feeds)
        assert list(got) == [o.name for o in graph.output]
        for out, want in zip(graph.output, expected, strict=True):
            assert got[out.name].shape == want.shape, out.name
            np.testing.assert_allclose(got[out.name], want, rtol=RTOL, atol=ATOL, err_msg=out.name)
