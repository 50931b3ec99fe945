"""Reference ids and texts for the testbed's byte-level tokenizer, from the
Hugging Face `tokenizers` library (tests/testbed/tasks_test.cc compares).

usage: byte_tokenizer_reference.py TOKENIZER_JSON CASES_JSON
CASES_JSON: {"encode": [text, ...], "decode": [[id, ...], ...]}
prints:     {"encode": [[id, ...], ...], "encode_special": [[id, ...], ...],
             "decode": [text, ...], "decode_skip_special": [text, ...],
             "vocab_size": N}
"""
import json
import sys

from tokenizers import Tokenizer


def main():
    tokenizer = Tokenizer.from_file(sys.argv[1])
    with open(sys.argv[2], encoding="utf-8") as f:
        cases = json.load(f)
    out = {
        "encode": [tokenizer.encode(t, add_special_tokens=False).ids for t in cases["encode"]],
        "encode_special": [tokenizer.encode(t, add_special_tokens=True).ids
                           for t in cases["encode"]],
        "decode": [tokenizer.decode(ids, skip_special_tokens=False) for ids in cases["decode"]],
        "decode_skip_special": [tokenizer.decode(ids, skip_special_tokens=True)
                                for ids in cases["decode"]],
        "vocab_size": tokenizer.get_vocab_size(with_added_tokens=True),
    }
    # ensure_ascii keeps stdout ASCII whatever the locale.
    print(json.dumps(out))


if __name__ == "__main__":
    main()
