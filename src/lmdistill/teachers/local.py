"""A local Hugging Face causal LM as a black-box teacher: `ChatGenerator` with a name and a cache identity.

Generation itself (batching, the chat template, stop strings, log-probs) is
`lmdistill.models.generation.ChatGenerator`, which also generates from students in `lmdistill eval`.
"""

from __future__ import annotations

from lmdistill.models.forward import weights_fingerprint
from lmdistill.models.generation import ChatGenerator


class LocalTeacher(ChatGenerator):
    """`Teacher` over a loaded model and tokenizer.

    Args:
        model: a causal LM (put it on its device first); used in eval mode under no_grad.
        tokenizer: its tokenizer, with a chat template.
        name: the model name recorded in cache keys and provenance.
        batch_size: requests per generate call.
    """

    backend = "local"

    def __init__(self, model, tokenizer, *, name: str, batch_size: int = 8):
        super().__init__(model, tokenizer, batch_size=batch_size)
        self.name = name
        self._cache_id: str | None = None

    @property
    def cache_id(self) -> str:
        """What identifies this teacher in cache keys: its name plus a fingerprint of the weights'
        identity (config, dtype, and the weight files' names, sizes and times), so a model retrained
        into the same folder does not reuse the old model's answers."""
        if self._cache_id is None:
            self._cache_id = f"{self.name}@{weights_fingerprint(self.model)}"
        return self._cache_id
