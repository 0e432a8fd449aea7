"""Measured quality of quantized variants against a reference, and the report that shows it.

Imports flow one way: ladder.py (the run) uses text.py (which text, chunks), models.py (GGUF and
ONNX models that give logits), metrics.py (KL divergence, perplexity, top token) and report.py
(tables, Markdown and JSON); none of those imports ladder.py.
"""
