"""The texts on which the browser's tokenizers must give transformers' ids (tests/test_tokenize.py):
more than 5,000, seeded, in the categories of issue 17. `corpus()` returns (category, text) pairs.

- every prompt of prompt_sets/;
- text in more than 20 scripts: a sentence each, and seeded words drawn from each script's letters;
- emoji with ZWJ sequences, skin tones, flags and keycaps; combining marks; right-to-left text with
  and without bidirectional controls;
- code with tabs and CRLF line ends, runs of spaces and newlines;
- long numbers (with and without separators);
- the hostile strings of the security tests (HTML, Markdown, Jinja, special-token text);
- seeded random Unicode (every plane, no surrogates).
"""

from __future__ import annotations

import random

from conftest import CJK_EMOJI_TEXT, HOSTILE_TEXT, REPO

SEED = 17

# A sentence in each script, and the letters its random words are drawn from (code point ranges).
SCRIPTS = {
    "Latin": ("Ça alors, naïve Zoë mañana: Größe, Øresund, Łódź.", [(0x41, 0x5A), (0x61, 0x7A), (0xC0, 0xFF)]),
    "Greek": ("Η γλώσσα μου έδωσαν ελληνική.", [(0x3B1, 0x3C9), (0x391, 0x3A9)]),
    "Cyrillic": ("Съешь же ещё этих мягких французских булок.", [(0x430, 0x44F), (0x410, 0x42F)]),
    "Armenian": ("Բարեւ աշխարհ, ինչպե՞ս ես։", [(0x561, 0x586)]),
    "Hebrew": ("שלום עולם, מה שלומך?", [(0x5D0, 0x5EA)]),
    "Arabic": ("مرحبا بالعالم، كيف حالك؟", [(0x627, 0x64A)]),
    "Devanagari": ("नमस्ते दुनिया, आप कैसे हैं?", [(0x905, 0x939), (0x93E, 0x94D)]),
    "Bengali": ("ওহে বিশ্ব, তুমি কেমন আছ?", [(0x985, 0x9B9), (0x9BE, 0x9CC)]),
    "Gurmukhi": ("ਸਤਿ ਸ੍ਰੀ ਅਕਾਲ ਦੁਨੀਆ", [(0xA05, 0xA39)]),
    "Gujarati": ("નમસ્તે વિશ્વ, તમે કેમ છો?", [(0xA85, 0xAB9)]),
    "Tamil": ("வணக்கம் உலகம், எப்படி இருக்கிறீர்கள்?", [(0xB85, 0xBB9), (0xBBE, 0xBCD)]),
    "Telugu": ("హలో ప్రపంచం, మీరు ఎలా ఉన్నారు?", [(0xC05, 0xC39)]),
    "Kannada": ("ನಮಸ್ಕಾರ ಜಗತ್ತು", [(0xC85, 0xCB9)]),
    "Malayalam": ("ഹലോ ലോകം, സുഖമാണോ?", [(0xD05, 0xD39)]),
    "Sinhala": ("ආයුබෝවන් ලෝකය", [(0xD85, 0xDC6)]),
    "Thai": ("สวัสดีชาวโลก คุณสบายดีไหม", [(0xE01, 0xE2E), (0xE30, 0xE39)]),
    "Lao": ("ສະບາຍດີ ໂລກ", [(0xE81, 0xEAE)]),
    "Tibetan": ("བཀྲ་ཤིས་བདེ་ལེགས།", [(0xF40, 0xF6C)]),
    "Myanmar": ("မင်္ဂလာပါ ကမ္ဘာ", [(0x1000, 0x102A)]),
    "Georgian": ("გამარჯობა მსოფლიო", [(0x10D0, 0x10FA)]),
    "Hangul": ("안녕하세요 세계, 잘 지내세요?", [(0xAC00, 0xD7A3)]),
    "Ethiopic": ("ሰላም ልዑል ዓለም", [(0x1200, 0x135A)]),
    "Khmer": ("សួស្តី​ពិភពលោក", [(0x1780, 0x17B3)]),
    "Mongolian": ("ᠰᠠᠶᠢᠨ ᠪᠠᠶᠢᠨ᠎ᠠ ᠤᠤ", [(0x1820, 0x1877)]),
    "Cherokee": ("ᎣᏏᏲ ᎡᎶᎯ", [(0x13A0, 0x13F4)]),
    "Han": ("巴黎是法国的首都。你好，世界！", [(0x4E00, 0x9FFF)]),
    "Hiragana": ("こんにちは、せかい。ありがとう", [(0x3041, 0x3096)]),
    "Katakana": ("コンピューター・ネットワーク", [(0x30A1, 0x30FA)]),
    "Syriac": ("ܫܠܡܐ ܥܠܡܐ", [(0x710, 0x72F)]),
    "Thaana": ("ހެލޯ ދުނިޔެ", [(0x780, 0x7A5)]),
}

EMOJI = ["\U0001F468\u200d\U0001F469\u200d\U0001F467\u200d\U0001F466",   # family (ZWJ)
         "\U0001F469\U0001F3FD\u200d\U0001F4BB", "\U0001F44D\U0001F3FB", "\U0001F44D\U0001F3FF",
         "\U0001F3F3\ufe0f\u200d\U0001F308", "\U0001F1EB\U0001F1F7", "\U0001F1EF\U0001F1F5",
         "1\ufe0f\u20e3", "#\ufe0f\u20e3", "\u2764\ufe0f", "\U0001F642", "\U0001F9D1\u200d\U0001F91d\u200d\U0001F9D1",
         "\U0001F3F4\U000E0067\U000E0062\U000E0073\U000E0063\U000E0074\U000E007F"]     # Scotland tag
COMBINING = ["e\u0301", "a\u0308\u0304", "n\u0303", "Z\u0351\u0324\u034e", "o\u0323\u0302",
             "\u0915\u094d\u0937", "\u0627\u064e", "\u05e9\u05c1\u05bc", "i\u0307\u0301"]
BIDI = ["\u202e", "\u202d", "\u2066", "\u2067", "\u2069", "\u200f", "\u200e", "\u061c"]
CODE = ["def f(x):\n\treturn x + 1\n", "if (a &&\tb) {\r\n  return c;\r\n}\r\n",
        "for i in range(10):\n    print(i ** 2)  # squares\n", "SELECT *\tFROM t\r\nWHERE id = 1;",
        "<div class=\"a\">\n\t<span>x</span>\n</div>", "fn main() {\n    println!(\"{}\", 1_000);\n}",
        "x = {'a': [1, 2, 3], \"b\": None}\n\n\n", "#include <stdio.h>\r\nint main(void){return 0;}",
        "    \t  \n\n  \t\t", "const f = (a) => a?.b ?? `${c}`;"]


def _hostile() -> list[str]:
    import ast
    source = (REPO / "tests" / "test_security.py").read_text(encoding="utf-8")
    tree = ast.parse(source)
    texts = [HOSTILE_TEXT, CJK_EMOJI_TEXT]
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") in ("PROMPTS", "SET_TITLE",
                                                 "SET_DESCRIPTION") for t in node.targets):
            value = ast.literal_eval(node.value)
            if isinstance(value, dict):
                for text, note in value.values():
                    texts += [text, note]
            else:
                texts.append(value)
    texts += ["<|endoftext|>", "a<|endoftext|>b", "<|im_start|>user\nhi<|im_end|>",
              "<|endoftext", "</script><script>alert(1)</script>", "javascript:alert(1)",
              "\"><img src=x onerror=alert(1)>", "{{ 7*7 }}{% raw %}", "\x00\x01\x7f", "\ufeffBOM",
              "a\u2028b\u2029c", "%3Cscript%3E", "&lt;b&gt; &amp;amp;"]
    return texts


def _word(rng: random.Random, ranges: list[tuple[int, int]]) -> str:
    lo, hi = rng.choice(ranges)
    return "".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 9)))


def _random_unicode(rng: random.Random) -> str:
    out = []
    for _ in range(rng.randint(1, 40)):
        plane = rng.random()
        if plane < 0.5:
            cp = rng.randint(0x20, 0xFFFF)
        elif plane < 0.8:
            cp = rng.randint(0x10000, 0x2FFFF)
        else:
            cp = rng.randint(0x0, 0x10FFFF)
        if 0xD800 <= cp <= 0xDFFF:   # surrogates are not text (a Python str may hold them)
            cp = 0xFFFD
        out.append(chr(cp))
    return "".join(out)


def corpus() -> list[tuple[str, str]]:
    from generator.prompts import default_prompt_dir, load_prompt_sets
    rng = random.Random(SEED)
    items: list[tuple[str, str]] = []
    for s in load_prompt_sets([default_prompt_dir()]):
        items += [("prompt", p.text) for p in s.prompts]
    for name, (sentence, ranges) in SCRIPTS.items():
        items.append((f"script:{name}", sentence))
        for _ in range(60):
            words = [_word(rng, ranges) for _ in range(rng.randint(1, 8))]
            sep = rng.choice([" ", " ", ", ", "\n", "  "])
            items.append((f"script:{name}", sep.join(words)))
    for _ in range(500):
        parts = rng.choices(EMOJI + COMBINING + BIDI + [" ", "a", "word", "שלום", "سلام"], k=rng.randint(1, 8))
        items.append(("emoji-combining-rtl", "".join(parts)))
    for _ in range(700):
        snippet = rng.choice(CODE)
        ws = rng.choice(["", " " * rng.randint(1, 40), "\n" * rng.randint(1, 12), "\t" * rng.randint(1, 6),
                         "\r\n" * rng.randint(1, 5), " \n \n", "\u00a0\u3000"])
        where = rng.randint(0, len(snippet))
        items.append(("code-whitespace", snippet[:where] + ws + snippet[where:]))
    for _ in range(400):
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 120)))
        form = rng.choice(["{}", "{} apples", "-{}", "{}.{}", "1,{}", "${}", "٣٤٥{}", "{}e10", "１２３{}"])
        items.append(("number", form.replace("{}", digits)))
    items += [("hostile", t) for t in _hostile()]
    for _ in range(1600):
        items.append(("random-unicode", _random_unicode(rng)))
    return items
