"""Weight precision of an exported ONNX graph: fp16 storage, or NNCF int8/int4 (ONNX backend)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ...compiler.errors import InputError

log = logging.getLogger(__name__)
GROUP_SIZES = (128, 64, 32)


def group_size_for(adapter) -> int:
    """The largest int4 group size dividing the input dim of every linear layer (and the head)."""
    dims = {lin.in_features if hasattr(lin, "in_features") else lin.weight.shape[1]
            for lin in adapter.linears(include_head=True).values()}
    for g in GROUP_SIZES:
        if all(d % g == 0 for d in dims):
            return g
    raise InputError(f"int4 weights need a group size in {GROUP_SIZES} dividing every layer input size "
                     f"({sorted(dims)}); use --weights int8")


def quiet_nncf() -> None:
    """NNCF logs its bitwidth tables at INFO: keep them for -v only."""
    import nncf
    if not logging.getLogger("accelc").isEnabledFor(logging.INFO):
        nncf.set_log_level(logging.WARNING)


def fp16_storage(model, min_elements: int = 1024):
    """Store float32 initializers of >= min_elements as float16 + Cast to float32 (compute stays fp32)."""
    import onnx
    from onnx import helper, numpy_helper
    nodes = []
    for init in model.graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT or int(np.prod(init.dims)) < min_elements:
            continue
        arr = numpy_helper.to_array(init).astype(np.float16)
        name = init.name
        init.CopyFrom(numpy_helper.from_array(arr, name + ".fp16"))
        nodes.append(helper.make_node("Cast", [name + ".fp16"], [name], to=onnx.TensorProto.FLOAT,
                                      name=name + ".cast"))
    for n in reversed(nodes):
        model.graph.node.insert(0, n)
    return model


def narrow_initializers(model, min_elements: int = 256):
    """Store large initializers read by Gather (directly or through a Cast) in a narrower type, losslessly,
    followed by a Cast back to their type (the model computes exactly as before):

      int64/int32 whose values fit uint8 (else int16) - e.g. codebook codes, which the TorchScript
      exporter's constant folding turns from uint8 + Cast into int64 (8x the bytes);
      float32 whose values are exactly float16 - e.g. fp16 codebooks folded to float32.

    Returns the number of initializers narrowed.
    """
    import onnx
    from onnx import helper, numpy_helper
    TP = onnx.TensorProto
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node.op_type, i))
    nodes = []
    for init in model.graph.initializer:
        if init.data_type not in (TP.INT64, TP.INT32, TP.FLOAT) or int(np.prod(init.dims)) < min_elements:
            continue
        uses = consumers.get(init.name, [])
        if not uses or not all(op in ("Gather", "Cast") for op, _ in uses) or not any(op == "Gather" for op, _ in uses):
            continue
        arr = numpy_helper.to_array(init)
        if init.data_type == TP.FLOAT:
            small = arr.astype(np.float16)
            if not np.array_equal(small.astype(np.float32), arr):
                continue
        elif arr.min() >= 0 and arr.max() <= 255:
            small = arr.astype(np.uint8)
        elif arr.min() >= -(1 << 15) and arr.max() < (1 << 15):
            small = arr.astype(np.int16)
        else:
            continue
        name, dtype = init.name, init.data_type
        init.CopyFrom(numpy_helper.from_array(small, f"{name}.{small.dtype}"))
        nodes.append(helper.make_node("Cast", [init.name], [name], to=dtype, name=f"{name}.widen"))
    for n in reversed(nodes):
        model.graph.node.insert(0, n)
    return len(nodes)


SHIELD = ".shield"


def shield_initializer_casts(model) -> int:
    """Put an Identity between each initializer and the Cast that reads it (a codebook graph's narrowed codes,
    narrow_initializers): NNCF's ONNX preprocessing (eliminate_nop_cast, nncf 2.x) reads `.type` from a Cast's
    input and fails on an initializer, which has none. unshield_casts takes the Identities out again."""
    from onnx import helper
    inits = {i.name: i for i in model.graph.initializer}
    added = []
    for node in model.graph.node:
        if node.op_type == "Cast" and node.input and node.input[0] in inits:
            init = inits[node.input[0]]
            shielded = init.name + SHIELD
            if shielded not in added:
                model.graph.value_info.append(helper.make_tensor_value_info(shielded, init.data_type, list(init.dims)))
                added.append(shielded)
            node.input[0] = shielded
    for name in added:
        model.graph.node.insert(0, helper.make_node("Identity", [name[:-len(SHIELD)]], [name], name=name))
    return len(added)


def unshield_casts(model) -> None:
    """Undo shield_initializer_casts: consumers read the initializers again, the Identities and their infos go."""
    shields = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Identity" and n.name.endswith(SHIELD)}
    if not shields:
        return
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name in shields:
                node.input[i] = shields[name]
    keep = [n for n in model.graph.node if not (n.op_type == "Identity" and n.output[0] in shields)]
    del model.graph.node[:]
    model.graph.node.extend(keep)
    infos = [v for v in model.graph.value_info if v.name not in shields]
    del model.graph.value_info[:]
    model.graph.value_info.extend(infos)


def compress_onnx(src: Path, out: Path, weights: str, adapter, group: int | None = None, edit=None) -> None:
    """Write `src` (an fp32 graph with external data) to `out` with the requested weight precision.

    NNCF gets the graph without its tensors (load_external_data=False, the data folder as its
    EXTERNAL_DATA_DIR backend parameter): a graph whose tensors are loaded is a protobuf that cannot
    be serialized past 2 GB, which NNCF's preprocessing does (EncodeError on a 0.5B model)."""
    import onnx
    from .onnx_storage import save_onnx
    if weights == "fp16":
        model = fp16_storage(onnx.load(str(src)))
    elif weights in ("int8", "int4"):
        import nncf
        from nncf import CompressWeightsMode
        from nncf.onnx.quantization.backend_parameters import BackendParameters
        from nncf.quantization.advanced_parameters import AdvancedCompressionParameters
        quiet_nncf()
        if weights == "int8":
            kw = dict(mode=CompressWeightsMode.INT8_ASYM)
        else:
            kw = dict(mode=CompressWeightsMode.INT4_SYM, group_size=group or group_size_for(adapter), ratio=1.0)
        model = onnx.load(str(src), load_external_data=False)
        adv = AdvancedCompressionParameters(backend_params={BackendParameters.EXTERNAL_DATA_DIR:
                                                            str(Path(src).resolve().parent)})
        shield_initializer_casts(model)
        model = nncf.compress_weights(model, advanced_parameters=adv, **kw)
        unshield_casts(model)
        if edit is not None:
            edit(model)
    elif weights == "fp32":
        model = onnx.load(str(src))
    else:
        raise InputError(f"weight precision '{weights}' cannot be produced for ONNX")
    save_onnx(model, out)
