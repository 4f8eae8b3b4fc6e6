#!/usr/bin/env python3
"""Regenerates exec/tests/data/tokenizer_<model>.json: reference token ids for fixed texts.

Developer tool, not used by builds or tests. The reference is the Hugging Face `tokenizers`
library over a tokenizer.json converted from the GGUF metadata by the converter that matched the
transformers library's own conversion on 3,536 texts (the project's shared tools). Needs
`pip install gguf==0.19.0 tokenizers==0.23.3`.

Usage: tokenizer_reference.py MODEL_ID model.gguf converter.py data/uci-sentiment.jsonl OUT.json
"""
import json
import subprocess
import sys
import tempfile

from tokenizers import Tokenizer

EDGE_CASES = [
    "", " ", "  leading and trailing  ", "Hello, world!", "It's 2024-11-29 and 3.14159 > 42.",
    "1234567890 12 345 6789", "naïve café — déjà vu", "日本語のテキスト", "emoji 🎉🚀 done",
    "tabs\tand\nnewlines\r\n\n", "def f(x):\n    return x ** 2  # square", "SELECT * FROM t WHERE a <> 'b';",
    "<|im_start|>user\nhi<|im_end|>", "Don't you'll we're I'm they've", "UPPER lower MiXeD",
    "a" * 300, "http://example.invalid/path?q=1&r=2", "\u00a0non-breaking\u2009thin",
]


def main():
    model_id, gguf, converter, sentences, out = sys.argv[1:6]
    with tempfile.TemporaryDirectory() as tmp:
        tj = f"{tmp}/tokenizer.json"
        subprocess.run([sys.executable, converter, gguf, tj], check=True)
        tok = Tokenizer.from_file(tj)
    rows = [json.loads(line) for line in open(sentences, encoding="utf-8")]
    texts = [r["text"] for r in rows[::10]] + EDGE_CASES
    cases = [{"text": t, "ids": tok.encode(t, add_special_tokens=False).ids} for t in texts]
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"model": model_id, "cases": cases}, f, ensure_ascii=False, indent=0)
    print(f"{model_id}: {len(cases)} cases -> {out}")


if __name__ == "__main__":
    main()
