"""coalora: configuration-aware LoRA (CoA-LoRA) for quantized LLMs.

Heavy dependencies (transformers, peft, gradio, botorch) are imported where used,
so `import coalora` stays fast.
"""

__version__ = "0.1.0"


def _quiet_import_noise() -> None:
    """Drop two import-time warnings that concern no coalora user (docs/targets.md, "torchao").

    transformers imports torchao whenever it is installed (its torchao quantizer), and
    torchao 0.18 then logs "Failed to load .../_C_mxfp8...so" / "_C_cutlass_90a.abi3.so"
    (CUDA-only extensions that cannot load with CPU torch), and torch logs that torchao's
    Enums need no register_constant. Only those messages are filtered; the loggers' other
    warnings still show.
    """
    import logging

    def drop(logger: str, start: str, *any_of: str) -> None:
        def keep(r: logging.LogRecord) -> bool:
            m = r.getMessage()
            return not (m.startswith(start) and any(a in m for a in any_of))

        logging.getLogger(logger).addFilter(keep)

    drop("torchao", "Failed to load ", "/_C_mxfp8.", "/_C_cutlass_90a.")
    drop("torch.utils._pytree", "<enum ", "is an Enum subclass and is now natively supported")


_quiet_import_noise()
