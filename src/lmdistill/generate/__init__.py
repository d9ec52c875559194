"""Black-box data generation: responses, chain-of-thought rationales, self-instruct, ICL labels."""

from lmdistill.generate.config import GenerateConfig, load_generate_config
from lmdistill.generate.run import run_generate

__all__ = ["GenerateConfig", "load_generate_config", "run_generate"]
