"""Stateful models: the protocol, adapters, per-stream state and multi-stream batching.

Synchronous and free of asyncio; a model stage runs these calls on its worker thread.
"""

from streamer.models.adapters import ContextModel, as_model
from streamer.models.batching import step_batch
from streamer.models.loading import ModelSpec, load_model
from streamer.models.module import ModuleModel, TorchScriptModel
from streamer.models.onnx import OnnxModel
from streamer.models.protocol import ModelContractError, State, StatefulModel, StreamingRefused
from streamer.models.rnn import RNNModel
from streamer.models.state import GapPolicy, StateStore

__all__ = [
    "ContextModel",
    "GapPolicy",
    "ModelContractError",
    "ModelSpec",
    "ModuleModel",
    "OnnxModel",
    "RNNModel",
    "State",
    "StateStore",
    "StatefulModel",
    "StreamingRefused",
    "TorchScriptModel",
    "as_model",
    "load_model",
    "step_batch",
]
