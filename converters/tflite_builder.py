"""A LiteRT (TFLite) flatbuffer builder on the schema module of ``ai-edge-litert``.

No TensorFlow: tensors, buffers, operators and subgraphs are the schema's
object-API ``*T`` classes, packed with ``flatbuffers``. One
:class:`ModelBuilder` owns the buffers and operator codes; each
:class:`Graph` is one subgraph (the first is ``main``; ``WHILE`` loops add a
condition and a body subgraph).
"""

from __future__ import annotations

import numpy as np

from edgelstm.errors import UnsupportedError

INSTALL_HINT = "pip install 'edgelstm[litert]' (or pip install ai-edge-litert)"


def schema():
    """The ``schema_py_generated`` module of ``ai-edge-litert``."""
    try:
        from ai_edge_litert import schema_py_generated as s
    except ImportError:
        raise UnsupportedError(f"TFLite export needs ai-edge-litert; {INSTALL_HINT}") from None
    return s


_TYPES = {"float32": "FLOAT32", "int32": "INT32", "int8": "INT8", "bool": "BOOL"}


class ModelBuilder:
    """Buffers, operator codes and subgraphs of one model."""

    def __init__(self):
        self.s = schema()
        self.buffers = [self.s.BufferT()]  # buffer 0: the empty one non-constant tensors use
        self.codes: list[int] = []
        self.graphs: list[Graph] = []

    def graph(self, name: str) -> Graph:
        """A new subgraph; its index in the model is ``len(graphs)`` before the call."""
        g = Graph(self, name, len(self.graphs))
        self.graphs.append(g)
        return g

    def opcode(self, code: str) -> int:
        builtin = getattr(self.s.BuiltinOperator, code)
        if builtin not in self.codes:
            self.codes.append(builtin)
        return self.codes.index(builtin)

    def finish(self, description: str) -> bytes:
        """The packed flatbuffer (file identifier ``TFL3``)."""
        import flatbuffers

        s = self.s
        m = s.ModelT()
        m.version, m.description = 3, description
        m.subgraphs = [g.subgraph_t() for g in self.graphs]
        m.buffers = self.buffers
        m.operatorCodes = []
        for builtin in self.codes:
            c = s.OperatorCodeT()
            # codes past 127 live in builtinCode; the deprecated byte says "look there"
            c.builtinCode, c.deprecatedBuiltinCode, c.version = builtin, min(builtin, 127), 1
            m.operatorCodes.append(c)
        fb = flatbuffers.Builder(1024)
        fb.Finish(m.Pack(fb), file_identifier=b"TFL3")
        return bytes(fb.Output())


class Graph:
    """Tensors and operators of one subgraph; tensor ids are list indices."""

    def __init__(self, model: ModelBuilder, name: str, index: int):
        self.m, self.s, self.name, self.index = model, model.s, name, index
        self.tensors, self.ops, self.dtypes = [], [], []
        self.inputs: list[int] = []
        self.outputs: list[int] = []
        self._names: set[str] = set()

    def tensor(self, name: str, shape, data: np.ndarray | None = None, dtype: str = "float32",
               signature=None, variable: bool = False, quant: dict | None = None) -> int:
        """A tensor; ``signature`` marks dynamic dims ``-1``; ``quant`` holds
        ``scale``/``zero_point``/``axis`` (per-channel along ``axis``)."""
        s = self.s
        t = s.TensorT()
        base, k = name, 1
        while name in self._names:  # unique names keep the interpreter's details readable
            name, k = f"{base}_{k}", k + 1
        self._names.add(name)
        t.name, t.shape = name, [int(d) for d in shape]
        t.type = getattr(s.TensorType, _TYPES[dtype])
        if signature is not None:
            t.shapeSignature = [int(d) for d in signature]
        t.isVariable = variable
        t.buffer = 0
        if quant is not None:
            q = s.QuantizationParametersT()
            q.scale = [float(v) for v in np.ravel(quant["scale"])]
            q.zeroPoint = [int(v) for v in np.ravel(quant["zero_point"])]
            q.quantizedDimension = int(quant.get("axis", 0))
            t.quantization = q
        if data is not None:
            b = s.BufferT()
            b.data = np.frombuffer(np.ascontiguousarray(data, dtype).tobytes(), np.uint8)
            self.m.buffers.append(b)
            t.buffer = len(self.m.buffers) - 1
        self.tensors.append(t)
        self.dtypes.append(dtype)
        return len(self.tensors) - 1

    def like(self, name: str, ref: int, last: int | None = None, dtype: str | None = None) -> int:
        """A non-constant tensor shaped as ``ref`` (last dim replaced by ``last``)."""
        t = self.tensors[ref]
        shape, sig = list(t.shape), None if t.shapeSignature is None else list(t.shapeSignature)
        if last is not None:
            shape[-1] = last
            if sig is not None:
                sig[-1] = last
        return self.tensor(name, shape, dtype=dtype or self.dtypes[ref], signature=sig)

    def const(self, name: str, value, dtype: str = "float32") -> int:
        arr = np.asarray(value, dtype)
        return self.tensor(name, arr.shape, arr, dtype)

    def op(self, code: str, inputs, outputs, options_type: str | None = None, options=None,
           **fields):
        """Append an operator; ``fields`` set attributes of a fresh ``<options_type>T``."""
        o = self.s.OperatorT()
        o.opcodeIndex = self.m.opcode(code)
        o.inputs, o.outputs = [int(i) for i in inputs], [int(i) for i in outputs]
        if options_type:
            if options is None:
                options = getattr(self.s, options_type + "T")()
                for k, v in fields.items():
                    setattr(options, k, v)
            o.builtinOptionsType = getattr(self.s.BuiltinOptions, options_type)
            o.builtinOptions = options
        self.ops.append(o)
        return outputs[0] if len(outputs) == 1 else outputs

    def subgraph_t(self):
        sg = self.s.SubGraphT()
        sg.tensors, sg.operators, sg.name = self.tensors, self.ops, self.name
        sg.inputs, sg.outputs = list(self.inputs), list(self.outputs)
        return sg
