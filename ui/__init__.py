"""The coalora app: engine (model, evaluation, allocation, export; no gradio), session state,
plots (pure records -> plotly Figure), handlers (plain functions) and layout (gr.Blocks).

Only ui/layout.py and ui/handlers.py import gradio.
"""
