"""The SAM decoder under OpenVINO: the dynamic-shape model, plus static box/point-only specialisations.

The decoder graph takes any K prompts of N tokens and optional mask prompts (dynamic axes). Calls whose prompts
carry no mask prompt (every has_mask_input 0: clicks and boxes, the interactive case) run instead a model
specialised from the same graph, compiled for that call's static (K, N) with

- has_mask_input and mask_input replaced by constant zeros: OpenVINO folds the mask-prompt branch away (the
  dense prompt becomes SAM's constant no-mask embedding, computed once, not per prompt);
- static shapes: kernels and memory planned once for (K, N) instead of per call.

The outputs are the dynamic model's for has_mask_input = 0 (the same graph; tests compare them). A (K, N) seen
for the first time runs the dynamic model while its specialisation compiles in a background thread; `warm`
shapes ((1, 2): one box, or one point + SAM's padding point; (1, 3)) are compiled at load. At most
`max_models` specialisations are kept (least recently used dropped); max_models = 0 turns them off (setting
`openvino_decoder_shapes`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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
    box/point-only model for shape = {input name: dims} (see the module docstring). `run(feeds)` picks."""

    def __init__(
        self, dynamic: Any, specialise: Callable[[dict[str, list[int]]], Any], max_models: int = 8
    ) -> None:
        self.dynamic, self._specialise, self.max_models = dynamic, specialise, max_models
        self._models: OrderedDict[tuple[int, ...], Any] = OrderedDict()
        self._pending: set[tuple[int, ...]] = set()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="samclip-decoder-compile")

    @property
    def compiled(self) -> Any:
        """The dynamic model's ov.CompiledModel (its properties describe the decoder)."""
        return self.dynamic.compiled

    def warm(self, grid: int, embedding: tuple[int, ...], shapes: tuple[tuple[int, int], ...] = WARM_SHAPES):
        """Compile the specialisations of `shapes` ((K, N) pairs) now, in the calling thread."""
        for k, n in shapes[: self.max_models]:
            key = (k, n)
            self._store(key, self._specialise(_shapes(embedding, k, n)))

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs for feeds (all five decoder inputs): a specialisation when no prompt has a mask prompt and
        one is compiled for this (K, N), else the dynamic model (scheduling that specialisation)."""
        if self.max_models <= 0 or np.any(feeds["has_mask_input"]):
            return self.dynamic.run(feeds)
        key = tuple(int(v) for v in feeds["point_coords"].shape[:2])
        with self._lock:
            model = self._models.get(key)
            if model is not None:
                self._models.move_to_end(key)
        if model is None:
            self._schedule(key, tuple(feeds["image_embeddings"].shape))
            return self.dynamic.run(feeds)
        return model.run({name: feeds[name] for name in PROMPT_INPUTS})

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            self._models.clear()

    def _schedule(self, key: tuple[int, ...], embedding: tuple[int, ...]) -> None:
        with self._lock:
            if key in self._pending:
                return
            self._pending.add(key)
        self._pool.submit(self._compile, key, embedding)

    def _compile(self, key: tuple[int, ...], embedding: tuple[int, ...]) -> None:
        try:
            self._store(key, self._specialise(_shapes(embedding, *key)))
        finally:
            with self._lock:
                self._pending.discard(key)

    def _store(self, key: tuple[int, ...], model: Any) -> None:
        with self._lock:
            self._models[key] = model
            self._models.move_to_end(key)
            while len(self._models) > self.max_models:
                self._models.popitem(last=False)


def _shapes(embedding: tuple[int, ...], k: int, n: int) -> dict[str, list[int]]:
    """Static input shapes of a box/point-only call: K prompts of N tokens on one image embedding."""
    return {"image_embeddings": list(embedding), "point_coords": [k, n, 2], "point_labels": [k, n]}
