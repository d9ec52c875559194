"""Models: the embedded default teacher, loading, shrinking a teacher into a student, vocabulary checks."""

from lmdistill.models.embedded import (
    ALIASES,
    EMBEDDED,
    EmbeddedModel,
    cache_dir,
    ensure_embedded,
    resolve_model_path,
    short_names,
)
from lmdistill.models.loading import (
    DTYPES,
    count_parameters,
    load_model,
    load_teacher,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
)
from lmdistill.models.shrink import (
    describe_sizes,
    evenly_spaced_layers,
    find_decoder_layers,
    narrow_defaults,
    shrink_model,
)
from lmdistill.models.vocab import check_vocab, checked_vocab_size, head_rows, real_vocab_size

__all__ = [
    "ALIASES",
    "DTYPES",
    "EMBEDDED",
    "EmbeddedModel",
    "cache_dir",
    "check_vocab",
    "checked_vocab_size",
    "count_parameters",
    "describe_sizes",
    "ensure_embedded",
    "evenly_spaced_layers",
    "find_decoder_layers",
    "head_rows",
    "load_model",
    "load_teacher",
    "load_tokenizer",
    "narrow_defaults",
    "real_vocab_size",
    "resolve_device",
    "resolve_dtype",
    "resolve_model_path",
    "short_names",
    "shrink_model",
]
