"""Cross-tokenizer distillation components: alignment of two tokenizations, shared vocabulary, loss terms.

Not wired into training yet (see docs/cross_tokenizer.md).
"""
