"""The model as an ONNX graph, built operator by operator (``pip install exactformer[onnx]``).

Written with ``onnx.helper`` rather than through ``torch.onnx``: the architecture is a
handful of operators (MatMul, Add, Mul, Relu, Where, ReduceMax, Softmax …), the graph of a
2001-block model is built in well under a second, and every operator is the one the numpy
model applies, in the same order (docs/design.md §1), so runtimes agree with it to
rounding. Inputs ``X`` ``(batch, n, d)`` float64 and ``key_padding_mask`` ``(batch, n)``
bool (True = padding, as in PyTorch); output ``Y`` ``(batch, n, d)``; batch and n are
dynamic. Hardmax layers may carry a relative tie tolerance (docs/export.md): keys whose
score is within ``tol · max|score|`` of the row's top join the argmax set.
:func:`exactformer.export.export` checks the graph with onnxruntime before writing it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .model import Transformer

OPSET = 18
_DOUBLE = 11  # onnx.TensorProto.DOUBLE
_BOOL = 9


class _Graph:
    """Nodes and initializers under construction, with unique names."""

    def __init__(self):
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes, self.inits, self.count = [], [], 0

    def const(self, name: str, value) -> str:
        arr = np.asarray(value)
        arr = arr.astype(np.int64 if arr.dtype.kind in "iu" else np.float64)
        self.inits.append(self.numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def op(self, op_type: str, *inputs: str, **attrs) -> str:
        self.count += 1
        out = f"{op_type.lower()}_{self.count}"
        self.nodes.append(self.helper.make_node(op_type, list(inputs), [out], **attrs))
        return out


def build(model: Transformer, tie_tols: dict[int, float] | None = None,
          every_state: bool = False, argmax_sets: bool = False):
    """The ``onnx.ModelProto`` of ``model`` (float64 weights).

    ``tie_tols``: block → relative tie tolerance of its hardmax layer (0 when absent).
    ``every_state`` adds the residual state after every block as outputs ``resid_post_{l}``
    (used to name the first block where a runtime departs from numpy); ``argmax_sets``
    adds each hardmax layer's argmax sets ``(B, n, n)`` bool as outputs ``argmax_{l}``
    (checked by the export, then removed with :func:`drop_outputs`).
    """
    from onnx import helper

    model = model.as_float() if model.exact else model
    tie_tols = tie_tols or {}
    g = _Graph()
    axis2 = g.const("axis_2", [2])
    one, zero, ninf = g.const("one", 1.0), g.const("zero", 0.0), g.const("minus_inf", -np.inf)
    pad = g.op("Unsqueeze", "key_padding_mask", g.const("axis_1", [1]))  # (B, 1, n)
    keep = g.op("Not", pad)
    keep_f = None  # the float mask, made once for the uniform layers
    X, states, sets = "X", [], {}
    for l, blk in enumerate(model.blocks):
        p = f"blocks.{l}"
        if blk.ff is not None:
            f = blk.ff
            pre = g.op("Add", g.op("MatMul", X, g.const(f"{p}.ff.U_T", f.U.T)),
                       g.const(f"{p}.ff.b", f.b))
            added = g.op("MatMul", g.op("Relu", pre), g.const(f"{p}.ff.W_T", f.W.T))
            X = g.op("Add", g.op("Mul", g.const(f"{p}.ff.eta", float(f.eta)), X), added)
        if blk.sa is not None:
            s = blk.sa
            if s.V is not None:
                VX = g.op("MatMul", X, g.const(f"{p}.sa.V_T", s.V.T))
            else:
                VX = g.op("MatMul", g.op("MatMul", X, g.const(f"{p}.sa.Vi_T", s.Vi.T)),
                          g.const(f"{p}.sa.Vo_T", s.Vo.T))
            if s.uniform:  # (B, 1, n) weights 1/count over the real keys, broadcast to rows
                keep_f = keep_f or g.op("Cast", keep, to=_DOUBLE)
                count = g.op("Max", g.op("ReduceSum", keep_f, axis2, keepdims=1), one)
                P = g.op("Div", keep_f, count)
            else:
                QX = g.op("MatMul", X, g.const(f"{p}.sa.Q_T", s.Q.T))
                KX = g.op("MatMul", X, g.const(f"{p}.sa.K_T", s.K.T))
                scores = g.op("MatMul", QX, g.op("Transpose", KX, perm=[0, 2, 1]))
                masked = g.op("Where", keep, scores, ninf)
                if model.attention == "hardmax":
                    P, sets[l] = _hardmax(g, masked, scores, keep, axis2, one, zero,
                                          tie_tols.get(l, 0.0), p)
                else:
                    z = g.op("Div", masked, g.const(f"{p}.sa.tau", float(model.temperature)))
                    P = g.op("Where", keep, g.op("Softmax", z, axis=-1), zero)
            X = g.op("Add", g.op("Mul", g.const(f"{p}.sa.rho", float(s.rho)), X),
                     g.op("MatMul", P, VX))
        if every_state:
            states.append(g.op("Identity", X))
    g.nodes.append(helper.make_node("Identity", [X], ["Y"]))
    d = model.d
    inputs = [helper.make_tensor_value_info("X", _DOUBLE, ["batch", "n", d]),
              helper.make_tensor_value_info("key_padding_mask", _BOOL, ["batch", "n"])]
    outputs = [helper.make_tensor_value_info("Y", _DOUBLE, ["batch", "n", d])]
    for l, name in enumerate(states):
        g.nodes.append(helper.make_node("Identity", [name], [f"resid_post_{l}"]))
        outputs.append(helper.make_tensor_value_info(f"resid_post_{l}", _DOUBLE,
                                                     ["batch", "n", d]))
    for l, name in sets.items() if argmax_sets else ():
        g.nodes.append(helper.make_node("Identity", [name], [f"argmax_{l}"]))
        outputs.append(helper.make_tensor_value_info(f"argmax_{l}", _BOOL, ["batch", "n", "n"]))
    used = {name for node in g.nodes for name in node.input}
    inits = [t for t in g.inits if t.name in used]  # onnxruntime warns about unused ones
    graph = helper.make_graph(g.nodes, "exactformer", inputs, outputs, inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="exactformer")
    proto.ir_version = 8  # readable by onnxruntime ≥ 1.14
    meta = {"format": "exactformer/1", "attention": model.attention,
            "temperature": repr(float(model.temperature)), "d": str(d),
            "n_blocks": str(model.n_blocks),
            "tie_tolerances": json.dumps({str(k): float(v) for k, v in tie_tols.items() if v})}
    helper.set_model_props(proto, meta)
    return proto


def _hardmax(g: _Graph, masked, scores, keep, axis2, one, zero, tol: float, p: str) -> str:
    """Uniform weights over the keys whose score is the row's top (within ``tol``)."""
    top = g.op("ReduceMax", masked, axis2, keepdims=1)
    if tol > 0:
        scale = g.op("ReduceMax", g.op("Where", keep, g.op("Abs", scores), zero), axis2,
                     keepdims=1)
        top = g.op("Sub", top, g.op("Mul", scale, g.const(f"{p}.sa.tie_tol", tol)))
    chosen = g.op("And", g.op("GreaterOrEqual", masked, top), keep)
    weights = g.op("Cast", chosen, to=_DOUBLE)
    count = g.op("Max", g.op("ReduceSum", weights, axis2, keepdims=1), one)
    return g.op("Div", weights, count), chosen


def drop_outputs(proto) -> None:
    """Remove every output but ``Y`` (and the Identity nodes that fed them), in place."""
    extra = [o.name for o in proto.graph.output if o.name != "Y"]
    for name in extra:
        o = next(o for o in proto.graph.output if o.name == name)
        proto.graph.output.remove(o)
    nodes = [n for n in proto.graph.node if n.op_type == "Identity" and n.output[0] in extra]
    for n in nodes:
        proto.graph.node.remove(n)


# -- the interface exactformer.export uses ----------------------------------------------------


def convert(model: Transformer, tie_tols: dict[int, float]):
    return build(model, tie_tols, argmax_sets=True)


def run(proto, model: Transformer, seqs):
    """(outputs per sequence, {block: argmax sets per sequence}) from onnxruntime."""
    from .export import batches, pad_numpy

    sess = session(proto)
    names = [o.name for o in proto.graph.output]
    outputs: list = [None] * len(seqs)
    sets: dict[int, list] = {int(n.split("_")[1]): [None] * len(seqs)
                             for n in names if n.startswith("argmax_")}
    for idx in batches(seqs):
        X, pad = pad_numpy([seqs[j] for j in idx], model.d)
        res = dict(zip(names, sess.run(names, {"X": X, "key_padding_mask": pad})))
        for b, j in enumerate(idx):
            n = len(seqs[j])
            outputs[j] = res["Y"][b, :n]
            for l in sets:
                sets[l][j] = res[f"argmax_{l}"][b, :n, :n]
    return outputs, sets


def states(proto, model: Transformer, seqs) -> list:
    """The residual state after every block for one sequence (diagnosis of a failure)."""
    from .export import pad_numpy

    meta = {p.key: p.value for p in proto.metadata_props}
    tols = {int(k): v for k, v in json.loads(meta["tie_tolerances"]).items()}
    full = build(model, tols, every_state=True)
    X, pad = pad_numpy(seqs, model.d)
    res = session(full).run([f"resid_post_{l}" for l in range(model.n_blocks)],
                            {"X": X, "key_padding_mask": pad})
    return [r[0] for r in res]


def write(proto, model: Transformer, tie_tols, path) -> None:
    from .dataset import write_atomic

    drop_outputs(proto)
    data = proto.SerializeToString()
    write_atomic(path, lambda tmp: Path(tmp).write_bytes(data))


def n_params(proto) -> int:
    scalars = {"one", "zero", "minus_inf", "axis_1", "axis_2"}
    return sum(int(np.prod(t.dims)) for t in proto.graph.initializer
               if t.name not in scalars and not t.name.endswith(("tie_tol", "tau")))


def session(proto):
    """An onnxruntime CPU session of ``proto`` on one thread (bit-reproducible)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
