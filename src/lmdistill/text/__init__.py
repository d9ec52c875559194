"""Text utilities shared by data generation and evaluation: answer extraction, ROUGE-L."""

from lmdistill.text.answers import extract_answer, majority, normalize_answer, parse_json_object
from lmdistill.text.rouge import rouge_l

__all__ = ["extract_answer", "majority", "normalize_answer", "parse_json_object", "rouge_l"]
