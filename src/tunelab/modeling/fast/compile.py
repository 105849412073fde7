"""torch.compile for the decoder layers during training, and back to eager for evaluation.

Most of a LoRA step outside the matmuls is element-wise work: the adapters' scale-and-add on every
projection, RMSNorm, rotary embeddings and SwiGLU. Compiling each decoder layer fuses it (measured
on SmolLM2-135M on CPU: 1.3-1.4x tokens/s once compiled). All layers share one compiled graph:
their code is the same and the shapes are marked dynamic, and every layer's input requires grad
(``enable_input_require_grads``), so the first layer does not need a graph of its own. A micro-batch
of one row and one of two get a graph each. Segment attention stays eager (a Python loop over
examples) and splits each layer into two graphs.

Compiling costs time once per new shape family: 30-45 s on 2 CPU cores the first time, and a few
seconds later on, when torch's on-disk cache has the kernels.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from tunelab.modeling.methods import unwrap

MIN_FORWARD_PASSES = 100  # below this, auto does not compile: the compile time would not be paid back


def should_compile(setting: bool | str, forward_passes: int) -> bool:
    """auto: on CPU (where it was measured) for runs long enough to pay back the compile time."""
    if setting != "auto":
        return bool(setting)
    return not torch.cuda.is_available() and forward_passes >= MIN_FORWARD_PASSES


def decoder_layers(model) -> torch.nn.ModuleList:
    return unwrap(model).get_decoder().layers


@contextmanager
def compiled_layers(model, enabled: bool):
    """Inside the block each decoder layer's forward is compiled; afterwards the layers are eager again."""
    if not enabled:
        yield
        return
    base = unwrap(model)
    hooked = hasattr(base, "_require_grads_hook")  # peft may have set it up already
    if not hooked:
        base.enable_input_require_grads()
    layers = list(base.get_decoder().layers)
    for layer in layers:
        layer.forward = torch.compile(layer.forward, dynamic=True)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward  # the class's eager forward again
        if not hooked:
            base.disable_input_require_grads()
