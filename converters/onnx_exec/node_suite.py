"""Run ONNX's own node test cases (``onnx.backend.test``) through the MLX runner.

Each collected case whose op types are all claimed by the registry is run on
its numpy inputs and classified:

* ``pass``: every output has the expected dtype, shape and values (the case's
  rtol/atol for floating types, exact otherwise, as ONNX's backend runner);
* ``refused``: the runner raised an :class:`edgelstm.errors.EdgeLSTMError`
  (an op, attribute value or type it does not implement, named);
* ``wrong``: it ran but an output differs;
* ``crash``: any other exception.

>>> results = run_suite()                 # [CaseResult, ...]
>>> print(markdown_table(results))        # per-op counts, for docs/onnx-ops.md
"""

from __future__ import annotations

import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from edgelstm.converters.onnx_exec import runner as _runner  # noqa: F401  (registers the ops)
from edgelstm.converters.onnx_exec.ops import _BF16, REGISTRY
from edgelstm.errors import EdgeLSTMError

__all__ = ["CaseResult", "claimed_ops", "collect_cases", "markdown_table", "run_case", "run_suite"]

_DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass
class CaseResult:
    """Outcome of one node test case: ``status`` in pass/refused/wrong/crash."""

    name: str
    op: str
    status: str
    detail: str = ""


def claimed_ops() -> list[str]:
    """Sorted default-domain op names the registry implements."""
    return sorted(op for dom, op in REGISTRY if dom == "")


def _graph_ops(graph, out: list) -> list:
    for node in graph.node:
        dom = "" if node.domain in _DEFAULT_DOMAINS else node.domain
        out.append((dom, node.op_type))
        for attr in node.attribute:
            if attr.g.node:
                _graph_ops(attr.g, out)
            for g in attr.graphs:
                _graph_ops(g, out)
    return out


# test names that do not start with their op's name
_ALIASES = {"greaterequal": "GreaterOrEqual", "lessequal": "LessOrEqual", "simplernn": "RNN"}


def _primary_op(case, ops: list) -> str:
    """The op a case tests: the longest op name its test name starts with."""
    import onnx.defs

    key = case.name.removeprefix("test_").replace("_", "").lower()
    for prefix, op in _ALIASES.items():
        if key.startswith(prefix):
            return op
    graph_ops = {op for _, op in ops} - {"Constant"}
    schemas = {s.name for s in onnx.defs.get_all_schemas()}
    # an op of the graph first, then any op (the function of an expanded case)
    for names in (graph_ops, schemas):
        hits = [op for op in names if key.startswith(op.lower())]
        if hits and hits != ["Constant"]:
            return max(hits, key=len)
    top = [n.op_type for n in case.model.graph.node if n.op_type != "Constant"]
    return top[0] if top else ops[0][1]


def collect_cases() -> list[tuple[object, str]]:
    """(case, primary op) for every node case whose ops the registry all claims."""
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():  # some case generators warn about overflow
        warnings.simplefilter("ignore")
        cases = collect_testcases(None)
    picked = []
    for case in cases:
        ops = _graph_ops(case.model.graph, [])
        if ops and all(o in REGISTRY for o in ops):
            op = _primary_op(case, ops)
            if ("", op) in REGISTRY:  # not the expansion of an op we do not claim
                picked.append((case, op))
    return picked


def _compare(got: np.ndarray, want: np.ndarray, rtol: float, atol: float) -> str:
    """'' when ``got`` matches ``want`` as ONNX's backend test runner checks, else why not."""
    if got.dtype != want.dtype:
        return f"dtype {got.dtype} != {want.dtype}"
    if got.shape != want.shape:
        return f"shape {got.shape} != {want.shape}"
    if want.dtype == _BF16:
        got, want = got.astype(np.float32), want.astype(np.float32)
    try:
        if want.dtype.kind in "fc":
            np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
        else:
            np.testing.assert_array_equal(got, want)
    except AssertionError as e:
        return " ".join(str(e).split())[:300]
    return ""


def _array(v) -> np.ndarray:
    # some cases store their data as TensorProto (exotic types among them)
    return numpy_helper.to_array(v) if isinstance(v, onnx.TensorProto) else np.asarray(v)


def run_case(case, op: str, compile_after: int | None = 1) -> CaseResult:
    """Run one case (all its data sets) and classify it.

    ``compile_after`` is passed to the runner: ``0`` runs every data set through
    the ``mx.compile``d plan, ``None`` op by op.
    """
    from edgelstm.converters.onnx_exec.runner import OnnxMLXRunner

    graph = case.model.graph
    try:
        runner = OnnxMLXRunner(case.model, compile_after=compile_after)
        for inputs, expected in case.data_sets:
            feeds = {vi.name: _array(v) for vi, v in zip(graph.input, inputs, strict=False)}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                got = runner.run(feeds)
            for out, want in zip(graph.output, expected, strict=True):
                why = _compare(got[out.name], _array(want), case.rtol, case.atol)
                if why:
                    return CaseResult(case.name, op, "wrong", f"{out.name}: {why}")
    except EdgeLSTMError as e:
        return CaseResult(case.name, op, "refused", str(e))
    except Exception as e:  # anything else is a bug in the runner
        return CaseResult(case.name, op, "crash", f"{type(e).__name__}: {e}"[:300])
    return CaseResult(case.name, op, "pass")


def run_suite() -> list[CaseResult]:
    """Every claimed node case, classified."""
    return [run_case(case, op) for case, op in collect_cases()]


def markdown_table(results: list[CaseResult]) -> str:
    """Markdown table: one row per claimed op with its node-case counts."""
    per_op: dict[str, Counter] = defaultdict(Counter)
    for r in results:
        per_op[r.op][r.status] += 1
    total = Counter(r.status for r in results)
    ops = claimed_ops()
    lines = [
        f"{len(ops)} default-domain ops; ONNX node test cases: {total['pass']} pass, "
        f"{total['refused']} refused with a clear error, {total['wrong']} wrong, "
        f"{total['crash']} crash.",
        "",
        "| op | passed | refused |",
        "| --- | ---: | ---: |",
    ]
    for op in ops:
        c = per_op.get(op, Counter())
        lines.append(f"| {op} | {c['pass']} | {c['refused']} |")
    others = sorted(set(per_op) - set(ops))
    for op in others:  # only reachable if a case's primary op is not itself claimed
        c = per_op[op]
        lines.append(f"| {op} | {c['pass']} | {c['refused']} |")
    return "\n".join(lines)
