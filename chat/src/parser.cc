// Template source -> syntax tree. Two stages: the source is cut into text
// and tags (with Jinja's whitespace control, trim_blocks and lstrip_blocks
// applied to the text), then each tag's inside is tokenized and parsed by
// recursive descent with Jinja's operator precedence. Everything outside the
// subset is refused here, naming the construct and its line, so a template
// that loads renders with Jinja's meaning or fails for a reason the request
// caused.
#include <cctype>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "chat/src/jinja.h"
#include "premoe/common/status.h"

namespace premoe::chat::jinja {
namespace {

absl::Status ErrorAt(int line, absl::string_view message) {
  return absl::InvalidArgumentError(absl::StrCat("line ", line, ": ", message));
}

// ---- Stage 1: text and tags ------------------------------------------

struct Segment {
  enum class Kind { kText, kOutput, kStatement, kComment };
  Kind kind;
  std::string text;  // the text, or the tag's inside without markers
  int line = 0;
  bool strip_before = false, keep_before = false;  // {%- / {%+
  bool strip_after = false, keep_after = false;    // -%} / +%}
};

int CountLines(absl::string_view s) {
  return static_cast<int>(std::count(s.begin(), s.end(), '\n'));
}

absl::StatusOr<std::vector<Segment>> Cut(absl::string_view src) {
  std::vector<Segment> out;
  size_t pos = 0;
  int line = 1;
  while (pos < src.size()) {
    size_t open = pos;
    while (true) {
      open = src.find('{', open);
      if (open == absl::string_view::npos || open + 1 >= src.size()) {
        open = absl::string_view::npos;
        break;
      }
      const char c = src[open + 1];
      if (c == '{' || c == '%' || c == '#') break;
      ++open;
    }
    const size_t text_end = open == absl::string_view::npos ? src.size() : open;
    if (text_end > pos) {
      out.push_back({Segment::Kind::kText, std::string(src.substr(pos, text_end - pos)), line});
      line += CountLines(src.substr(pos, text_end - pos));
    }
    if (open == absl::string_view::npos) break;
    const char kind = src[open + 1];
    Segment tag;
    tag.line = line;
    tag.kind = kind == '{'   ? Segment::Kind::kOutput
               : kind == '%' ? Segment::Kind::kStatement
                             : Segment::Kind::kComment;
    size_t inner = open + 2;
    if (inner < src.size() && (src[inner] == '-' || src[inner] == '+')) {
      (src[inner] == '-' ? tag.strip_before : tag.keep_before) = true;
      ++inner;
    }
    const std::string close = kind == '{' ? "}}" : kind == '%' ? "%}" : "#}";
    size_t end = inner;
    if (tag.kind == Segment::Kind::kComment) {
      end = src.find(close, inner);
    } else {
      // Skip string literals: "%}" may sit inside one.
      char quote = 0;
      for (; end + 1 < src.size(); ++end) {
        const char c = src[end];
        if (quote != 0) {
          if (c == '\\') {
            ++end;
          } else if (c == quote) {
            quote = 0;
          }
        } else if (c == '\'' || c == '"') {
          quote = c;
        } else if (src.substr(end, 2) == close) {
          break;
        }
      }
      if (end + 1 >= src.size()) end = absl::string_view::npos;
    }
    if (end == absl::string_view::npos) {
      return ErrorAt(line, absl::StrCat("a tag opened with \"", src.substr(open, 2),
                                        "\" is never closed with \"", close, "\""));
    }
    size_t inner_end = end;
    if (inner_end > inner && (src[inner_end - 1] == '-' || src[inner_end - 1] == '+')) {
      (src[inner_end - 1] == '-' ? tag.strip_after : tag.keep_after) = true;
      --inner_end;
    }
    tag.text = std::string(src.substr(inner, inner_end - inner));
    line += CountLines(src.substr(open, end + 2 - open));
    pos = end + 2;
    out.push_back(std::move(tag));
  }

  // Whitespace control, as Jinja's lexer with trim_blocks and lstrip_blocks.
  for (size_t k = 0; k < out.size(); ++k) {
    Segment& tag = out[k];
    if (tag.kind == Segment::Kind::kText) continue;
    const bool block = tag.kind != Segment::Kind::kOutput;
    if (k > 0 && out[k - 1].kind == Segment::Kind::kText) {
      std::string& before = out[k - 1].text;
      if (tag.strip_before) {
        before = std::string(absl::StripTrailingAsciiWhitespace(before));
      } else if (block && !tag.keep_before) {
        // lstrip_blocks: only spaces and tabs between the line's start and the tag.
        const size_t nl = before.rfind('\n');
        const size_t from = nl == std::string::npos ? 0 : nl + 1;
        const bool line_start = nl != std::string::npos || k == 1;
        if (line_start && before.find_first_not_of(" \t", from) == std::string::npos) {
          before.erase(from);
        }
      }
    }
    if (k + 1 < out.size() && out[k + 1].kind == Segment::Kind::kText) {
      std::string& after = out[k + 1].text;
      if (tag.strip_after) {
        after = std::string(absl::StripLeadingAsciiWhitespace(after));
      } else if (block && !tag.keep_after) {
        // trim_blocks: the first newline after a block tag.
        if (absl::StartsWith(after, "\r\n")) {
          after.erase(0, 2);
        } else if (absl::StartsWith(after, "\n") || absl::StartsWith(after, "\r")) {
          after.erase(0, 1);
        }
      }
    }
  }
  return out;
}

// ---- Stage 2: tokens of a tag ------------------------------------------

struct Token {
  enum class Kind { kName, kString, kInt, kFloat, kOp, kEnd };
  Kind kind;
  std::string text;  // name, operator, or the string's value
  int64_t i = 0;
  double f = 0;
};

absl::StatusOr<std::string> Unescape(absl::string_view body, int line) {
  std::string out;
  for (size_t k = 0; k < body.size(); ++k) {
    if (body[k] != '\\' || k + 1 == body.size()) {
      out += body[k];
      continue;
    }
    const char e = body[++k];
    switch (e) {
      case 'n':
        out += '\n';
        break;
      case 't':
        out += '\t';
        break;
      case 'r':
        out += '\r';
        break;
      case '\\':
      case '\'':
      case '"':
        out += e;
        break;
      case '\n':
        break;
      case 'x':
      case 'u':
      case 'U': {
        const size_t n = e == 'x' ? 2 : e == 'u' ? 4 : 8;
        if (k + n >= body.size()) {
          return ErrorAt(line, absl::StrCat("a truncated \\", std::string(1, e), " escape"));
        }
        uint32_t cp = 0;
        for (size_t m = 1; m <= n; ++m) {
          const char h = body[k + m];
          if (!std::isxdigit(static_cast<unsigned char>(h))) {
            return ErrorAt(line, absl::StrCat("a bad \\", std::string(1, e), " escape"));
          }
          cp = cp * 16 +
               (std::isdigit(static_cast<unsigned char>(h)) ? h - '0' : (h | 0x20) - 'a' + 10);
        }
        if (cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
          return ErrorAt(line, "an escape outside Unicode scalar values");
        }
        out += Encode(std::u32string(1, static_cast<char32_t>(cp)));
        k += n;
        break;
      }
      default:
        // Python keeps unknown escapes as written.
        out += '\\';
        out += e;
    }
  }
  return out;
}

absl::StatusOr<std::vector<Token>> Tokenize(absl::string_view s, int line) {
  static const char* const kOps[] = {"//", "**", "==", "!=", "<=", ">=", "(", ")", "[",
                                     "]",  "{",  "}",  ",",  ".",  ":",  "|", "~", "+",
                                     "-",  "*",  "/",  "%",  "<",  ">",  "="};
  std::vector<Token> out;
  size_t k = 0;
  while (k < s.size()) {
    const char c = s[k];
    if (std::isspace(static_cast<unsigned char>(c))) {
      if (c == '\n') ++line;
      ++k;
      continue;
    }
    if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      size_t e = k;
      while (e < s.size() && (std::isalnum(static_cast<unsigned char>(s[e])) || s[e] == '_')) ++e;
      out.push_back({Token::Kind::kName, std::string(s.substr(k, e - k))});
      k = e;
      continue;
    }
    if (std::isdigit(static_cast<unsigned char>(c))) {
      size_t e = k;
      bool is_float = false;
      while (e < s.size() && (std::isdigit(static_cast<unsigned char>(s[e])) || s[e] == '_')) ++e;
      if (e + 1 < s.size() && s[e] == '.' && std::isdigit(static_cast<unsigned char>(s[e + 1]))) {
        is_float = true;
        ++e;
        while (e < s.size() && std::isdigit(static_cast<unsigned char>(s[e]))) ++e;
      }
      if (e < s.size() && (s[e] == 'e' || s[e] == 'E')) {
        size_t x = e + 1;
        if (x < s.size() && (s[x] == '+' || s[x] == '-')) ++x;
        if (x < s.size() && std::isdigit(static_cast<unsigned char>(s[x]))) {
          is_float = true;
          e = x;
          while (e < s.size() && std::isdigit(static_cast<unsigned char>(s[e]))) ++e;
        }
      }
      std::string text(s.substr(k, e - k));
      text.erase(std::remove(text.begin(), text.end(), '_'), text.end());
      Token t{is_float ? Token::Kind::kFloat : Token::Kind::kInt, text};
      try {
        if (is_float) {
          t.f = std::stod(text);
        } else {
          t.i = std::stoll(text);
        }
      } catch (const std::exception&) {
        return ErrorAt(line, absl::StrCat("the number ", text, " is out of range"));
      }
      out.push_back(std::move(t));
      k = e;
      continue;
    }
    if (c == '\'' || c == '"') {
      size_t e = k + 1;
      while (e < s.size() && s[e] != c) e += s[e] == '\\' ? 2 : 1;
      if (e >= s.size()) return ErrorAt(line, "a string literal is never closed");
      ASSIGN_OR_RETURN(std::string value, Unescape(s.substr(k + 1, e - k - 1), line));
      line += CountLines(s.substr(k, e - k));
      out.push_back({Token::Kind::kString, std::move(value)});
      k = e + 1;
      continue;
    }
    bool matched = false;
    for (const char* op : kOps) {
      const absl::string_view o(op);
      if (s.substr(k, o.size()) == o) {
        out.push_back({Token::Kind::kOp, std::string(o)});
        k += o.size();
        matched = true;
        break;
      }
    }
    if (!matched) {
      return ErrorAt(line, absl::StrCat("the character '", std::string(1, c),
                                        "' is not part of the supported Jinja syntax"));
    }
  }
  out.push_back({Token::Kind::kEnd, ""});
  return out;
}

// ---- Stage 3: expressions ----------------------------------------------

class ExprParser {
 public:
  ExprParser(std::vector<Token> tokens, int line) : t_(std::move(tokens)), line_(line) {}

  bool AtEnd() const { return t_[p_].kind == Token::Kind::kEnd; }
  bool IsName(absl::string_view n) const {
    return t_[p_].kind == Token::Kind::kName && t_[p_].text == n;
  }
  bool IsOp(absl::string_view o) const {
    return t_[p_].kind == Token::Kind::kOp && t_[p_].text == o;
  }
  bool SkipName(absl::string_view n) {
    if (!IsName(n)) return false;
    ++p_;
    return true;
  }
  bool SkipOp(absl::string_view o) {
    if (!IsOp(o)) return false;
    ++p_;
    return true;
  }
  absl::Status ExpectOp(absl::string_view o) {
    if (SkipOp(o)) return absl::OkStatus();
    return Error(absl::StrCat("expected '", o, "'"));
  }
  absl::StatusOr<std::string> ExpectName(absl::string_view what) {
    if (t_[p_].kind != Token::Kind::kName) return Error(absl::StrCat("expected ", what));
    return t_[p_++].text;
  }
  absl::Status ExpectEnd() {
    if (AtEnd()) return absl::OkStatus();
    return Error("unexpected text at the end of the tag");
  }
  absl::Status Error(absl::string_view what) const {
    const Token& t = t_[p_];
    const std::string near = t.kind == Token::Kind::kEnd      ? "the end of the tag"
                             : t.kind == Token::Kind::kString ? "a string"
                                                              : absl::StrCat("'", t.text, "'");
    return ErrorAt(line_, absl::StrCat(what, " near ", near));
  }

  // Full expression, with `a if b else c`.
  absl::StatusOr<ExprPtr> Expression() {
    Nest nest(this);
    RETURN_IF_ERROR(nest.status);
    ASSIGN_OR_RETURN(ExprPtr e, Or());
    while (SkipName("if")) {
      auto cond = Make(Expr::Kind::kCond);
      cond->b = std::move(e);
      ASSIGN_OR_RETURN(cond->a, Or());
      if (SkipName("else")) {
        ASSIGN_OR_RETURN(cond->c, Expression());
      }
      e = std::move(cond);
    }
    return e;
  }

  // A tuple without parentheses (`for a, b in ...`, `set a = 1, 2`).
  absl::StatusOr<ExprPtr> TupleOrExpression() {
    ASSIGN_OR_RETURN(ExprPtr first, Expression());
    if (!IsOp(",")) return first;
    auto tuple = Make(Expr::Kind::kList);
    tuple->items.push_back(std::move(first));
    while (SkipOp(",")) {
      if (AtEnd()) break;
      ASSIGN_OR_RETURN(ExprPtr item, Expression());
      tuple->items.push_back(std::move(item));
    }
    return tuple;
  }

  absl::StatusOr<ExprPtr> Or() { return BinaryLevel("or", &ExprParser::And); }
  absl::StatusOr<ExprPtr> And() { return BinaryLevel("and", &ExprParser::Not); }

  absl::StatusOr<ExprPtr> Not() {
    Nest nest(this);
    RETURN_IF_ERROR(nest.status);
    if (SkipName("not")) {
      auto e = Make(Expr::Kind::kNot);
      ASSIGN_OR_RETURN(e->a, Not());
      return e;
    }
    return Compare();
  }

  absl::StatusOr<ExprPtr> Compare() {
    ASSIGN_OR_RETURN(ExprPtr e, Math1());
    while (true) {
      std::string op;
      for (const char* o : {"==", "!=", "<=", ">=", "<", ">"}) {
        if (SkipOp(o)) {
          op = o;
          break;
        }
      }
      if (op.empty() && SkipName("in")) op = "in";
      if (op.empty() && IsName("not") && t_[p_ + 1].kind == Token::Kind::kName &&
          t_[p_ + 1].text == "in") {
        p_ += 2;
        op = "not in";
      }
      if (op.empty()) return e;
      ASSIGN_OR_RETURN(ExprPtr rhs, Math1());
      e = Binary(op, std::move(e), std::move(rhs));
    }
  }

  absl::StatusOr<ExprPtr> Math1() {
    ASSIGN_OR_RETURN(ExprPtr e, Concat());
    while (IsOp("+") || IsOp("-")) {
      const std::string op = t_[p_++].text;
      ASSIGN_OR_RETURN(ExprPtr rhs, Concat());
      e = Binary(op, std::move(e), std::move(rhs));
    }
    return e;
  }

  absl::StatusOr<ExprPtr> Concat() {
    ASSIGN_OR_RETURN(ExprPtr e, Math2());
    while (SkipOp("~")) {
      ASSIGN_OR_RETURN(ExprPtr rhs, Math2());
      e = Binary("~", std::move(e), std::move(rhs));
    }
    return e;
  }

  absl::StatusOr<ExprPtr> Math2() {
    ASSIGN_OR_RETURN(ExprPtr e, Pow());
    while (IsOp("*") || IsOp("/") || IsOp("//") || IsOp("%")) {
      const std::string op = t_[p_++].text;
      ASSIGN_OR_RETURN(ExprPtr rhs, Pow());
      e = Binary(op, std::move(e), std::move(rhs));
    }
    return e;
  }

  absl::StatusOr<ExprPtr> Pow() {
    ASSIGN_OR_RETURN(ExprPtr e, Unary(true));
    while (SkipOp("**")) {
      ASSIGN_OR_RETURN(ExprPtr rhs, Unary(true));
      e = Binary("**", std::move(e), std::move(rhs));
    }
    return e;
  }

  absl::StatusOr<ExprPtr> Unary(bool with_filters) {
    Nest nest(this);
    RETURN_IF_ERROR(nest.status);
    ExprPtr e;
    if (SkipOp("-")) {
      e = Make(Expr::Kind::kNeg);
      ASSIGN_OR_RETURN(e->a, Unary(false));
    } else if (SkipOp("+")) {
      ASSIGN_OR_RETURN(e, Unary(false));
    } else {
      ASSIGN_OR_RETURN(e, Primary());
      ASSIGN_OR_RETURN(e, Postfix(std::move(e)));
    }
    if (with_filters) {
      ASSIGN_OR_RETURN(e, Filters(std::move(e)));
    }
    return e;
  }

  absl::StatusOr<ExprPtr> Primary() {
    const Token& t = t_[p_];
    switch (t.kind) {
      case Token::Kind::kString: {
        std::string s;
        while (t_[p_].kind == Token::Kind::kString) s += t_[p_++].text;  // "a" "b" joins
        return Literal(Value::String(std::move(s)));
      }
      case Token::Kind::kInt:
        ++p_;
        return Literal(Value::Int(t.i));
      case Token::Kind::kFloat:
        ++p_;
        return Literal(Value::Float(t.f));
      case Token::Kind::kName: {
        ++p_;
        if (t.text == "true" || t.text == "True") return Literal(Value::Bool(true));
        if (t.text == "false" || t.text == "False") return Literal(Value::Bool(false));
        if (t.text == "none" || t.text == "None") return Literal(Value::None());
        auto e = Make(Expr::Kind::kName);
        e->name = t.text;
        return e;
      }
      case Token::Kind::kOp:
        if (SkipOp("(")) {
          if (SkipOp(")")) return Make(Expr::Kind::kList);  // ()
          ASSIGN_OR_RETURN(ExprPtr e, Expression());
          if (IsOp(",")) {
            auto tuple = Make(Expr::Kind::kList);
            tuple->items.push_back(std::move(e));
            while (SkipOp(",")) {
              if (IsOp(")")) break;
              ASSIGN_OR_RETURN(ExprPtr item, Expression());
              tuple->items.push_back(std::move(item));
            }
            e = std::move(tuple);
          }
          RETURN_IF_ERROR(ExpectOp(")"));
          return e;
        }
        if (SkipOp("[")) {
          auto e = Make(Expr::Kind::kList);
          while (!SkipOp("]")) {
            if (!e->items.empty()) RETURN_IF_ERROR(ExpectOp(","));
            if (SkipOp("]")) break;
            ASSIGN_OR_RETURN(ExprPtr item, Expression());
            e->items.push_back(std::move(item));
          }
          return e;
        }
        if (SkipOp("{")) {
          auto e = Make(Expr::Kind::kDict);
          while (!SkipOp("}")) {
            if (!e->items.empty()) RETURN_IF_ERROR(ExpectOp(","));
            if (SkipOp("}")) break;
            ASSIGN_OR_RETURN(ExprPtr key, Expression());
            RETURN_IF_ERROR(ExpectOp(":"));
            ASSIGN_OR_RETURN(ExprPtr item, Expression());
            e->keys.push_back(std::move(key));
            e->items.push_back(std::move(item));
          }
          return e;
        }
        break;
      default:
        break;
    }
    return Error("expected an expression");
  }

  absl::StatusOr<ExprPtr> Postfix(ExprPtr e) {
    while (true) {
      if (SkipOp(".")) {
        auto attr = Make(Expr::Kind::kAttr);
        attr->a = std::move(e);
        if (t_[p_].kind == Token::Kind::kInt) {
          // foo.0 is foo[0].
          attr->kind = Expr::Kind::kItem;
          attr->b = Literal(Value::Int(t_[p_++].i));
        } else {
          ASSIGN_OR_RETURN(attr->name, ExpectName("an attribute name after '.'"));
        }
        e = std::move(attr);
      } else if (SkipOp("[")) {
        ExprPtr parts[3];
        int colons = 0;
        for (int k = 0; k < 3; ++k) {
          if (!IsOp(":") && !IsOp("]")) {
            ASSIGN_OR_RETURN(parts[k], Expression());
          }
          if (k < 2 && SkipOp(":")) {
            ++colons;
            continue;
          }
          break;
        }
        RETURN_IF_ERROR(ExpectOp("]"));
        if (colons == 0) {
          if (parts[0] == nullptr) return Error("an empty subscript");
          auto item = Make(Expr::Kind::kItem);
          item->a = std::move(e);
          item->b = std::move(parts[0]);
          e = std::move(item);
        } else {
          auto slice = Make(Expr::Kind::kSlice);
          slice->a = std::move(e);
          for (auto& part : parts) slice->items.push_back(std::move(part));
          e = std::move(slice);
        }
      } else if (IsOp("(")) {
        if (e->kind == Expr::Kind::kName) {
          if (!IsGlobalFunction(e->name)) {
            return ErrorAt(line_, absl::StrCat("the function ", e->name,
                                               "() is not supported (supported: raise_exception, "
                                               "namespace, range, dict, strftime_now)"));
          }
        } else if (e->kind == Expr::Kind::kAttr) {
          if (!IsMethod(e->name)) {
            return ErrorAt(line_, absl::StrCat("the method .", e->name, "() is not supported"));
          }
        } else {
          return Error("only functions and methods can be called");
        }
        auto call = Make(Expr::Kind::kCall);
        call->a = std::move(e);
        ASSIGN_OR_RETURN(call->args, Args());
        e = std::move(call);
      } else {
        return e;
      }
    }
  }

  absl::StatusOr<ExprPtr> Filters(ExprPtr e) {
    while (true) {
      if (SkipOp("|")) {
        auto f = Make(Expr::Kind::kFilter);
        ASSIGN_OR_RETURN(f->name, ExpectName("a filter name after '|'"));
        if (!IsFilter(f->name)) {
          return ErrorAt(line_, absl::StrCat("the filter |", f->name, " is not supported"));
        }
        f->a = std::move(e);
        if (IsOp("(")) {
          ASSIGN_OR_RETURN(f->args, Args());
        }
        ASSIGN_OR_RETURN(e, Postfix(std::move(f)));
      } else if (SkipName("is")) {
        auto test = Make(Expr::Kind::kTest);
        test->negated = SkipName("not");
        if (IsName("none") || IsName("true") || IsName("false")) {
          test->name = t_[p_++].text;
        } else {
          ASSIGN_OR_RETURN(test->name, ExpectName("a test name after 'is'"));
        }
        if (!IsTest(test->name)) {
          return ErrorAt(line_, absl::StrCat("the test \"is ", test->name, "\" is not supported"));
        }
        test->a = std::move(e);
        if (IsOp("(")) {
          ASSIGN_OR_RETURN(test->args, Args());
        } else if (t_[p_].kind == Token::Kind::kString || t_[p_].kind == Token::Kind::kInt ||
                   t_[p_].kind == Token::Kind::kFloat) {
          // `is divisibleby 3`: one argument without parentheses.
          ASSIGN_OR_RETURN(ExprPtr arg, Primary());
          test->args.positional.push_back(std::move(arg));
        }
        e = std::move(test);
      } else {
        return e;
      }
    }
  }

  absl::StatusOr<Arguments> Args() {
    RETURN_IF_ERROR(ExpectOp("("));
    Arguments args;
    bool first = true;
    while (!SkipOp(")")) {
      if (!first) RETURN_IF_ERROR(ExpectOp(","));
      first = false;
      if (SkipOp(")")) break;
      if (SkipOp("*") || SkipOp("**")) return Error("*args and **kwargs are not supported");
      if (t_[p_].kind == Token::Kind::kName && t_[p_ + 1].kind == Token::Kind::kOp &&
          t_[p_ + 1].text == "=") {
        std::string key = t_[p_].text;
        p_ += 2;
        ASSIGN_OR_RETURN(ExprPtr value, Expression());
        args.keyword.emplace_back(std::move(key), std::move(value));
      } else {
        if (!args.keyword.empty()) return Error("a positional argument after a keyword one");
        ASSIGN_OR_RETURN(ExprPtr value, Expression());
        args.positional.push_back(std::move(value));
      }
    }
    return args;
  }

 private:
  // Bounds the recursion (and so the stack, and the renderer's recursion
  // over the tree) for templates nested absurdly deep.
  static constexpr int kMaxDepth = 200;
  struct Nest {
    explicit Nest(ExprParser* p) : parser(p) {
      if (++parser->depth_ > kMaxDepth) {
        status = parser->Error(absl::StrCat("expressions nested deeper than ", kMaxDepth));
      }
    }
    ~Nest() { --parser->depth_; }
    ExprParser* parser;
    absl::Status status;
  };

  using Level = absl::StatusOr<ExprPtr> (ExprParser::*)();
  absl::StatusOr<ExprPtr> BinaryLevel(absl::string_view keyword, Level next) {
    ASSIGN_OR_RETURN(ExprPtr e, (this->*next)());
    while (SkipName(keyword)) {
      ASSIGN_OR_RETURN(ExprPtr rhs, (this->*next)());
      e = Binary(std::string(keyword), std::move(e), std::move(rhs));
    }
    return e;
  }
  ExprPtr Make(Expr::Kind kind) const {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->line = line_;
    return e;
  }
  ExprPtr Literal(Value v) const {
    auto e = Make(Expr::Kind::kLiteral);
    e->value = std::move(v);
    return e;
  }
  ExprPtr Binary(std::string op, ExprPtr a, ExprPtr b) const {
    auto e = Make(Expr::Kind::kBinary);
    e->name = std::move(op);
    e->a = std::move(a);
    e->b = std::move(b);
    return e;
  }

  std::vector<Token> t_;
  size_t p_ = 0;
  int line_;
  int depth_ = 0;
};

// ---- Stage 4: statements -----------------------------------------------

const std::set<std::string>& Unsupported() {
  static const auto* s = new std::set<std::string>{
      "macro", "call", "filter",     "include",    "import", "from",  "extends", "block",
      "with",  "raw",  "autoescape", "generation", "do",     "trans", "while"};
  return *s;
}

class StatementParser {
 public:
  explicit StatementParser(std::vector<Segment> segments) : s_(std::move(segments)) {}

  absl::StatusOr<std::unique_ptr<Program>> Run() {
    auto program = std::make_unique<Program>();
    std::string end;
    ASSIGN_OR_RETURN(program->body, ParseBody({}, &end, 0));
    return program;
  }

 private:
  // Nodes up to a statement whose keyword is in `ends` (returned in *end),
  // or the end of the template when `ends` is empty.
  absl::StatusOr<Body> ParseBody(const std::set<std::string>& ends, std::string* end, int loops) {
    if (++depth_ > kMaxBlockDepth) {
      return ErrorAt(pos_ < s_.size() ? s_[pos_].line : 0,
                     absl::StrCat("blocks nested deeper than ", kMaxBlockDepth));
    }
    struct Leave {
      int* depth;
      ~Leave() { --*depth; }
    } leave{&depth_};
    Body body;
    while (pos_ < s_.size()) {
      Segment& seg = s_[pos_++];
      switch (seg.kind) {
        case Segment::Kind::kComment:
          continue;
        case Segment::Kind::kText: {
          if (seg.text.empty()) continue;
          auto n = NewNode(Node::Kind::kText, seg.line);
          n->text = std::move(seg.text);
          body.push_back(std::move(n));
          continue;
        }
        case Segment::Kind::kOutput: {
          ASSIGN_OR_RETURN(std::vector<Token> tokens, Tokenize(seg.text, seg.line));
          ExprParser p(std::move(tokens), seg.line);
          auto n = NewNode(Node::Kind::kOutput, seg.line);
          ASSIGN_OR_RETURN(n->expr, p.Expression());
          RETURN_IF_ERROR(p.ExpectEnd());
          body.push_back(std::move(n));
          continue;
        }
        case Segment::Kind::kStatement:
          break;
      }
      ASSIGN_OR_RETURN(std::vector<Token> tokens, Tokenize(seg.text, seg.line));
      if (tokens[0].kind != Token::Kind::kName)
        return ErrorAt(seg.line, "a statement without a keyword");
      const std::string keyword = tokens[0].text;
      if (ends.count(keyword) > 0) {
        *end = keyword;
        --pos_;  // the caller reads the end tag
        return body;
      }
      ExprParser p(std::move(tokens), seg.line);
      p.SkipName(keyword);
      if (keyword == "if") {
        ASSIGN_OR_RETURN(std::unique_ptr<Node> n, ParseIf(p, seg.line, loops));
        body.push_back(std::move(n));
      } else if (keyword == "for") {
        ASSIGN_OR_RETURN(std::unique_ptr<Node> n, ParseFor(p, seg.line, loops));
        body.push_back(std::move(n));
      } else if (keyword == "set") {
        ASSIGN_OR_RETURN(std::unique_ptr<Node> n, ParseSet(p, seg.line));
        body.push_back(std::move(n));
      } else if (keyword == "break" || keyword == "continue") {
        if (loops == 0) return ErrorAt(seg.line, absl::StrCat("\"", keyword, "\" outside a loop"));
        RETURN_IF_ERROR(p.ExpectEnd());
        body.push_back(
            NewNode(keyword == "break" ? Node::Kind::kBreak : Node::Kind::kContinue, seg.line));
      } else if (Unsupported().count(keyword) > 0) {
        return ErrorAt(seg.line, absl::StrCat("the {% ", keyword,
                                              " %} statement is not supported by premoe's "
                                              "chat-template engine"));
      } else {
        return ErrorAt(seg.line, absl::StrCat("unexpected statement \"", keyword, "\""));
      }
    }
    if (!ends.empty()) {
      return ErrorAt(s_.empty() ? 1 : s_.back().line,
                     absl::StrCat("the template ends inside a block; expected {% ",
                                  absl::StrJoin(ends, " %} or {% "), " %}"));
    }
    return body;
  }

  // Consumes the end tag ParseBody stopped at; returns its parser.
  absl::StatusOr<ExprParser> EndTag() {
    const Segment& seg = s_[pos_++];
    ASSIGN_OR_RETURN(std::vector<Token> tokens, Tokenize(seg.text, seg.line));
    ExprParser p(std::move(tokens), seg.line);
    p.ExpectName("a keyword").IgnoreError();
    return p;
  }

  absl::StatusOr<std::unique_ptr<Node>> ParseIf(ExprParser& p, int line, int loops) {
    auto n = NewNode(Node::Kind::kIf, line);
    ASSIGN_OR_RETURN(ExprPtr cond, p.Expression());
    RETURN_IF_ERROR(p.ExpectEnd());
    while (true) {
      std::string end;
      ASSIGN_OR_RETURN(Body body, ParseBody({"elif", "else", "endif"}, &end, loops));
      n->branches.emplace_back(std::move(cond), std::move(body));
      ASSIGN_OR_RETURN(ExprParser tag, EndTag());
      if (end == "elif") {
        ASSIGN_OR_RETURN(cond, tag.Expression());
        RETURN_IF_ERROR(tag.ExpectEnd());
        continue;
      }
      RETURN_IF_ERROR(tag.ExpectEnd());
      if (end == "else") {
        ASSIGN_OR_RETURN(n->else_body, ParseBody({"endif"}, &end, loops));
        ASSIGN_OR_RETURN(ExprParser close, EndTag());
        RETURN_IF_ERROR(close.ExpectEnd());
      }
      return n;
    }
  }

  absl::StatusOr<std::unique_ptr<Node>> ParseFor(ExprParser& p, int line, int loops) {
    auto n = NewNode(Node::Kind::kFor, line);
    do {
      ASSIGN_OR_RETURN(std::string target, p.ExpectName("a loop variable"));
      n->targets.push_back(std::move(target));
    } while (p.SkipOp(","));
    if (!p.SkipName("in")) return p.Error("expected 'in'");
    // Jinja parses the iterable without `if` (that introduces the filter).
    ASSIGN_OR_RETURN(n->expr, p.Or());
    if (p.SkipName("if")) {
      ASSIGN_OR_RETURN(n->filter, p.Expression());
    }
    if (p.IsName("recursive")) return ErrorAt(line, "recursive loops are not supported");
    RETURN_IF_ERROR(p.ExpectEnd());
    std::string end;
    ASSIGN_OR_RETURN(n->body, ParseBody({"else", "endfor"}, &end, loops + 1));
    ASSIGN_OR_RETURN(ExprParser tag, EndTag());
    RETURN_IF_ERROR(tag.ExpectEnd());
    if (end == "else") {
      ASSIGN_OR_RETURN(n->else_body, ParseBody({"endfor"}, &end, loops));
      ASSIGN_OR_RETURN(ExprParser close, EndTag());
      RETURN_IF_ERROR(close.ExpectEnd());
    }
    return n;
  }

  absl::StatusOr<std::unique_ptr<Node>> ParseSet(ExprParser& p, int line) {
    auto n = NewNode(Node::Kind::kSet, line);
    ASSIGN_OR_RETURN(std::string target, p.ExpectName("a variable name after 'set'"));
    n->targets.push_back(std::move(target));
    if (p.SkipOp(".")) {
      ASSIGN_OR_RETURN(n->attribute, p.ExpectName("an attribute name"));
    } else {
      while (p.SkipOp(",")) {
        ASSIGN_OR_RETURN(std::string more, p.ExpectName("a variable name"));
        n->targets.push_back(std::move(more));
      }
    }
    if (p.AtEnd())
      return ErrorAt(line, "block assignments ({% set x %}...{% endset %}) are not supported");
    RETURN_IF_ERROR(p.ExpectOp("="));
    ASSIGN_OR_RETURN(n->expr, p.TupleOrExpression());
    RETURN_IF_ERROR(p.ExpectEnd());
    return n;
  }

  static std::unique_ptr<Node> NewNode(Node::Kind kind, int line) {
    auto n = std::make_unique<Node>();
    n->kind = kind;
    n->line = line;
    return n;
  }

  static constexpr int kMaxBlockDepth = 100;
  std::vector<Segment> s_;
  size_t pos_ = 0;
  int depth_ = 0;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Program>> Parse(absl::string_view source) {
  // Jinja's keep_trailing_newline=False: the source's one final newline goes.
  if (!absl::ConsumeSuffix(&source, "\r\n")) absl::ConsumeSuffix(&source, "\n");
  ASSIGN_OR_RETURN(std::vector<Segment> segments, Cut(source));
  StatementParser parser(std::move(segments));
  return parser.Run();
}

}  // namespace premoe::chat::jinja
