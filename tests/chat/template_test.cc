// The chat-template engine's semantics, each expectation worked out from
// Jinja's and Python's documented behaviour (tests/chat/chat_template_parity_test.py
// checks the same engine against transformers itself).
#include "premoe/chat/template.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "premoe/chat/chat_format.h"
#include "tests/testutil/testutil.h"

namespace premoe::chat {
namespace {

using ::testing::HasSubstr;

std::string Render(const std::string& source,
                   const nlohmann::ordered_json& vars = nlohmann::ordered_json::object()) {
  absl::StatusOr<Template> t = Template::Parse(source, "t");
  if (!t.ok()) return "PARSE: " + std::string(t.status().message());
  absl::StatusOr<std::string> out = t->Render(vars);
  if (!out.ok()) return "RENDER: " + std::string(out.status().message());
  return *out;
}

absl::Status ParseError(const std::string& source) {
  return Template::Parse(source, "tokenizer_config.json's chat_template").status();
}

TEST(TemplateTest, TextAndOutput) {
  EXPECT_EQ(Render("hello"), "hello");
  EXPECT_EQ(Render("{{ 'a' + 'b' }}{{ 1 + 2 * 3 }}{{ 7 // 2 }}{{ -7 % 3 }}{{ 2 ** 10 }}"),
            "ab7"
            "3"
            "2"
            "1024");
  EXPECT_EQ(Render("{{ 1 / 2 }} {{ 1e-5 }} {{ 1e16 }} {{ 3.0 }} {{ 0.1 + 0.2 }}"),
            "0.5 1e-05 1e+16 3.0 0.30000000000000004");
  EXPECT_EQ(Render("{{ none }}|{{ true }}|{{ x }}|{{ [1, 'a', none] }}|{{ {'k': \"it's\"} }}"),
            "None|True||[1, 'a', None]|{'k': \"it's\"}");
  EXPECT_EQ(Render("{{ 'a' ~ 1 ~ none ~ x }}"), "a1None");
  EXPECT_EQ(Render("{{ 'x' if false }}|{{ 'y' if 0 else 'z' }}"), "|z");
  EXPECT_EQ(Render("{{ 'a' 'b' }}"), "ab");
}

TEST(TemplateTest, WhitespaceControlTrimAndLstripBlocks) {
  // trim_blocks eats the newline after a block tag, lstrip_blocks the
  // indentation before one; neither touches {{ }}.
  EXPECT_EQ(Render("  {% if true %}\n  x\n  {% endif %}\n  y {# c #}\nz"), "  x\n  y z");
  EXPECT_EQ(Render("a  {%- if true -%}  b  {%- endif -%}  c"), "abc");
  EXPECT_EQ(Render("a\n  {{- 'b' -}}\n  c"), "abc");
  EXPECT_EQ(Render("  {%+ if true %}x{% endif %}"), "  x");
  EXPECT_EQ(Render("{% if true +%}\nx{% endif %}"), "\nx");
  EXPECT_EQ(Render("a {% if true %}b{% endif %}"), "a b");  // not at a line start
}

TEST(TemplateTest, Strings) {
  nlohmann::ordered_json v = {{"s", "  Héllo, World  "}};
  EXPECT_EQ(Render("{{ s.strip() }}|{{ s.lstrip() }}|{{ s|trim|upper }}|{{ s|length }}", v),
            "Héllo, World|Héllo, World  |HÉLLO, WORLD|16");
  EXPECT_EQ(Render("{{ 'héllo'[1:3] }}|{{ 'abc'[-1] }}|{{ 'abc'[::-1] }}|{{ 'abcdef'[1::2] }}"),
            "él|c|cba|bdf");
  EXPECT_EQ(Render("{{ 'a,b,,c'.split(',') }}{{ '  a  b '.split() }}{{ 'a b c'.split(' ', 1) }}"),
            "['a', 'b', '', 'c']['a', 'b']['a', 'b c']");
  EXPECT_EQ(Render("{{ 'a/b/c'.rsplit('/', 1) }}{{ 'xxaxx'.strip('x') }}{{ 'Ab Cd'.lower() }}"),
            "['a/b', 'c']aab cd");
  EXPECT_EQ(Render("{{ 'aaa'.replace('a', 'b', 2) }}|{{ 'ab'.replace('', '-') }}|{{ "
                   "'abc'|replace('b', 'x') }}"),
            "bba|-a-b-|axc");
  EXPECT_EQ(
      Render("{{ 'abc'.startswith('ab') }}{{ 'abc'.endswith(('x', 'c')) }}{{ 'b' in 'abc' }}"),
      "TrueTrueTrue");
  EXPECT_EQ(Render("{{ 'héllo wörld'.title() }}|{{ 'hÉLLO'.capitalize() }}|{{ 'abcb'.find('b') }}"),
            "Héllo Wörld|Héllo|1");
  EXPECT_EQ(Render("{{ ', '.join(['a', 'b']) }}|{{ [1, 2]|join('-') }}"), "a, b|1-2");
  // Python strips Unicode whitespace (U+3000 here) too.
  EXPECT_EQ(Render("{{ ('a' + '\\u3000')|trim|length }}"), "1");
  EXPECT_EQ(Render("{{ '\\n\\t\\x41\\u00e9' }}"), "\n\tAé");
}

TEST(TemplateTest, ListsDictsAndFilters) {
  nlohmann::ordered_json v = {{"xs", {3, 1, 2}}, {"d", {{"a", 1}, {"b", nullptr}}}};
  EXPECT_EQ(
      Render("{{ xs|length }}{{ xs|first }}{{ xs|last }}{{ xs[0] }}{{ xs[-1] }}{{ xs[5] }}", v),
      "33232");
  EXPECT_EQ(Render("{{ xs[1:] }}{{ xs[::-1] }}{{ xs|reverse|list }}", v),
            "[1, 2][2, 1, 3][2, 1, 3]");
  EXPECT_EQ(
      Render("{{ d.a }}{{ d['a'] }}{{ d.get('z', 9) }}{{ d.b is none }}{{ d.z is defined }}", v),
      "119TrueFalse");
  EXPECT_EQ(Render("{% for k, x in d.items() %}{{ k }}={{ x }};{% endfor %}", v), "a=1;b=None;");
  EXPECT_EQ(
      Render("{{ d|tojson }}|{{ ['é', 'a\"b\\n']|tojson }}|{{ {'a': [1]}|tojson(indent=2) }}", v),
      "{\"a\": 1, \"b\": null}|[\"é\", \"a\\\"b\\n\"]|{\n  \"a\": [\n    1\n  ]\n}");
  EXPECT_EQ(
      Render("{{ x|default('dflt') }}{{ ''|default('e', true) }}{{ '5'|int + 1 }}{{ 'q'|int }}"),
      "dflte60");
  nlohmann::ordered_json people = {
      {"ps", {{{"n", "a"}, {"on", true}}, {{"n", "b"}, {"on", false}}}}};
  EXPECT_EQ(Render("{{ ps|selectattr('on')|map(attribute='n')|join }}"
                   "{{ ps|rejectattr('n', 'equalto', 'a')|map(attribute='n')|list }}",
                   people),
            "a['b']");
}

TEST(TemplateTest, TestsAndComparisons) {
  EXPECT_EQ(Render("{{ x is defined }}{{ none is none }}{{ 'a' is string }}{{ false is false }}"
                   "{{ 0 is false }}{{ 3 is odd }}{{ 4 is divisibleby 2 }}{{ 1 is not none }}"),
            "FalseTrueTrueTrueFalseTrueTrueTrue");
  EXPECT_EQ(
      Render("{{ 1 == 1.0 }}{{ true == 1 }}{{ 'a' < 'b' }}{{ [1] == [1] }}{{ 2 not in [1] }}"),
      "TrueTrueTrueTrueTrue");
  EXPECT_EQ(Render("{{ not x is defined and 1 }}{{ 0 or 'b' }}{{ '' and 'x' }}"), "1b");
}

TEST(TemplateTest, LoopsAndScopes) {
  EXPECT_EQ(Render("{% for a in [1, 2, 3] %}{{ loop.index }}{{ loop.revindex0 }}{{ loop.first }}"
                   "{{ loop.last }}{{ loop.length }}|{% endfor %}"),
            "12TrueFalse3|21FalseFalse3|30FalseTrue3|");
  // A set inside a loop lasts one iteration and never leaks out; namespace
  // attributes carry over.
  EXPECT_EQ(
      Render("{% set c = 0 %}{% for i in [1, 2] %}{% set c = c + 1 %}{{ c }}{% endfor %}{{ c }}"),
      "110");
  EXPECT_EQ(Render("{% set ns = namespace(c=0) %}{% for i in [1, 2] %}{% set ns.c = ns.c + i %}"
                   "{% endfor %}{{ ns.c }}"),
            "3");
  EXPECT_EQ(Render("{% if true %}{% set y = 5 %}{% endif %}{{ y }}"), "5");
  EXPECT_EQ(Render("{% for i in range(10) %}{% if i == 3 %}{% break %}{% endif %}"
                   "{% if i is odd %}{% continue %}{% endif %}{{ i }}{% endfor %}"),
            "02");
  EXPECT_EQ(Render("{% for i in [] %}x{% else %}empty{% endfor %}"), "empty");
  EXPECT_EQ(Render("{% for i in range(6) if i is even %}{{ i }}{{ loop.index }}{% endfor %}"),
            "012243");
  EXPECT_EQ(
      Render("{% for c in 'ab' %}{{ c }}.{% endfor %}{% for k in {'x': 1} %}{{ k }}{% endfor %}"),
      "a.b.x");
  EXPECT_EQ(
      Render("{% for a in [[1, 2]] %}{% for b in a %}{{ loop.index }}{% endfor %}{{ loop.index }}"
             "{% endfor %}"),
      "121");
  EXPECT_EQ(Render("{% set a, b = 1, 2 %}{{ a }}{{ b }}"), "12");
}

TEST(TemplateTest, RenderErrorsNameTheLine) {
  EXPECT_EQ(Render("{{ raise_exception('roles must alternate') }}"),
            "RENDER: roles must alternate");
  EXPECT_THAT(Render("\n{{ x.y }}"), HasSubstr("t line 2: 'x' is undefined"));
  EXPECT_THAT(Render("{{ 'a' + 1 }}"),
              HasSubstr("unsupported operand type(s) for +: 'str' and 'int'"));
  EXPECT_THAT(Render("{% for i in 5 %}{% endfor %}"), HasSubstr("'int' object is not iterable"));
  EXPECT_THAT(Render("{{ 1 // 0 }}"), HasSubstr("division or modulo by zero"));
  EXPECT_THAT(Render("{{ 9223372036854775807 + 1 }}"), HasSubstr("integer overflow"));
  EXPECT_THAT(Render("{% set x = 1 %}{% set x.a = 2 %}"), HasSubstr("non-namespace"));
  // Runaway templates stop at the limits.
  absl::StatusOr<Template> t =
      Template::Parse("{% for i in range(100000000) %}{% endfor %}", "t", {.max_steps = 1000});
  ASSERT_TRUE(t.ok());
  EXPECT_THAT(std::string(t->Render(nlohmann::ordered_json::object()).status().message()),
              HasSubstr("steps"));
  EXPECT_THAT(Render("{{ 'x' * 100000000 }}"), HasSubstr("output limit"));
  EXPECT_FALSE(Template::IsRaised(absl::InvalidArgumentError("x")));
}

TEST(TemplateTest, OutsideTheSubsetFailsAtParseNamingConstructAndLine) {
  struct Case {
    std::string source;
    std::string want;
  } cases[] = {
      {"a\n{% macro m() %}x{% endmacro %}", "line 2: the {% macro %} statement is not supported"},
      {"{% include 'x.j2' %}", "line 1: the {% include %} statement"},
      {"{% generation %}x{% endgeneration %}", "{% generation %}"},
      {"\n\n{{ x|wordwrap }}", "line 3: the filter |wordwrap is not supported"},
      {"{{ x is callable }}", "the test \"is callable\" is not supported"},
      {"{{ x.append(1) }}", "the method .append() is not supported"},
      {"{{ cycler() }}", "the function cycler() is not supported"},
      {"{% set x %}a{% endset %}", "block assignments"},
      {"{% if x %}", "ends inside a block"},
      {"{% endif %}", "unexpected statement \"endif\""},
      {"{{ x", "never closed"},
      {"{{ x @ y }}", "'@'"},
      {"{% for x in y recursive %}{% endfor %}", "recursive"},
      {"{% break %}", "outside a loop"},
      {"{{ 'abc }}", "never closed"},
  };
  for (const Case& c : cases) {
    absl::Status s = ParseError(c.source);
    EXPECT_TRUE(absl::IsInvalidArgument(s)) << c.source;
    EXPECT_THAT(std::string(s.message()), HasSubstr(c.want)) << c.source;
    EXPECT_THAT(std::string(s.message()), HasSubstr("tokenizer_config.json's chat_template"))
        << c.source;
  }
  EXPECT_FALSE(Template::Parse("\xff", "t").ok());
  // Nesting is bounded, so a hostile template cannot exhaust the stack.
  EXPECT_THAT(
      std::string(ParseError("{{ " + std::string(300, '(') + "1" + std::string(300, ')') + " }}")
                      .message()),
      HasSubstr("nested deeper than"));
  std::string blocks;
  for (int i = 0; i < 150; ++i) blocks += "{% if true %}";
  EXPECT_THAT(std::string(ParseError(blocks).message()), HasSubstr("blocks nested deeper than"));
  EXPECT_EQ(Render("{{ " + std::string(50, '(') + "1" + std::string(50, ')') + " }}"), "1");
}

TEST(ChatFormatTest, LoadsTheModelsTemplateAndSpecialTokens) {
  premoe::testing::TempDir tmp;
  const std::filesystem::path dir = tmp.path();
  {
    std::ofstream(dir / "tokenizer_config.json") << R"({
      "bos_token": {"__type": "AddedToken", "content": "<s>"}, "eos_token": "</s>",
      "chat_template": "{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}"
    })";
  }
  absl::StatusOr<ChatFormat> f = ChatFormat::Load(dir.string());
  ASSERT_TRUE(f.ok()) << f.status();
  ASSERT_TRUE(f->has_template());
  nlohmann::ordered_json messages = {{{"role", "user"}, {"content", "hi"}}};
  EXPECT_EQ(f->Render(messages, true).value(), "<s>[user]hi[assistant]");
  EXPECT_EQ(f->Render(messages, false).value(), "<s>[user]hi");
  // chat_template.jinja wins over tokenizer_config.json, as in transformers;
  // --chat-template wins over both.
  std::ofstream(dir / "chat_template.jinja") << "J{{ eos_token }}";
  EXPECT_EQ(ChatFormat::Load(dir.string())->Render(messages, true).value(), "J</s>");
  std::ofstream(dir / "override.jinja") << "O";
  EXPECT_EQ(ChatFormat::Load(dir.string(), (dir / "override.jinja").string())
                ->Render(messages, true)
                .value(),
            "O");
  EXPECT_TRUE(
      absl::IsNotFound(ChatFormat::Load(dir.string(), (dir / "nope.jinja").string()).status()));
  // Malformed messages.
  EXPECT_THAT(std::string(f->Render({{{"content", "x"}}}, true).status().message()),
              HasSubstr("message 0 has no string \"role\""));
  EXPECT_THAT(std::string(f->Render({{{"role", "user"}, {"content", 3}}}, true).status().message()),
              HasSubstr("content is number"));
}

TEST(ChatFormatTest, NoTemplateRefusesChatAndBadTemplatesFailAtLoad) {
  premoe::testing::TempDir tmp;
  const std::filesystem::path dir = tmp.path();
  std::ofstream(dir / "tokenizer_config.json") << R"({"eos_token": "</s>"})";
  absl::StatusOr<ChatFormat> f = ChatFormat::Load(dir.string());
  ASSERT_TRUE(f.ok());
  EXPECT_FALSE(f->has_template());
  absl::Status s = f->Render(nlohmann::ordered_json::array(), true).status();
  EXPECT_TRUE(absl::IsInvalidArgument(s));
  EXPECT_THAT(std::string(s.message()), HasSubstr("no chat template"));

  std::ofstream(dir / "tokenizer_config.json")
      << R"({"chat_template": "ok\n{% filter upper %}x{% endfilter %}"})";
  s = ChatFormat::Load(dir.string()).status();
  EXPECT_THAT(
      std::string(s.message()),
      HasSubstr("tokenizer_config.json's chat_template line 2: the {% filter %} statement"));
  std::ofstream(dir / "tokenizer_config.json") << R"({"chat_template": 5})";
  EXPECT_THAT(std::string(ChatFormat::Load(dir.string()).status().message()),
              HasSubstr("chat_template is number"));
  std::ofstream(dir / "tokenizer_config.json")
      << R"({"chat_template": [{"name": "tool_use", "template": "x"}]})";
  EXPECT_THAT(std::string(ChatFormat::Load(dir.string()).status().message()),
              HasSubstr("no {\"name\": \"default\""));
  std::ofstream(dir / "tokenizer_config.json")
      << R"({"chat_template": [{"name": "default", "template": "D"}, {"name": "rag", "template": "R"}]})";
  EXPECT_EQ(ChatFormat::Load(dir.string())->Render(nlohmann::ordered_json::array(), true).value(),
            "D");
  std::ofstream(dir / "tokenizer_config.json") << R"({"chat_template": "x", "bos_token": 3})";
  EXPECT_THAT(std::string(ChatFormat::Load(dir.string()).status().message()),
              HasSubstr("bos_token is number"));
}

}  // namespace
}  // namespace premoe::chat
