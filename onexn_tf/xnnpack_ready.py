"""The XNNPACK-ready variant of a model: what TFLite's XNNPACK needs to run it on its sparse path.

XNNPACK runs the part of a network between the stem and the global mean in CHW, with sparse 1×1
kernels, only if every op there has a CHW kernel (``export/xnnpack_sparse.py`` replays the rules).
Two things in Keras' MobileNets break them, and both are rewritten here without touching a weight:

- **asymmetric padding**: every stride-2 convolution must pad the same on both sides (the stem 3×3
  by 1, depthwise 3×3 / 5×5 by 1 / 2). Keras pads even inputs 0 before and 1 after — ``padding=
  "same"`` on the stem, ``ZeroPadding2D(((0, 1), (0, 1)))`` (``((1, 2), (1, 2))`` for 5×5) before
  stride-2 depthwise convolutions — which is also why tfmot's ``PruneForLatencyOnXNNPack`` refuses
  them. The padding layers become symmetric (one is added before a ``same`` stride-2 conv, which
  becomes ``valid``): output shapes stay the same on even inputs, and the half-pixel shift costs
  some accuracy until fine-tuned;
- **scalar constants** (V3): the squeeze-excite's hard sigmoid multiplies by ``1/6`` as a Python
  float, which the converter stores as a rank-0 tensor, and XNNPACK's CHW ``MUL`` takes rank-4
  operands only; the constant becomes a ``[1, 1, 1, 1]`` array (same values, same outputs);
- **the classifier in the cluster** (V1, V3): their last global pooling keeps a 1×1 map that 1×1
  convs (the classifier, V3's ``Conv_2``) read, so XNNPACK's CHW cluster runs on through them and
  counts their dense weights against its "more than 2/3 zeros" rule (V1 1.0 with 1000 classes: p =
  0.75 on every pruned layer gives 0.57 zeros). The pooling now drops the 1×1 map and a ``Reshape``
  restores it: the cluster ends at the mean, the classifier runs dense, as the reference leaves it.

Layer names, the layer list (apart from the added padding layers) and the weights are unchanged, so
ImageNet or a user's weights load as they are.
"""
from __future__ import annotations

from onexn_tf._keras import keras
from onexn_tf.errors import InvalidArgument

_CONVS = ("Conv2D", "DepthwiseConv2D")


def _is_strided_conv(entry: dict) -> bool:
    config = entry["config"]
    return entry["class_name"] in _CONVS and tuple(config.get("strides", (1, 1))) != (1, 1)


def _symmetric(kernel_size) -> tuple[tuple[int, int], tuple[int, int]]:
    kh, kw = kernel_size
    if kh % 2 == 0 or kw % 2 == 0:
        raise InvalidArgument(f"kernel {kh}x{kw} has no symmetric 'same' padding: only odd kernels do")
    return (kh // 2, kh // 2), (kw // 2, kw // 2)


def _inbound_names(entry: dict) -> list[str]:
    """Layer names an entry's ``inbound_nodes`` refer to: ``[name, node, tensor, kwargs]`` lists, nested
    one level deeper for most layers than for ``TFOpLambda``."""
    names = []

    def walk(value):
        if isinstance(value, list) and len(value) >= 3 and isinstance(value[0], str) and isinstance(value[1], int):
            names.append(value[0])
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(entry["inbound_nodes"])
    return names


def symmetric_config(config: dict) -> tuple[dict, list[str]]:
    """A functional model's config with symmetric padding before each stride-2 conv, and the names of
    the padding layers changed or added. Pure: works on (a copy of) ``model.get_config()``."""
    import copy

    config = copy.deepcopy(config)
    layers = config["layers"]
    by_name = {entry["name"]: entry for entry in layers}
    consumers: dict[str, list[dict]] = {}
    for entry in layers:
        for name in _inbound_names(entry):
            consumers.setdefault(name, []).append(entry)
    changed, out = [], []
    for entry in layers:
        config_ = entry["config"]
        if entry["class_name"] == "ZeroPadding2D":
            users = consumers.get(entry["name"], [])
            if users and all(_is_strided_conv(u) and u["config"]["padding"] == "valid" for u in users):
                sizes = {tuple(u["config"]["kernel_size"]) for u in users}
                if len(sizes) == 1:
                    padding = _symmetric(sizes.pop())
                    if tuple(map(tuple, config_["padding"])) != padding:
                        config_["padding"] = padding
                        changed.append(entry["name"])
        elif _is_strided_conv(entry) and config_["padding"] == "same":
            name = _unused_name(f"{entry['name']}_pad", by_name)
            pad = {"class_name": "ZeroPadding2D", "name": name,
                   "config": {"name": name, "trainable": config_.get("trainable", True), "dtype": config_.get("dtype"),
                              "padding": _symmetric(config_["kernel_size"]), "data_format": config_.get("data_format")},
                   "inbound_nodes": entry["inbound_nodes"]}
            by_name[name] = pad
            out.append(pad)
            config_["padding"] = "valid"
            entry["inbound_nodes"] = [[[name, 0, 0, {}]]]
            changed.append(name)
        out.append(entry)
    config["layers"] = out
    return config, changed


def head_outside_config(config: dict, channels: dict[str, int]) -> tuple[dict, list[str]]:
    """``config`` with the last ``GlobalAveragePooling2D(keepdims=True)`` made ``keepdims=False`` and
    followed by a ``Reshape`` to ``(1, 1, C)`` that its readers read instead (``channels``: the pooling
    layers' channel counts). Pure."""
    import copy

    config = copy.deepcopy(config)
    layers = config["layers"]
    pools = [entry for entry in layers if entry["class_name"] == "GlobalAveragePooling2D"]
    if not pools or not pools[-1]["config"].get("keepdims"):
        return config, []
    pool = pools[-1]
    name = _unused_name(f"{pool['name']}_reshape", {entry["name"] for entry in layers})
    pool["config"]["keepdims"] = False
    for entry in layers:
        _rename_refs(entry["inbound_nodes"], pool["name"], name)
    reshape = {"class_name": "Reshape", "name": name,
               "config": {"name": name, "trainable": False, "dtype": pool["config"].get("dtype"),
                          "target_shape": (1, 1, channels[pool["name"]])},
               "inbound_nodes": [[[pool["name"], 0, 0, {}]]]}
    layers.insert(layers.index(pool) + 1, reshape)
    return config, [name]


def _rename_refs(value, old: str, new: str) -> None:
    if isinstance(value, list) and len(value) >= 3 and isinstance(value[0], str) and isinstance(value[1], int):
        if value[0] == old:
            value[0] = new
    elif isinstance(value, list):
        for item in value:
            _rename_refs(item, old, new)


def _unused_name(name: str, taken) -> str:
    candidate, i = name, 1
    while candidate in taken:
        candidate, i = f"{name}_{i}", i + 1
    return candidate


_ELEMENTWISE = ("__operators__.add", "math.add", "__operators__.mul", "math.multiply")


def rank4_constants_config(config: dict, rank4_layers: set[str]) -> tuple[dict, list[str]]:
    """``config`` with the Python-number operand of every elementwise ``TFOpLambda`` in
    ``rank4_layers`` (those applied to rank-4 tensors) made a ``[1, 1, 1, 1]`` array. Pure."""
    import copy

    config = copy.deepcopy(config)
    changed = []
    for entry in config["layers"]:
        if entry["class_name"] != "TFOpLambda" or entry["config"].get("function") not in _ELEMENTWISE:
            continue
        if entry["name"] not in rank4_layers:
            continue
        for kwargs in _call_kwargs(entry["inbound_nodes"]):
            y = kwargs.get("y")
            if isinstance(y, (int, float)) and not isinstance(y, bool):
                kwargs["y"] = [[[[float(y)]]]]
                changed.append(entry["name"])
    return config, changed


def _call_kwargs(value) -> list[dict]:
    """The keyword-argument dicts of the call references in ``inbound_nodes``."""
    if isinstance(value, list) and len(value) == 4 and isinstance(value[0], str) and isinstance(value[3], dict):
        return [value[3]]
    if isinstance(value, list):
        return [kwargs for item in value for kwargs in _call_kwargs(item)]
    return []


def xnnpack_ready(model: keras.Model) -> keras.Model:
    """``model`` rebuilt as the module docstring says, its weights copied by layer name (a model that
    needs no change is returned as it is)."""
    if not isinstance(model, keras.Model) or not getattr(model, "_is_graph_network", False):
        raise InvalidArgument("the XNNPACK-ready rewrite needs a functional Keras model (not a subclassed one)")
    rank4 = {layer.name for layer in model.layers
             if not isinstance(layer.input, (list, tuple)) and len(layer.input.shape) == 4}
    config, padded = symmetric_config(model.get_config())
    config, constants = rank4_constants_config(config, rank4)
    pools = {layer.name: layer.output.shape[-1] for layer in model.layers
             if isinstance(layer, keras.layers.GlobalAveragePooling2D)}
    config, head = head_outside_config(config, pools)
    if not padded and not constants and not head:
        return model
    rebuilt = keras.Model.from_config(config)
    for layer in rebuilt.layers:
        weights = model.get_layer(layer.name).get_weights() if layer.weights else None
        if weights:
            layer.set_weights(weights)
    return rebuilt

