"""ONNX Runtime: execution providers, cached sessions and a runner per model member.

:func:`choose_providers` maps a device name (:data:`DEVICES`) to ONNX Runtime's execution providers
(CUDA, TensorRT, DirectML, CoreML, each with the CPU behind it); :func:`session_for` builds a session once
per file, providers and thread count (QGIS runs many jobs); :class:`Runner` runs one member on a batch.
"""

from __future__ import annotations

import collections
import threading
from pathlib import Path

import numpy as np

from ..dependencies import require
from ..errors import ForestCarbonError
from ..progress import Progress
from .card import ModelCard

DEVICES = ("auto", "cpu", "cuda", "tensorrt", "directml", "coreml")
PROVIDER_OF = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
               "tensorrt": "TensorrtExecutionProvider", "directml": "DmlExecutionProvider",
               "coreml": "CoreMLExecutionProvider"}
AUTO_ORDER = ("cuda", "directml", "coreml")  # TensorRT builds engines for minutes: only on request

__all__ = ["DEVICES", "choose_providers", "session_for", "Runner"]


_SESSIONS: "collections.OrderedDict[tuple, object]" = collections.OrderedDict()
_SESSIONS_LOCK = threading.Lock()


def choose_providers(device: str, require_gpu: bool, progress: Progress) -> list:
    """The ONNX Runtime execution providers for a device.

    Parameters
    ----------
    device : str
        One of :data:`DEVICES`; ``auto`` tries CUDA, DirectML, CoreML (TensorRT only on request).
    require_gpu : bool
        Fail rather than fall back to the CPU.
    progress : Progress
        Told when a requested GPU provider is missing.

    Returns
    -------
    list of str
        The GPU provider with the CPU behind it, or the CPU alone.
    """
    ort = require("onnxruntime")
    if device not in DEVICES:
        raise ForestCarbonError(f"Unknown device '{device}': choose one of {', '.join(DEVICES)}.")
    available = ort.get_available_providers()
    if device == "cpu":
        if require_gpu:
            raise ForestCarbonError("device is 'cpu' but require_gpu is set: choose a GPU device or clear require_gpu.")
        return ["CPUExecutionProvider"]
    wanted = [device] if device != "auto" else list(AUTO_ORDER)
    for name in wanted:
        if PROVIDER_OF[name] in available:
            return [PROVIDER_OF[name], "CPUExecutionProvider"]
    message = (f"{'No GPU execution provider' if device == 'auto' else PROVIDER_OF[device] + ' is not'} available "
               f"in this onnxruntime ({', '.join(available)})")
    if require_gpu:
        raise ForestCarbonError(message + ": install onnxruntime-gpu (CUDA) or onnxruntime-directml, or clear "
                                "REQUIRE_GPU to run on the CPU.")
    if device != "auto":
        progress.warning(message + ": running on the CPU instead.")
    return ["CPUExecutionProvider"]


def session_for(path: Path, providers: list, threads: int):
    """A cached ONNX Runtime session (sessions are expensive to build; QGIS runs many jobs).

    Parameters
    ----------
    path : pathlib.Path
        The ``.onnx`` file (the cache key includes its modification time).
    providers : list of str
    threads : int
        Intra-op threads.

    Returns
    -------
    onnxruntime.InferenceSession
    """
    ort = require("onnxruntime")
    key = (str(path), Path(path).stat().st_mtime_ns, tuple(providers), threads)
    with _SESSIONS_LOCK:
        if key in _SESSIONS:
            _SESSIONS.move_to_end(key)
            return _SESSIONS[key]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.enable_cpu_mem_arena = True
    options.enable_mem_pattern = True
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime has its own exception types
        raise ForestCarbonError(f"ONNX Runtime cannot load '{Path(path).name}': {str(exc)[:300]}") from exc
    with _SESSIONS_LOCK:
        _SESSIONS[key] = session
        while len(_SESSIONS) > 6:
            _SESSIONS.popitem(last=False)
    return session


class Runner:
    """Runs one member on a batch; I/O binding on CUDA (inputs copied once, outputs fetched once)."""

    def __init__(self, session, card: ModelCard):
        self.session = session
        self.card = card
        self.names = sorted({o.name for o in card.outputs})
        self.cuda = session.get_providers()[0] == "CUDAExecutionProvider"

    def __call__(self, batch: np.ndarray) -> dict:
        if self.cuda:
            binding = self.session.io_binding()
            binding.bind_cpu_input(self.card.input_name, batch)
            for name in self.names:
                binding.bind_output(name)
            self.session.run_with_iobinding(binding)
            return dict(zip(self.names, binding.copy_outputs_to_cpu()))
        return dict(zip(self.names, self.session.run(self.names, {self.card.input_name: batch})))
