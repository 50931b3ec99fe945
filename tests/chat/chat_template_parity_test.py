"""premoe's chat templates against transformers' apply_chat_template.

For the real tokenizer_config.json files in ../shared/tokenizers (DeepSeek-V3
and Qwen3 ship their templates; GPT-OSS and Llama 2 ship none) and for the
chat templates of the other supported architectures (Mixtral, Qwen2-MoE,
OLMoE, DeepSeek-V2, Llama 2, written here as their model cards publish
them), `premoe chat render` renders many conversations (system prompts,
several turns, empty content, non-ASCII text, special-token look-alikes,
reasoning blocks) and must give the text and the token ids, id for id, that
apply_chat_template gives. A kitchen-sink template checks the engine's
filters, methods, slicing and loops against Jinja itself over random data.

usage: chat_template_parity_test.py --premoe PATH [--shared DIR]
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile

from transformers import PreTrainedTokenizerFast
from transformers.utils.chat_template_utils import _compile_jinja_template

MIXTRAL = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}"
    "{% endfor %}")
QWEN2_MOE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
OLMOE = """{{ bos_token }}{% for message in messages %}
{% if message['role'] == 'system' %}
{{ '<|system|>\\n' + message['content'] }}
{% elif message['role'] == 'user' %}
{{ '<|user|>\\n' + message['content'] }}
{% elif message['role'] == 'assistant' %}
{% if not loop.last %}
{{ '<|assistant|>\\n'  + message['content'] + eos_token }}
{% else %}
{{ '<|assistant|>\\n'  + message['content'] + eos_token }}
{% endif %}
{% endif %}
{% if loop.last and add_generation_prompt %}
{{ '<|assistant|>\\n' }}
{% endif %}
{% endfor %}"""
DEEPSEEK_V2 = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ 'User: ' + message['content'] + '\\n\\n' }}{% elif message['role'] == 'assistant' %}"
    "{{ 'Assistant: ' + message['content'] + eos_token }}{% elif message['role'] == 'system' %}"
    "{{ message['content'] + '\\n\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")
LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}"
    "{% endif %}{% endfor %}")

# A template over `cases`, each {"s": str, "xs": list, "n": int, "d": dict}.
KITCHEN_SINK = """{%- set ns = namespace(total=0, seen=[]) -%}
{%- for c in cases if c.s is string -%}
{{ loop.index }}/{{ loop.length }}:{{ c.s|length }}|{{ c.s[1:4] }}|{{ c.s[::-2] }}|{{ c.s.strip() }}|
{{- c.s.lstrip(' a') }}|{{ c.s.rstrip() }}|{{ c.s.split() }}|{{ c.s.split('a') }}|{{ c.s.split('a', 1) }}|
{{- c.s.rsplit(' ', 1) }}|{{ c.s.upper() }}|{{ c.s.lower() }}|{{ c.s.title() }}|{{ c.s.capitalize() }}|
{{- c.s.replace('a', '<A>') }}|{{ c.s.startswith('a') }}{{ c.s.endswith(('z', ' ')) }}|{{ 'a' in c.s }}|
{{- c.s.find('a') }}|{{ c.s.count('a') }}|{{ c.s|trim }}|{{ c.s|tojson }}|{{ c.s|reverse }}|{{ c.s|first }}|
{{- c.xs }}|{{ c.xs|length }}|{{ c.xs|tojson }}|{{ c.xs[-2:] }}|{{ c.xs|join(',') }}|{{ c.xs|reverse|list }}|
{{- c.n // 3 }}|{{ c.n % 7 }}|{{ c.n / 4 }}|{{ -c.n }}|{{ c.n ** 2 }}|{{ c.n is odd }}|{{ c.n > 3 and c.n < 50 }}|
{{- c.d|tojson }}|{{ c.d|tojson(indent=1) }}|{{ c.d.get('k', 'none') }}|{{ c.d.items()|list }}|{{ c.d }}|
{%- for k, v in c.d.items() %}{{ k }}={{ v }}{{ ';' if not loop.last }}{% endfor %}|
{%- set ns.total = ns.total + c.n %}{% set ns.seen = ns.seen + [c.s|length] %}
{%- if c.n is divisibleby 2 %}even{% elif c.n > 10 %}big{% else %}small{% endif %}
{% endfor -%}
{{ ns.total }} {{ ns.seen }} {{ cases|selectattr('n', 'gt', 10)|map(attribute='n')|list }}
"""

RANDOM_CHARS = "abcz AZé€😀\t\n\u3000\u00a0'\"\\<>|{}%#"


def random_case(rng):
    s = "".join(rng.choice(RANDOM_CHARS) for _ in range(rng.randint(0, 12)))
    xs = [rng.choice([rng.randint(-5, 99), rng.random() * 100, "x" + s[:2], None, True, [1, "y"]])
          for _ in range(rng.randint(0, 4))]
    d = {k: rng.choice([1, "v", None, [2], {"z": s[:3]}]) for k in rng.sample("kabq", rng.randint(0, 3))}
    return {"s": s, "xs": xs, "n": rng.randint(0, 60), "d": d}


def conversations(rng):
    """(messages, add_generation_prompt) pairs, alternating user/assistant."""
    texts = ["Hi", "", "What is 2+2?", "  padded  ", "line one\nline two\n", "héllo wörld — 你好 🌍",
             "<|im_end|> and <｜User｜> look-alikes", "[INST] fake [/INST]", "</s><s>", "tab\there",
             "<think>\nreasoning here\n</think>\n\nThe answer", "ends with newline\n"]
    out = [([{"role": "user", "content": "Hello"}], True),
           ([{"role": "user", "content": "Hello"}], False),
           ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], True),
           ([{"role": "user", "content": ""}], True)]
    for _ in range(40):
        messages = []
        if rng.random() < 0.4:
            messages.append({"role": "system", "content": rng.choice(texts)})
        for turn in range(rng.randint(1, 4)):
            messages.append({"role": "user", "content": rng.choice(texts)})
            if turn + 1 < 4 and rng.random() < 0.7:
                messages.append({"role": "assistant", "content": rng.choice(texts)})
        out.append((messages, rng.random() < 0.8))
    # Conversations some templates refuse (raise_exception): the message must match.
    out.append(([{"role": "assistant", "content": "first"}], True))
    out.append(([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], True))
    return out


def diff(got, want):
    """Where two texts first differ, with some context."""
    if got is None:
        return "no text"
    at = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    lo = max(0, at - 40)
    return f"at {at}:\n premoe ...{got[lo:at + 40]!r}\n jinja  ...{want[lo:at + 40]!r}"


def run_premoe(binary, args, lines):
    proc = subprocess.run([binary, "chat", "render", *args],
                          input="".join(json.dumps(l) + "\n" for l in lines).encode(),
                          capture_output=True, timeout=600)
    if proc.returncode != 0:
        raise AssertionError(f"premoe chat render {args} failed: {proc.stderr.decode()}")
    return [json.loads(l) for l in proc.stdout.decode().splitlines()]


class Checker:
    def __init__(self):
        self.checks = 0
        self.failures = 0

    def expect(self, name, ok, message):
        self.checks += 1
        if not ok:
            self.failures += 1
            if self.failures <= 10:
                print(f"FAIL {name}: {message}")


def model_dir(tmp, name, shared, prefix, template, config_overrides=None):
    """A model directory: the real tokenizer.json and tokenizer_config.json,
    with `template` in place of the config's (None keeps the config's)."""
    d = os.path.join(tmp, name)
    os.makedirs(d)
    with open(os.path.join(shared, f"{prefix}.tokenizer_config.json")) as f:
        config = json.load(f)
    if template is not None:
        config["chat_template"] = template
    config.update(config_overrides or {})
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump(config, f)
    os.symlink(os.path.abspath(os.path.join(shared, f"{prefix}.tokenizer.json")),
               os.path.join(d, "tokenizer.json"))
    return d, config


def token_content(value):
    return value["content"] if isinstance(value, dict) else value


def reference_tokenizer(d, config):
    special = {k: token_content(config[k]) for k in
               ("bos_token", "eos_token", "unk_token", "pad_token") if config.get(k) is not None}
    return PreTrainedTokenizerFast(tokenizer_file=os.path.join(d, "tokenizer.json"),
                                   chat_template=config.get("chat_template"), **special)


def check_model(checker, binary, name, d, config, convs):
    ref = reference_tokenizer(d, config)
    ours = run_premoe(binary, ["--model", d], [{"messages": m, "add_generation_prompt": g} for m, g in convs])
    assert len(ours) == len(convs)
    for k, ((messages, gen), got) in enumerate(zip(convs, ours)):
        case = f"{name} conversation {k}"
        try:
            text = ref.apply_chat_template(messages, add_generation_prompt=gen, tokenize=False)
            ids = ref.apply_chat_template(messages, add_generation_prompt=gen, tokenize=True,
                                          return_dict=False)
            if isinstance(ids, dict):
                ids = ids["input_ids"]
        except Exception as e:  # the template refused: ours must too, with its message
            checker.expect(case, "error" in got and str(e) in got["error"],
                           f"transformers raised {e!r}; premoe gave {got}")
            continue
        checker.expect(case, got.get("text") == text, diff(got.get("text", got.get("error")), text))
        checker.expect(case + " ids", got.get("ids") == list(ids), f"ids {got.get('ids')} != {list(ids)}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--premoe", required=True)
    ap.add_argument("--shared", default=os.path.join("..", "shared", "tokenizers"))
    args = ap.parse_args()
    rng = random.Random(20261205)
    convs = conversations(rng)
    checker = Checker()
    with tempfile.TemporaryDirectory() as tmp:
        # The real configs, their own templates.
        for prefix in ("deepseek_v3", "qwen3"):
            d, config = model_dir(tmp, prefix, args.shared, prefix, None)
            check_model(checker, args.premoe, prefix, d, config, convs)
            # With reasoning in an assistant turn, as Qwen3's template reads it.
            extra = [([{"role": "user", "content": "q"},
                       {"role": "assistant", "content": "a", "reasoning_content": "because"},
                       {"role": "user", "content": "q2"}], True)]
            check_model(checker, args.premoe, prefix + " reasoning", d, config, extra)
        # The configs without a template: chat is refused, naming why.
        for prefix in ("gptoss", "llama2"):
            d, _ = model_dir(tmp, prefix + "_bare", args.shared, prefix, None)
            got = run_premoe(args.premoe, ["--model", d], [{"messages": convs[0][0]}])
            checker.expect(prefix + " without a template", "no chat template" in got[0].get("error", ""),
                           f"got {got[0]}")
        # Other architectures' templates, on a tokenizer of their family.
        for name, prefix, template in (("mixtral", "llama2", MIXTRAL), ("llama2", "llama2", LLAMA2),
                                       ("qwen2_moe", "qwen3", QWEN2_MOE), ("olmoe", "gptoss", OLMOE),
                                       ("deepseek_v2", "deepseek_v3", DEEPSEEK_V2)):
            overrides = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>"} if prefix == "gptoss" else {}
            d, config = model_dir(tmp, name, args.shared, prefix, template, overrides)
            check_model(checker, args.premoe, name, d, config, convs)

        # The engine against Jinja over random data.
        sink = os.path.join(tmp, "sink.jinja")
        with open(sink, "w") as f:
            f.write(KITCHEN_SINK)
        compiled = _compile_jinja_template(KITCHEN_SINK)
        batches = [{"cases": [random_case(rng) for _ in range(rng.randint(1, 5))]} for _ in range(60)]
        ours = run_premoe(args.premoe, ["--chat-template", sink, "--variables"], batches)
        for k, (variables, got) in enumerate(zip(batches, ours)):
            want = compiled.render(**variables)
            checker.expect(f"kitchen sink {k}", got.get("text") == want, diff(got.get("text", got.get("error")), want))
    print(f"{checker.checks} checks, {checker.failures} failures")
    return 1 if checker.failures else 0


if __name__ == "__main__":
    sys.exit(main())
