"""ZeroGPU support: model work inside `spaces.GPU` functions on a ZeroGPU Space, nothing elsewhere.

A ZeroGPU Space (Hugging Face, Gradio SDK) sets SPACES_ZERO_GPU and ships the `spaces`
package; a GPU is attached only while a `@spaces.GPU(duration=...)` function runs, and each
user has a daily quota of GPU seconds. Off ZeroGPU (a laptop, `make app`, a CPU Space)
`gpu(fn, duration)` returns `fn` itself and `spaces` is never imported, so it need not be
installed. On ZeroGPU the wrapped function also turns the package's quota errors into one
clear message (QUOTA_MESSAGE) instead of a bare traceback.

Importing this module imports `spaces` on ZeroGPU (it must come before torch initialises
CUDA); app.py imports it first.
"""

from __future__ import annotations

import functools
import inspect
import os
from typing import Any, Callable, Mapping

QUOTA_TITLE = "GPU quota used up"
QUOTA_MESSAGE = ("This Space's GPU time for you is used up (ZeroGPU quota): {detail} Nothing was evaluated. "
                 "Try again later, log in to Hugging Face for a larger quota, or run the app on your own machine "
                 "(`make app`, CPU only).")


def on_zerogpu(env: Mapping[str, str] = os.environ) -> bool:
    """True on a ZeroGPU Space (SPACES_ZERO_GPU set to 1 / true, as the `spaces` package reads it)."""
    return (env.get("SPACES_ZERO_GPU") or "").strip().lower() in ("1", "t", "true")


if on_zerogpu():  # pragma: no cover - only on a ZeroGPU Space
    import spaces  # noqa: F401  (before torch touches CUDA)


def is_quota_error(e: BaseException) -> bool:
    """The `spaces` package's quota refusals: gr.Error titled 'ZeroGPU quota exceeded' (or
    'pending credits exceeded'), messages such as 'You have exceeded your free ZeroGPU quota'
    or 'Space app has reached its GPU limit'."""
    text = f"{getattr(e, 'title', '') or ''} {getattr(e, 'message', '') or ''} {e}".lower()
    return "quota" in text or "gpu limit" in text or "credits exceeded" in text


def quota_error(e: BaseException) -> Exception:
    """One clear gr.Error for a quota refusal `e` (its detail kept: how long until retry)."""
    import gradio as gr

    detail = str(getattr(e, "message", "") or e).strip() or "no GPU time left today."
    return gr.Error(QUOTA_MESSAGE.format(detail=detail), title=QUOTA_TITLE)


def gpu(fn: Callable[..., Any], duration: int = 60, *, enabled: bool | None = None,
        decorator: Callable[[Callable[..., Any]], Callable[..., Any]] | None = None) -> Callable[..., Any]:
    """`fn` itself off ZeroGPU; on ZeroGPU `spaces.GPU(duration=duration)(fn)` with quota errors
    turned into QUOTA_MESSAGE. Generator functions (streamed evaluations) stay generators.
    enabled / decorator: for tests (default: on_zerogpu() and spaces.GPU)."""
    if not (on_zerogpu() if enabled is None else enabled):
        return fn
    if decorator is None:  # pragma: no cover - only on a ZeroGPU Space
        import spaces

        decorator = spaces.GPU(duration=duration)
    wrapped = decorator(fn)

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen(*args: Any, **kwargs: Any) -> Any:
            try:
                yield from wrapped(*args, **kwargs)
            except Exception as e:
                if is_quota_error(e):
                    raise quota_error(e) from e
                raise
        return gen

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return wrapped(*args, **kwargs)
        except Exception as e:
            if is_quota_error(e):
                raise quota_error(e) from e
            raise
    return call


def prepare(engine: Any, *, enabled: bool | None = None) -> str:
    """On ZeroGPU: move the engine's model to CUDA (at start-up, outside any GPU function, as
    ZeroGPU expects; the GPU is attached inside `gpu` functions) and compute in bf16.
    -> the device the model is on ("cpu" elsewhere, where nothing changes)."""
    if not (on_zerogpu() if enabled is None else enabled):
        return "cpu"
    engine.model.to("cuda")
    engine.dtype = "bf16"
    return "cuda"
