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
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

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


class DecoderModels:
    """`dynamic`: the compiled dynamic-shape decoder (any call); `specialise(shape)` -> a compiled static
    box/point-only model for shape = {input name: dims} (see the module docstring). `run(feeds)` picks.
    Callers serialise calls (the backend's per-graph lock)."""

    def __init__(
        self, dynamic: Any, specialise: Callable[[dict[str, list[int]]], Any], max_models: int = 8
    ) -> None:
        self.dynamic, self._specialise, self.max_models = dynamic, specialise, max_models
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
        if self.max_models <= 0 or np.any(feeds["has_mask_input"]):
            return self.dynamic.run(feeds)
        k, n = (int(v) for v in feeds["point_coords"].shape[:2])
        model = self._model((k, n), tuple(feeds["image_embeddings"].shape))
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
