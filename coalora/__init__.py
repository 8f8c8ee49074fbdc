"""coalora: configuration-aware LoRA (CoA-LoRA) for quantized LLMs.

Heavy dependencies (transformers, peft, gradio, botorch) are imported where used,
so `import coalora` stays fast.
"""

__version__ = "0.1.0"
