"""Build train.jsonl and heldout.jsonl from CPython's help() topics (`pydoc_data.topics`, the language
reference in English prose, shipped with every Python; PSF licence). Plain-text rows for distillation
between models with different tokenizers (`configs/cross_tokenizer.yaml`), which needs text or
prompt/completion rows. Deterministic: `python data/python_topics/make.py` rewrites the same files.

Topics sorted by name; paragraphs of >= 200 characters, mostly letters; every 5th topic held out."""

from __future__ import annotations

import json
from pathlib import Path
from pydoc_data.topics import topics

HERE = Path(__file__).parent


def paragraphs(text: str) -> list[str]:
    out = []
    for block in text.split("\n\n"):
        para = " ".join(block.split())
        letters = sum(c.isalpha() or c == " " for c in para)
        if len(para) >= 200 and letters >= 0.85 * len(para):
            out.append(para[:600])
    return out


def main() -> None:
    train, held = [], []
    for i, name in enumerate(sorted(topics)):
        (held if i % 5 == 0 else train).extend({"text": p} for p in paragraphs(topics[name])[:4])
    for path, rows in ((HERE / "train.jsonl", train[:400]), (HERE / "heldout.jsonl", held[:60])):
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        print(f"{path.name}: {len(rows)} rows")


if __name__ == "__main__":
    main()
