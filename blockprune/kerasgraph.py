"""The one module that touches Keras internals, and the one place models are copied and rewrapped.

Keras 3 has no public API for some facts blockprune needs: a layer's direct sublayers, which
variables a layer owns itself, the shapes a layer was built with, whether a layer's ``call``
takes ``training``, whether a model is functional, the active ``StatelessScope``, whether
arguments are symbolic, and which optimizer variables are a weight's slots. Each is read here, behind a public
function, so a Keras upgrade that moves one of them breaks one module. Model surgery (an
independent copy; a clone with some layers replaced) lives here too, for pruning, stripping
and lowering alike.
"""

from __future__ import annotations

import keras
from keras.src.backend import any_symbolic_tensors
from keras.src.backend.common.stateless_scope import get_stateless_scope

__all__ = ["any_symbolic_tensors", "get_stateless_scope", "optimizer_slots", "is_functional", "sublayers", "replace_sublayer", "sole_consumer", "graph_nodes", "node_of", "input_readers", "self_attention_input", "own_variables",
           "owns", "build_shapes", "call_takes_training", "copy_model", "layer_paths", "rewrap", "recurrent_loops",
           "with_fixed_batch"]


def is_functional(model) -> bool:
    """Whether ``model`` is a functional model (built from ``keras.Input``; Sequential counts too)."""
    try:
        from keras.src.models.functional import Functional
    except ImportError:  # pragma: no cover - guards a private Keras path
        return False
    return isinstance(model, Functional)


def sublayers(layer, recursive: bool = False, include_self: bool = False) -> list:
    """The layers ``layer`` tracks: its direct sublayers, or all of them with ``recursive``.

    Keras 3 keeps them in ``_flatten_layers``; it is how ``Layer.weights`` itself recurses.
    """
    return list(layer._flatten_layers(include_self=include_self, recursive=recursive))


def replace_sublayer(layer, old, new) -> None:
    """Makes ``layer`` (built) call ``new`` wherever it called its sublayer ``old``.

    Keras locks a built layer's state; the lock is lifted for the swap and restored.

    Raises:
        ValueError: ``old`` is not an attribute of ``layer``.
    """
    names = [k for k, v in vars(layer).items() if v is old]
    if not names:
        raise ValueError(f"Layer '{layer.name}' holds no sublayer '{old.name}' as an attribute")
    tracker = getattr(layer, "_tracker", None)
    locked = bool(tracker and tracker.locked)
    if locked:
        tracker.unlock()
    try:
        for name in names:
            setattr(layer, name, new)
    finally:
        if locked:
            tracker.lock()


def graph_nodes(model) -> list:
    """The call nodes of ``model``'s own graph (a Sequential model's through its functional graph).
    A layer that ``keras.models.clone_model`` reused (a lowered model's unchanged layers) also has
    nodes in the model it came from; only these belong to ``model``."""
    graph = model if hasattr(model, "_nodes_by_depth") else getattr(model, "_functional", None)
    if graph is None:
        return []
    return [node for nodes in graph._nodes_by_depth.values() for node in nodes]


def node_of(model, layer):
    """``layer``'s one call node in ``model``'s graph, or None when it is called more than once."""
    own = [node for node in graph_nodes(model) if node.operation is layer]
    return own[0] if len(own) == 1 else None


def sole_consumer(model, layer):
    """The one layer of ``model`` that reads ``layer``'s output, or None when the output is a model
    output, is read by several layers, or either layer is called more than once in ``model``."""
    node = node_of(model, layer)
    if node is None or any(t._keras_history[0] is layer for t in model.outputs):
        return None
    readers = [n for n in graph_nodes(model) if any(p is node for p in n.parent_nodes)]
    if len(readers) != 1 or node_of(model, readers[0].operation) is None:
        return None
    return readers[0].operation


def input_readers(model, index: int) -> list:
    """The layers of ``model`` that read its input number ``index`` directly."""
    history = getattr(model.inputs[index], "_keras_history", None)
    if history is None:
        return []
    members = {id(m) for m in model.layers}
    return [n.operation for n in history[0]._outbound_nodes if id(n.operation) in members]


def self_attention_input(layer) -> tuple[int, int] | None:
    """``(tokens, features)`` when the attention layer ``layer`` is called once, with one
    ``[batch, tokens, features]`` tensor of known tokens and features as query, value (and key),
    and nothing else (no mask, no causal mask, no attention scores returned); else None."""
    if len(layer._inbound_nodes) != 1:
        return None
    arguments = layer._inbound_nodes[0].arguments
    roles = ("query", "value", "key")
    tensors = list(arguments.args) + [arguments.kwargs[k] for k in roles if arguments.kwargs.get(k) is not None]
    others = [k for k, v in arguments.kwargs.items() if k not in roles + ("training",) and v not in (None, False)]
    if others or len(tensors) < 2 or any(t is not tensors[0] for t in tensors):
        return None
    x = tensors[0]
    if getattr(x, "_keras_mask", None) is not None or len(x.shape) != 3 or None in tuple(x.shape[1:]):
        return None
    return int(x.shape[1]), int(x.shape[2])


def own_variables(layer, trainable_only: bool = False) -> list:
    """The variables ``layer`` created itself (not its sublayers')."""
    own = list(getattr(layer, "_trainable_variables", []))
    return own if trainable_only else own + list(getattr(layer, "_non_trainable_variables", []))


def owns(layer, variable) -> bool:
    """Whether ``variable`` is one of ``layer``'s own variables (not a sublayer's).

    A layer that tracks no variables of its own (e.g. a custom layer that keeps them elsewhere)
    is taken to own every variable it lists.
    """
    own_ids = {id(v) for v in own_variables(layer)}
    return id(variable) in own_ids if own_ids else True


def build_shapes(layer) -> dict:
    """``{argument: shape}`` the layer was built with (empty when unknown)."""
    return dict(getattr(layer, "_build_shapes_dict", None) or {})


def call_takes_training(layer) -> bool:
    """Whether ``layer.call`` accepts a ``training`` argument."""
    return bool(getattr(layer, "_call_has_training_arg", False))


def copy_model(model):
    """An independent, uncompiled copy of a Sequential/functional model, weights included.

    Rebuilt from its config (``clone_model`` would also copy the compile state and so an
    optimizer); the model's own layer classes are passed so unregistered custom layers work.
    """
    classes = {type(layer).__name__: type(layer) for layer in sublayers(model, recursive=True)}
    copy = type(model).from_config(model.get_config(), custom_objects=classes)
    copy.set_weights(model.get_weights())
    return copy


def layer_paths(model) -> dict[int, str]:
    """``{id(layer): path}`` for every layer of ``model``, nested models included
    (``"encoder/dense_1"``)."""
    paths: dict[int, str] = {}

    def walk(m, prefix):
        for layer in m.layers:
            paths[id(layer)] = prefix + layer.name
            if isinstance(layer, keras.Model):
                walk(layer, prefix + layer.name + "/")

    walk(model, "")
    return paths


def rewrap(model, replace):
    """Clones ``model`` (nested models too), replacing each layer by ``replace(layer, path)``."""
    paths = layer_paths(model)
    return keras.models.clone_model(model, clone_function=lambda layer: replace(layer, paths.get(id(layer))),
                                    recursive=True)


def recurrent_loops(model) -> list[str]:
    """Names of the recurrent layers of ``model`` that run a loop over time (not unrolled)."""
    return [layer.name for layer in sublayers(model, recursive=True)
            if isinstance(layer, keras.layers.RNN) and not layer.unroll]


def with_fixed_batch(model, batch: int):
    """A functional model calling ``model``'s own layers (weights shared) on inputs of batch size
    ``batch``: the TFLite converter lowers a recurrent loop only when the batch is static."""
    inputs = [keras.Input(batch_shape=(batch, *t.shape[1:]), dtype=t.dtype, name=t.name.split(":")[0])
              for t in model.inputs]
    outputs = model(inputs if len(inputs) > 1 else inputs[0])
    return keras.Model(inputs, outputs, name=model.name)


def optimizer_slots(optimizer, variable) -> dict:
    """The variables of ``optimizer`` that hold per-element state of ``variable``, by slot name
    (Adam's ``momentum`` and ``velocity``, SGD's ``momentum``, Adagrad's ``accumulator``, the
    EMA copy ``average``, ...).

    Keras 3 optimizers create them with ``add_variable_from_reference``, which names each
    ``<weight path with '/' as '_'>_<slot>`` and gives it the weight's shape: the only link
    from a weight to its slots that every optimizer shares.
    """
    if optimizer is None:
        return {}
    prefix = variable.path.replace("/", "_") + "_"
    shape = tuple(variable.shape)
    return {v.name[len(prefix):]: v for v in optimizer.variables
            if v.name.startswith(prefix) and tuple(v.shape) == shape}
