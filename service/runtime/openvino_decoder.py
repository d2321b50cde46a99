"""The SAM decoder under OpenVINO: the dynamic-shape model, plus static box/point-only specialisations.

The decoder graph takes any K prompts of N tokens and optional mask prompts (dynamic axes). Calls whose prompts
carry no mask prompt (every has_mask_input 0: clicks and boxes, the interactive case) run instead a model
specialised from the same graph, compiled for that call's static (K, N) with

- has_mask_input and mask_input replaced by constant zeros: OpenVINO folds the mask-prompt branch away (the
  dense prompt becomes SAM's constant no-mask embedding, computed once, not per prompt);
- static shapes: kernels and memory planned once for (K, N) instead of per call.

The outputs are the dynamic model's for has_mask_input = 0 up to the runtime's rounding (the same graph; tests
compare them). Every box/point-only call runs a specialisation, so a request gives the same masks every time: a
(K, N) seen for the first time compiles its specialisation first (~0.2 s for ViT-B on 2 cores, in the calling
thread, under the decoder's lock); `warm` shapes ((1, 2): one box, or one point + SAM's padding point;
(1, 3)) are compiled at load. At most `max_models` specialisations are kept (least recently used dropped, then
compiled again when needed); max_models = 0 turns them off (setting `openvino_decoder_shapes`).

Every model takes `image_embeddings` channels-last, (1, h, w, C) (`channels_last_input`), the memory order of a
cache entry (service/images/entry.py), so a call feeds a view of it. A graph whose one use of the (1, C, h, w)
input is its rows (Reshape to (1, C, h*w), Transpose to (1, h*w, C): the fused decoder,
model_export/decoder_fast.py) reads them with no transpose at all (OpenVINO's reference Transpose kernel: 0.5-1.3
ms of a ~7 ms ViT-B 1-box call on 2 cores); any other graph gets the transpose back inside the compiled model
(OpenVINO's preprocessing layout conversion) instead of a numpy copy (6.9 ms for a float32 ViT-B embedding).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from service.runtime.layout import to_channels_last

PROMPT_INPUTS = ("image_embeddings", "point_coords", "point_labels")
MASK_INPUTS = ("mask_input", "has_mask_input")
WARM_SHAPES = ((1, 2), (1, 3))


def without_mask_prompts(model: Any, grid: int) -> Any:
    """`model` (an ov.Model of the decoder) with has_mask_input = 0 and mask_input = 0 folded in as constants
    (shapes (1,) and (1, 1, grid, grid), broadcast over the prompts); those two inputs are removed."""
    from openvino import opset13 as ops
    from openvino.passes import ConstantFolding, Manager

    params = {p.get_friendly_name(): p for p in model.get_parameters()}
    zeros = {
        "has_mask_input": np.zeros((1,), np.float32),
        "mask_input": np.zeros((1, 1, grid, grid), np.float32),
    }
    for name, value in zeros.items():
        constant = ops.constant(value)
        for target in list(params[name].output(0).get_target_inputs()):
            target.replace_source_output(constant.output(0))
        model.remove_parameter(params[name])
    model.validate_nodes_and_infer_types()
    manager = Manager()  # the select between the mask and no-mask embeddings now has a constant condition
    manager.register_pass(ConstantFolding())
    manager.run_passes(model)
    for op in model.get_ordered_ops():  # take its no-mask side: the mask branch drops out of the graph
        condition = op.input_value(0).get_node() if op.get_type_name() == "Select" else None
        if condition is not None and condition.get_type_name() == "Constant":
            values = np.asarray(condition.get_data())
            if values.size and (values.all() or not values.any()):
                op.output(0).replace(op.input_value(1 if values.all() else 2))
    model.validate_nodes_and_infer_types()
    return model


def channels_last_input(model: Any) -> bool:
    """Make `model` (an ov.Model of the decoder, static (1, C, h, w) image_embeddings) take image_embeddings
    channels-last, (1, h, w, C) (module docstring): rewired to read its rows (`rows_input`; True), else by a
    preprocessing layout conversion NHWC -> NCHW inside the model (False)."""
    if rows_input(model):
        return True
    from openvino import Layout
    from openvino.preprocess import PrePostProcessor

    steps = PrePostProcessor(model)
    steps.input("image_embeddings").tensor().set_layout(Layout("NHWC"))
    steps.input("image_embeddings").model().set_layout(Layout("NCHW"))
    steps.build()
    return False


def rows_input(model: Any) -> bool:
    """Rewire `model` to take image_embeddings channels-last (1, h, w, C) when its one use of the (1, C, h, w)
    input is Reshape (1, C, h*w) -> Transpose (0, 2, 1), i.e. the embedding's rows (module docstring): the new
    input is reshaped to those rows, and both ops drop out. Needs a static (1, C, h, w) input. Returns whether it
    rewired; the model is unchanged otherwise."""
    from openvino import opset13 as ops

    param = next((p for p in model.get_parameters() if p.get_friendly_name() == "image_embeddings"), None)
    if param is None or not param.get_partial_shape().is_static or len(param.get_partial_shape()) != 4:
        return False
    batch, chans, h, w = (int(d) for d in param.get_partial_shape().to_shape())
    reshape = _only_user(param, "Reshape")
    transpose = _only_user(reshape, "Transpose") if reshape is not None else None
    if transpose is None or list(reshape.get_output_shape(0)) != [batch, chans, h * w]:
        return False
    order = transpose.input_value(1).get_node()
    if order.get_type_name() != "Constant" or list(np.asarray(order.get_data())) != [0, 2, 1]:
        return False
    names = param.output(0).get_names()
    rows_in = ops.parameter([batch, h, w, chans], param.get_element_type(), name="image_embeddings")
    param.output(0).get_tensor().set_names(set())
    rows_in.output(0).get_tensor().set_names(names)
    rows = ops.reshape(rows_in, ops.constant(np.array([batch, h * w, chans], np.int64)), special_zero=False)
    transpose.output(0).replace(rows.output(0))
    model.add_parameters([rows_in])
    model.remove_parameter(param)
    model.validate_nodes_and_infer_types()
    return True


def _only_user(node: Any, kind: str) -> Any:
    """The one op reading node's first output when it is of type `kind`, else None."""
    users = [t.get_node() for t in node.output(0).get_target_inputs()]
    return users[0] if len(users) == 1 and users[0].get_type_name() == kind else None


class DecoderModels:
    """`dynamic`: the compiled dynamic-shape decoder (any call); `specialise(shape)` -> a compiled static
    box/point-only model for shape = {input name: dims} (see the module docstring). `run(feeds)` picks.
    Every model takes image_embeddings as (1, h, w, C) (`channels_last_input`); feeds give it as the contract's
    (1, C, h, w) in either memory order. rows: whether the models read it as their rows with no transpose
    (`rows_input`). Callers serialise calls (the backend's per-graph lock)."""

    def __init__(
        self,
        dynamic: Any,
        specialise: Callable[[dict[str, list[int]]], Any],
        max_models: int = 8,
        rows: bool = False,
    ) -> None:
        self.dynamic, self._specialise, self.max_models = dynamic, specialise, max_models
        self.rows = rows
        self.models: OrderedDict[tuple[int, int], Any] = OrderedDict()

    @property
    def compiled(self) -> Any:
        """The dynamic model's ov.CompiledModel (its properties describe the decoder)."""
        return self.dynamic.compiled

    def warm(self, embedding: tuple[int, ...], shapes: tuple[tuple[int, int], ...] = WARM_SHAPES) -> None:
        """Compile the specialisations of `shapes` ((K, N) pairs) for an image embedding of shape `embedding`."""
        for k, n in shapes[: self.max_models]:
            self._model((k, n), embedding)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs for feeds (all five decoder inputs): the (K, N) specialisation (compiled now if new) when no
        prompt has a mask prompt, else the dynamic model."""
        embedding = feeds["image_embeddings"]
        feeds = {**feeds, "image_embeddings": to_channels_last(embedding)}  # a view of a cache entry's
        if self.max_models <= 0 or np.any(feeds["has_mask_input"]):
            return self.dynamic.run(feeds)
        k, n = (int(v) for v in feeds["point_coords"].shape[:2])
        model = self._model((k, n), tuple(embedding.shape))
        return model.run({name: feeds[name] for name in PROMPT_INPUTS})

    def close(self) -> None:
        self.models.clear()

    def _model(self, key: tuple[int, int], embedding: tuple[int, ...]) -> Any:
        model = self.models.get(key)
        if model is None:
            shapes = {
                "image_embeddings": list(embedding),
                "point_coords": [*key, 2],
                "point_labels": list(key),
            }
            model = self.models[key] = self._specialise(shapes)
            while len(self.models) > self.max_models:
                self.models.popitem(last=False)
        self.models.move_to_end(key)
        return model
