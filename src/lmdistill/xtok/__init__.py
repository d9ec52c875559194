"""Cross-tokenizer distillation components: alignment of two tokenizations, shared vocabulary, loss terms,
and the paired features of a record read by both tokenizers.

Training uses them through `lmdistill.training.xtok_step` (one teacher of another tokenizer,
`distill.cross_tokenizer`) and `lmdistill.training.xtok_routed_step` (several routed teachers, some of another
tokenizer); see docs/cross_tokenizer.md.
"""
