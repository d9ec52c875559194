"""Who samples the student's completions for on-policy steps: transformers `generate` in this process
(`GenerateSampler`) or a vLLM server whose weights follow the student's (`VllmSampler`), behind one
interface (`CompletionSampler.sample(model, SampleRequest) -> completions`)."""

from lmdistill.training.samplers.base import CompletionSampler, GenerateSampler, SampleRequest, cut_at_eos

__all__ = ["CompletionSampler", "GenerateSampler", "SampleRequest", "cut_at_eos"]
