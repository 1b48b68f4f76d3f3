"""The engines a worker process owns: one `engine.Engine` per served model, built on first use or at start.

Every Celery slot of the process submits to the same engine for a model, which is what lets the engine
batch the jobs in the window. torch is imported only when the first engine is built.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from engine.registry import ModelRegistry
from engine.request import ModelUnavailable
from worker.step_gate import StepGate

if TYPE_CHECKING:
    from engine.engine import Engine

log = logging.getLogger(__name__)


class EnginePool:
    def __init__(self, registry: ModelRegistry, models: list[str]) -> None:
        unknown = [m for m in models if m not in registry]
        if unknown:
            raise ModelUnavailable(f"models not in the registry: {', '.join(unknown)}")
        self.registry = registry
        self.models = list(models)
        self._engines: dict[str, Engine] = {}
        self._locks = {name: threading.Lock() for name in self.models}
        self._closed = False

    def get(self, model: str) -> Engine:
        """The model's engine, built once; raises `ModelUnavailable` when it is not served or fails to load."""
        if model not in self._locks:
            raise ModelUnavailable(f"this worker does not serve {model!r}")
        engine = self._engines.get(model)
        if engine is not None:
            return engine
        with self._locks[model]:
            if self._closed:
                raise ModelUnavailable("the worker is shutting down")
            if model in self._engines:
                return self._engines[model]
            from engine.engine import Engine

            spec = self.registry.get(model)
            log.info("loading model %s (%s) from %s on %s", model, spec.family, spec.path, ",".join(spec.devices))
            try:
                engine = Engine(spec, hold=StepGate.from_options(spec.options))
            except ModelUnavailable:
                raise
            except Exception as exc:  # a broken checkpoint fails its jobs, not the worker; the next job retries
                log.exception("model %s failed to load", model)
                raise ModelUnavailable(f"model {model!r} failed to load: {exc}") from exc
            self._engines[model] = engine
            log.info("model %s ready", model)
            return engine

    def preload(self) -> None:
        """Build every served engine now, so the first job does not pay for loading."""
        for model in self.models:
            try:
                self.get(model)
            except ModelUnavailable as exc:
                log.error("model %s unavailable: %s", model, exc)

    def close(self) -> None:
        self._closed = True
        for name, engine in list(self._engines.items()):
            try:
                engine.close()
            except Exception:
                log.exception("closing engine %s failed", name)
        self._engines.clear()
