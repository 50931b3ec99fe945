"""Writes tests/data/tokenizer_corpus.txt: varied lines for tokenizer parity.

Deterministic (seeded); rerun to regenerate. One document per line, so no
line contains '\n' (a few contain '\r', tabs and other controls on purpose).
"""
import random
import sys

rng = random.Random(20261129)
lines = []

english = [
    "The quick brown fox jumps over the lazy dog.",
    "Mixture-of-Experts models route each token to a few experts out of many.",
    "It's a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife.",
    "I'm sure they'll say we've done what they'd've done; you're right, isn't it?",
    "HELLO WORLD! SHOUTING IN ALL CAPS IS RUDE, ISN'T IT?",
    "CamelCaseIdentifiersLikeThis and snake_case_like_this and kebab-case-like-this.",
    "e.g. i.e. etc. Mr. Mrs. Dr. St. vs. a.m. p.m.",
    "She said, \"Don't go!\" -- and then: 'Why not?'",
    "Email me at someone@example.com or visit https://example.org/path?query=1&x=y#frag",
    "Prices: $19.99, €5, £3.50, ¥1000, ₹250, 100% off!!!",
    "What is 12 + 35? Please answer with a number only.",
    "Reverse the string 'abcdef' and return the result.",
    "Sort these numbers in ascending order: 42 7 19 3 88 61.",
    "Translate to French: Where is the library?",
    "Summarise the following paragraph in one sentence.",
    "  Leading spaces, trailing spaces   ",
    "Tabs\tbetween\twords\tand\t\tdouble\ttabs",
    "Multiple     spaces          and               more",
    "Carriage\rreturn inside a line",
    "Windows line ending at the end\r",
    "Form\x0cfeed and vertical\x0btab",
    "Non\u00a0breaking\u00a0spaces and\u2003em\u2002en\u2009thin spaces",
    "Next\u0085line character (NEL) and line\u2028separator and paragraph\u2029separator",
    "Zero\u200bwidth\u200cnon\u200djoiner and BOM\ufeff here",
    "Soft\u00adhyphen and word\u2060joiner",
    "",
    " ",
    "a",
    "!",
    "               ",
    "\t\t\t",
]
lines += english

cjk = [
    "你好，世界！今天天气很好。",
    "我爱自然语言处理和深度学习。",
    "混合专家模型只激活少量专家。",
    "これは日本語のテストです。ひらがなとカタカナ、漢字。",
    "東京都渋谷区でラーメンを食べました。",
    "한국어 문장도 테스트합니다. 안녕하세요!",
    "中文English混合text测试123数字",
    "「引用」『二重引用』【括弧】《书名》",
    "全角文字：ＡＢＣ１２３！？",
    "繁體中文與简体中文",
    "ｶﾀｶﾅ半角カナ",
]
lines += cjk

other_scripts = [
    "Привет, мир! Как дела?",
    "Ελληνικά: Γειά σου Κόσμε",
    "العربية: مرحبا بالعالم",
    "עברית: שלום עולם",
    "हिन्दी: नमस्ते दुनिया",
    "ไทย: สวัสดีชาวโลก",
    "Tiếng Việt: Xin chào thế giới",
    "Türkçe: İstanbul'da ılık bir gün",
    "Deutsch: Straße, Größe, Äpfel, Übung",
    "Français: À bientôt, ça va? Où êtes-vous?",
    "Español: ¿Dónde está la biblioteca? ¡Hola!",
    "Polski: Zażółć gęślą jaźń",
    "Composed é vs decomposed e\u0301 and ñ vs n\u0303",
    "Ligatures: ﬁ ﬂ ﬀ ﬃ and Ⅻ ① ² ½",
    "Math: ∑ᵢ xᵢ² ≤ ∫₀^∞ f(x) dx, ∀x ∈ ℝ, √2 ≈ 1.414",
    "Arrows → ← ↑ ↓ ⇒ ⇔ and boxes ■ □ ▲ ▼",
    "Georgian ქართული, Armenian Հայերեն, Amharic አማርኛ",
]
lines += other_scripts

emoji = [
    "emoji 😀😃😄😁 and 👍🏽👍🏿",
    "family 👨‍👩‍👧‍👦 and flags 🇺🇸🇯🇵🇩🇪",
    "hearts ❤️💙💚 and stars ⭐🌟✨",
    "🚀 launch at 10:00 🎉🎉🎉",
    "keycap 1️⃣ 2️⃣ #️⃣ and ©️ ®️ ™️",
    "🏳️‍🌈 🏴‍☠️ 🧑🏽‍💻",
]
lines += emoji

code = [
    "def fib(n): return n if n < 2 else fib(n - 1) + fib(n - 2)",
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }",
    "#include <vector>  // std::vector<int> v{1, 2, 3};",
    "    if x is not None and len(x) > 0:",
    "        return {\"key\": [1, 2, 3], 'other': None}",
    "const f = async (x) => { await fetch(`/api/${x}`); };",
    "SELECT name, COUNT(*) FROM users WHERE age >= 18 GROUP BY name;",
    "<div class=\"container\"><p>Hello &amp; welcome</p></div>",
    "{\"model_type\": \"qwen3_moe\", \"num_experts\": 128, \"top_k\": 8}",
    "x = [i**2 for i in range(10) if i % 2 == 0]",
    "fn main() { println!(\"{:?}\", vec![1u8, 2, 3]); }",
    "    \t  mixed indentation",
    "a+=b;c-=d;e*=f;g/=h;i%=j;k<<=1;l>>=2;m&&=n;o||=p;",
    "`backticks` and ~tilde~ and ^caret^ and |pipe| and \\backslash\\",
    "regex: ^[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\\.[a-zA-Z]{2,}$",
    "path/to/some/file.txt C:\\Windows\\System32 ../../up",
    "0x1F 0b1010 0o777 1e-9 -3.5e+10 1_000_000",
    "if(a&&b||!c){return-1;}else{return+1;}",
    "'''docstring''' \"\"\"another\"\"\" r'raw\\n' f'{x!r:>10}'",
    "__init__ __name__ __main__ _private __dunder__",
]
lines += code

digits = [
    "1", "12", "123", "1234", "12345", "123456789012345678901234567890",
    "3.14159265358979323846", "2026-11-29T06:50:25Z", "+1 (555) 123-4567",
    "١٢٣٤٥ Arabic-Indic digits and ０１２３ fullwidth digits and ➊➋➌",
    "Version 2.15.0, build 4096, port 8080, 192.168.0.1",
    "1,000,000.00 and 1.000.000,00 and 1 000 000",
    "-42 +42 ±42 42% 42° 42nd 4th 3rd 1st",
]
lines += digits

specials = [
    "<|im_start|>system\nYou are helpful.<|im_end|>".replace("\n", " "),
    "<|im_start|>user What is 2+2?<|im_end|><|im_start|>assistant 4<|im_end|>",
    "<|endoftext|>text after end",
    "text<|endoftext|>more<|endoftext|>",
    "<|fim_prefix|>def f(<|fim_suffix|>):<|fim_middle|>",
    "<think> reasoning here </think> answer",
    "<｜begin▁of▁sentence｜>You are a helpful assistant<｜User｜>Hi<｜Assistant｜>Hello!<｜end▁of▁sentence｜>",
    "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather",
    "<s>[INST] What is the capital of France? [/INST] Paris</s>",
    "<s> leading bos with space",
    "</s></s></s>",
    "<unk> unknown token written in text",
    "<|startoftext|>gpt-oss<|return|><|constrain|><|channel|>analysis<|message|>",
    "<|start|>user<|message|>hello<|end|>",
    "almost special <|im_start or im_end|> but not",
    "<|im_start|><|im_start|><|im_end|><|im_end|>",
    "<<|im_start|>> nested brackets <s><s>>",
]
lines += specials

# Random lines from a mixed alphabet: stress BPE merges and regex classes.
alphabet = ("abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 .,;:!?'\"()[]{}<>-_/\\"
            "     \t éüñßø 中文日本語 한국 😀🎉 ∑√ ") 
for _ in range(60):
    n = rng.randint(1, 120)
    lines.append("".join(rng.choice(alphabet) for _ in range(n)))

# Random words with random whitespace runs.
words = "the of and to in is that it for on with as was at by an be this from or".split()
for _ in range(30):
    parts = []
    for _ in range(rng.randint(1, 25)):
        parts.append(rng.choice(words))
        parts.append(rng.choice([" ", "  ", "   ", "\t", " \t ", "      "]))
    lines.append("".join(parts))

# Long lines.
lines.append("word " * 400)
lines.append("x" * 2000)
lines.append(" " * 1000 + "end")
lines.append("😀" * 300)
lines.append("中" * 500)
lines.append("1234567890" * 100)

for line in lines:
    assert "\n" not in line, line
sys.stdout.reconfigure(newline="\n")
with open(sys.argv[1] if len(sys.argv) > 1 else "tests/data/tokenizer_corpus.txt", "w",
          encoding="utf-8", newline="\n") as f:
    for line in lines:
        f.write(line + "\n")
print(len(lines), "lines")
