"""premoe's tokenizer against the Hugging Face `tokenizers` library.

Runs `premoe tokenize` (the CLI contract other tools rely on) over the
committed corpus with the real tokenizer.json files in ../shared/tokenizers,
and with variants of them that exercise the components those files do not
use (Metaspace, Split behaviours, added-token options, normalizers, template
post-processing). Every expected id and text comes from `tokenizers` itself.

usage: tokenizer_parity_test.py --premoe PATH [--shared DIR] [--corpus FILE]
"""
import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import unicodedata

from tokenizers import Tokenizer

REAL = ["deepseek_v3", "qwen3", "gptoss", "llama2"]
# Byte-level tokenizers give the text back exactly, up to their normalizer.
ROUND_TRIP = {"deepseek_v3": lambda s: s, "gptoss": lambda s: s,
              "qwen3": lambda s: unicodedata.normalize("NFC", s)}


def premoe(binary, tokenizer_path, lines, *flags):
    proc = subprocess.run([binary, "tokenize", "--tokenizer", tokenizer_path, *flags],
                          input="".join(l + "\n" for l in lines).encode("utf-8"),
                          capture_output=True, timeout=600)
    if proc.returncode != 0:
        raise AssertionError(f"premoe tokenize {flags} failed: {proc.stderr.decode()}")
    # Split on '\n' only: the corpus holds \r, \x0b, \x85, \u2028 inside lines.
    out = proc.stdout.decode("utf-8").split("\n")
    assert out[-1] == "", "output must end with a newline"
    return out[:-1]


class Checker:
    def __init__(self, binary):
        self.binary = binary
        self.failures = 0
        self.checks = 0
        self.failed_names = {}

    def fail(self, name, message):
        self.failures += 1
        key = name.rsplit(" line ", 1)[0]
        self.failed_names[key] = self.failed_names.get(key, 0) + 1
        if self.failed_names[key] <= 3:
            print(f"FAIL {name}: {message}")

    def compare(self, name, path, lines, specials=(False, True), decode=(False, True)):
        """Encodes (with/without special tokens) and decodes (skipping special
        tokens or not) the corpus; returns the decoded texts with skip=False."""
        ref = Tokenizer.from_file(path)
        for special in specials:
            flags = ["--add-special-tokens"] if special else []
            ours = premoe(self.binary, path, lines, *flags)
            assert len(ours) == len(lines), (len(ours), len(lines))
            for i, (line, got) in enumerate(zip(lines, ours)):
                self.checks += 1
                want = ref.encode(line, add_special_tokens=special).ids
                if json.loads(got) != want:
                    self.fail(f"{name} encode special={special} line {i + 1}",
                              f"{line!r}\n  want {want}\n  got  {json.loads(got)}")
        ids = [ref.encode(line, add_special_tokens=False).ids for line in lines]
        decoded = None
        for skip in decode:
            flags = ["--decode"] + (["--skip-special-tokens"] if skip else [])
            want_texts = [ref.decode(x, skip_special_tokens=skip) for x in ids]
            # Decoded text could hold '\n'; the corpus has none, so it never does.
            got_texts = premoe(self.binary, path, [json.dumps(x) for x in ids], *flags)
            for i, (want, got) in enumerate(zip(want_texts, got_texts)):
                self.checks += 1
                if want != got:
                    self.fail(f"{name} decode skip={skip} line {i + 1}", f"want {want!r}\n  got  {got!r}")
            if not skip:
                decoded = got_texts
        return decoded


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def variants(shared, tmp):
    """Small edits of real files, each hitting components the originals lack."""
    qwen = load(os.path.join(shared, "qwen3.tokenizer.json"))
    llama = load(os.path.join(shared, "llama2.tokenizer.json"))
    out = {}

    def put(name, tok):
        path = os.path.join(tmp, name + ".json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(tok, f, ensure_ascii=False)
        out[name] = path

    # Split behaviours and invert on the byte-level pipeline.
    for behavior in ["Removed", "MergedWithPrevious", "MergedWithNext", "Contiguous"]:
        for invert in (False, True):
            t = copy.deepcopy(qwen)
            t["pre_tokenizer"]["pretokenizers"][0]["behavior"] = behavior
            t["pre_tokenizer"]["pretokenizers"][0]["invert"] = invert
            put(f"qwen3_split_{behavior}_{invert}", t)
    # A string pattern, then the GPT-2 regex inside ByteLevel, with a prefix space.
    t = copy.deepcopy(qwen)
    t["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"String": ", "}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}]}
    put("qwen3_bytelevel_regex_prefix", t)
    # Normalizers.
    for norm in [{"type": "NFKC"}, {"type": "NFD"}, {"type": "NFKD"}, {"type": "Lowercase"},
                 {"type": "Sequence", "normalizers": [
                     {"type": "Strip", "strip_left": True, "strip_right": True},
                     {"type": "Replace", "pattern": {"Regex": "[0-9]+"}, "content": "#"}]}]:
        t = copy.deepcopy(qwen)
        t["normalizer"] = norm
        put(f"qwen3_norm_{norm['type']}_{len(out)}", t)
    # Added tokens: lstrip / rstrip / single_word / normalized, not special.
    t = copy.deepcopy(qwen)
    next_id = max(a["id"] for a in t["added_tokens"]) + 1
    for content, opts in [("[MASK]", dict(lstrip=True, rstrip=False)),
                          ("[SEP]", dict(lstrip=False, rstrip=True)),
                          ("word", dict(single_word=True)),
                          ("the", dict(normalized=True)),
                          ("[both]", dict(lstrip=True, rstrip=True))]:
        entry = {"id": next_id, "content": content, "single_word": False, "lstrip": False,
                 "rstrip": False, "normalized": False, "special": False}
        entry.update(opts)
        t["added_tokens"].append(entry)
        next_id += 1
    put("qwen3_added_options", t)
    # Template post-processing with a pair of special tokens.
    t = copy.deepcopy(qwen)
    t["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<|im_start|>", "type_id": 0}},
                   {"Sequence": {"id": "A", "type_id": 0}},
                   {"SpecialToken": {"id": "<|im_end|>", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {
            "<|im_start|>": {"id": "<|im_start|>", "ids": [151644], "tokens": ["<|im_start|>"]},
            "<|im_end|>": {"id": "<|im_end|>", "ids": [151645], "tokens": ["<|im_end|>"]}}}
    put("qwen3_template", t)
    # The non-legacy SentencePiece layout: Metaspace pre-tokenizer and decoder.
    for scheme in ["first", "always", "never"]:
        for split in (True, False):
            t = copy.deepcopy(llama)
            t["normalizer"] = None
            t["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581",
                                  "prepend_scheme": scheme, "split": split}
            t["decoder"] = {"type": "Sequence", "decoders": [
                {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": scheme,
                 "split": split},
                {"type": "ByteFallback"}, {"type": "Fuse"}]}
            put(f"llama2_metaspace_{scheme}_{split}", t)
    # No byte fallback: unknown characters become <unk>, fused or not.
    for fuse in (True, False):
        t = copy.deepcopy(llama)
        t["model"]["byte_fallback"] = False
        t["model"]["fuse_unk"] = fuse
        put(f"llama2_unk_fuse_{fuse}", t)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--premoe", required=True)
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(os.path.dirname(here))
    ap.add_argument("--shared", default=os.path.join(root, "..", "shared", "tokenizers"))
    ap.add_argument("--corpus", default=os.path.join(root, "tests", "data", "tokenizer_corpus.txt"))
    args = ap.parse_args()

    with open(args.corpus, encoding="utf-8", newline="") as f:
        lines = f.read().split("\n")[:-1]
    assert len(lines) >= 200, len(lines)
    checker = Checker(args.premoe)

    for name in REAL:
        path = os.path.join(args.shared, name + ".tokenizer.json")
        # The ids were just checked equal to the reference's, so decoding the
        # reference's ids is decoding ours: decode(encode(x)) == x where the
        # tokenizer is lossless.
        back = checker.compare(name, path, lines)
        exact = 0
        for i, (line, text) in enumerate(zip(lines, back)):
            checker.checks += 1
            if name in ROUND_TRIP and text != ROUND_TRIP[name](line):
                checker.fail(f"{name} round trip line {i + 1}", f"{line!r} -> {text!r}")
            exact += text == line
        print(f"{name}: {len(lines)} lines; round trip exact on {exact}/{len(lines)}")

    with tempfile.TemporaryDirectory() as tmp:
        made = variants(args.shared, tmp)
        for name, path in made.items():
            checker.compare(name, path, lines,
                            specials=(True,) if "template" in name else (False,),
                            decode=(False,) if name.startswith("llama2") else ())
        print(f"variants: {len(made)} tokenizer.json variants checked")

    for key, count in sorted(checker.failed_names.items()):
        print(f"  {count} failures in {key}")
    print(f"{checker.checks - checker.failures} passed, {checker.failures} failed")
    return 1 if checker.failures else 0


if __name__ == "__main__":
    sys.exit(main())
