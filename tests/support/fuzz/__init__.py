"""Fuzzing helpers for the GGUF validator: crafted headers, a resource-bounded runner, the atheris harness."""
