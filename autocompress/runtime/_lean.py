"""Drop the shape arithmetic an exported graph recomputes at every call.

The TorchScript exporter turns each ``view(batch, seq, heads, head_dim)`` into
``Shape -> Gather -> Unsqueeze -> Concat -> Reshape``: at batch 1 on short
sentences these small ops cost about as much as the integer matmuls
(bench/RESULTS.md section 5). ONNX Runtime's symbolic shape inference proves
which output dims equal the input's at the same position; such a Reshape gets
a constant target (``0`` copies that dim, ``-1`` takes the one left over) and
the arithmetic that fed it is removed once nothing reads it.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import numpy_helper

log = logging.getLogger(__name__)


def _dims(value: onnx.ValueInfoProto) -> list[int | str | None]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in value.type.tensor_type.shape.dim]


def _constant_target(source: list[int | str | None], target: list[int | str | None]) -> list[int] | None:
    """Reshape's constant shape input taking ``source`` to ``target``, or None when a dim is unknown or two are free."""
    if None in source or None in target:
        return None
    shape = [d if isinstance(d, int) else 0 if i < len(source) and source[i] == d else -1 for i, d in enumerate(target)]
    return shape if shape.count(-1) <= 1 else None


def constant_reshapes(model: onnx.ModelProto) -> int:
    """Give every Reshape whose target is computed at run time a constant one where shapes prove it; return how many changed."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    try:
        inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    except Exception as error:  # an op the tool does not know: the graph stays as exported, only slower
        log.warning("symbolic shape inference failed (%s); Reshape targets stay computed", error)
        return 0
    shapes = {v.name: _dims(v) for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)}
    graph = model.graph
    constants = {t.name for t in graph.initializer} | {out for node in graph.node if node.op_type == "Constant" for out in node.output}
    changed = 0
    for node in graph.node:
        keeps_zeros = any(a.name == "allowzero" and a.i for a in node.attribute)
        if node.op_type != "Reshape" or node.input[1] in constants or keeps_zeros:
            continue
        shape = _constant_target(shapes.get(node.input[0], [None]), shapes.get(node.output[0], [None]))
        if shape is None:
            continue
        name = f"{node.output[0]}::constant_shape"
        graph.initializer.append(numpy_helper.from_array(np.array(shape, dtype=np.int64), name))
        node.input[1] = name
        changed += 1
    _drop_unread(graph)
    return changed


def _drop_unread(graph: onnx.GraphProto) -> None:
    """Remove nodes none of whose outputs is read (by a node or as a graph output), until none is left."""
    while True:
        read = {name for node in graph.node for name in node.input} | {out.name for out in graph.output}
        unread = [node for node in graph.node if not any(out in read for out in node.output)]
        if not unread:
            return
        for node in unread:
            graph.node.remove(node)
