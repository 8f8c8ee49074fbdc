"""Standalone loader scripts that `coalora export` copies into an export folder (they import
only torch, transformers, peft and their runtime, never coalora)."""
