// Syntax tree -> text. Scopes follow Jinja: a for loop's body gets a fresh
// scope every iteration (what it sets is gone at the next one, hence
// namespace()), `if` gets none. Errors are INVALID_ARGUMENT "line N: ...",
// except raise_exception's, which carries the template's own message.
#include <utf8proc.h>

#include <algorithm>
#include <cmath>
#include <ctime>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "chat/src/jinja.h"
#include "premoe/common/status.h"

namespace premoe::chat::jinja {

bool IsFilter(absl::string_view name) {
  static const auto* names = new std::set<std::string, std::less<>>{
      "abs",   "capitalize", "count",   "d",       "default", "first",      "float",
      "int",   "items",      "join",    "last",    "length",  "list",       "lower",
      "map",   "rejectattr", "replace", "reverse", "safe",    "selectattr", "string",
      "title", "tojson",     "trim",    "upper"};
  return names->count(name) > 0;
}

bool IsTest(absl::string_view name) {
  static const auto* names = new std::set<std::string, std::less<>>{
      "defined", "undefined",   "none",  "string",  "number",   "integer",  "float",
      "boolean", "true",        "false", "mapping", "iterable", "sequence", "odd",
      "even",    "divisibleby", "eq",    "equalto", "ne",       "lt",       "gt",
      "le",      "ge",          "in",    "lower",   "upper"};
  return names->count(name) > 0;
}

bool IsGlobalFunction(absl::string_view name) {
  return name == "raise_exception" || name == "namespace" || name == "range" || name == "dict" ||
         name == "strftime_now";
}

bool IsMethod(absl::string_view name) {
  static const auto* names = new std::set<std::string, std::less<>>{
      "strip", "lstrip", "rstrip", "split",      "rsplit",  "startswith", "endswith",
      "upper", "lower",  "title",  "capitalize", "replace", "find",       "count",
      "join",  "items",  "keys",   "values",     "get"};
  return names->count(name) > 0;
}

namespace {

enum class Flow { kNormal, kBreak, kContinue };

std::u32string MapCase(const std::u32string& s, bool upper) {
  std::u32string out = s;
  for (char32_t& c : out) {
    c = static_cast<char32_t>(upper ? utf8proc_toupper(static_cast<utf8proc_int32_t>(c))
                                    : utf8proc_tolower(static_cast<utf8proc_int32_t>(c)));
  }
  return out;
}

bool IsAlpha(char32_t c) {
  const utf8proc_category_t cat = utf8proc_category(static_cast<utf8proc_int32_t>(c));
  return cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO;
}

std::string Upper(const std::string& s) { return Encode(MapCase(Decode(s), true)); }
std::string Lower(const std::string& s) { return Encode(MapCase(Decode(s), false)); }

std::string Capitalize(const std::string& s) {
  std::u32string t = MapCase(Decode(s), false);
  if (!t.empty()) t[0] = MapCase(t.substr(0, 1), true)[0];
  return Encode(t);
}

std::string Title(const std::string& s) {
  std::u32string t = Decode(s);
  bool prev_alpha = false;
  for (char32_t& c : t) {
    const bool alpha = IsAlpha(c);
    c = MapCase(std::u32string(1, c), !prev_alpha)[0];
    prev_alpha = alpha;
  }
  return Encode(t);
}

// Python's str.split / str.rsplit.
std::vector<std::string> Split(const std::string& s, const std::string* sep, int64_t maxsplit,
                               bool from_right) {
  std::vector<std::string> parts;
  if (sep == nullptr) {
    std::u32string t = Decode(s);
    std::vector<std::u32string> words;
    if (!from_right) {
      size_t k = 0;
      while (k < t.size()) {
        while (k < t.size() && IsSpace(t[k])) ++k;
        if (k == t.size()) break;
        if (maxsplit >= 0 && static_cast<int64_t>(words.size()) == maxsplit) {
          size_t e = t.size();
          while (e > k && IsSpace(t[e - 1])) --e;
          words.push_back(t.substr(k, e - k));
          break;
        }
        size_t e = k;
        while (e < t.size() && !IsSpace(t[e])) ++e;
        words.push_back(t.substr(k, e - k));
        k = e;
      }
    } else {
      size_t k = t.size();
      while (k > 0) {
        while (k > 0 && IsSpace(t[k - 1])) --k;
        if (k == 0) break;
        if (maxsplit >= 0 && static_cast<int64_t>(words.size()) == maxsplit) {
          size_t b = 0;
          while (b < k && IsSpace(t[b])) ++b;
          words.push_back(t.substr(b, k - b));
          break;
        }
        size_t b = k;
        while (b > 0 && !IsSpace(t[b - 1])) --b;
        words.push_back(t.substr(b, k - b));
        k = b;
      }
      std::reverse(words.begin(), words.end());
    }
    for (const auto& w : words) parts.push_back(Encode(w));
    return parts;
  }
  if (!from_right) {
    size_t k = 0;
    while (true) {
      if (maxsplit >= 0 && static_cast<int64_t>(parts.size()) == maxsplit) break;
      const size_t e = s.find(*sep, k);
      if (e == std::string::npos) break;
      parts.push_back(s.substr(k, e - k));
      k = e + sep->size();
    }
    parts.push_back(s.substr(k));
    return parts;
  }
  size_t end = s.size();
  while (true) {
    if (maxsplit >= 0 && static_cast<int64_t>(parts.size()) == maxsplit) break;
    if (end < sep->size()) break;
    const size_t e = s.rfind(*sep, end - sep->size());
    if (e == std::string::npos) break;
    parts.push_back(s.substr(e + sep->size(), end - e - sep->size()));
    end = e;
  }
  parts.push_back(s.substr(0, end));
  std::reverse(parts.begin(), parts.end());
  return parts;
}

std::string Replace(const std::string& s, const std::string& old, const std::string& with,
                    int64_t count) {
  std::string out;
  if (old.empty()) {
    // Python inserts `with` before every code point and at the end.
    const std::u32string t = Decode(s);
    int64_t done = 0;
    for (char32_t c : t) {
      if (count < 0 || done < count) {
        out += with;
        ++done;
      }
      out += Encode(std::u32string(1, c));
    }
    if (count < 0 || done < count) out += with;
    return out;
  }
  size_t k = 0;
  int64_t done = 0;
  while (count < 0 || done < count) {
    const size_t e = s.find(old, k);
    if (e == std::string::npos) break;
    out.append(s, k, e - k);
    out += with;
    k = e + old.size();
    ++done;
  }
  out.append(s, k, std::string::npos);
  return out;
}

// Python's slice.indices(len): the positions a[start:stop:step] takes.
std::vector<int64_t> SliceIndices(int64_t len, std::optional<int64_t> start,
                                  std::optional<int64_t> stop, int64_t step) {
  auto clamp = [&](std::optional<int64_t> v, int64_t dflt, int64_t lo, int64_t hi) {
    if (!v.has_value()) return dflt;
    int64_t x = *v;
    if (x < 0) x += len;
    return std::clamp(x, lo, hi);
  };
  std::vector<int64_t> out;
  if (step > 0) {
    const int64_t b = clamp(start, 0, 0, len), e = clamp(stop, len, 0, len);
    for (int64_t k = b; k < e; k += step) out.push_back(k);
  } else {
    const int64_t b = clamp(start, len - 1, -1, len - 1), e = clamp(stop, -1, -1, len - 1);
    for (int64_t k = b; k > e; k += step) out.push_back(k);
  }
  return out;
}

class Renderer {
 public:
  Renderer(const Dict& globals, const RenderLimits& limits) : limits_(limits) {
    scopes_.emplace_back(globals);
  }

  absl::Status Run(const Body& body) {
    ASSIGN_OR_RETURN(Flow f, Exec(body));
    (void)f;
    return absl::OkStatus();
  }
  std::string& out() { return out_; }

 private:
  // ---- statements ----

  absl::StatusOr<Flow> Exec(const Body& body) {
    for (const auto& node : body) {
      ASSIGN_OR_RETURN(Flow f, Exec(*node));
      if (f != Flow::kNormal) return f;
    }
    return Flow::kNormal;
  }

  absl::StatusOr<Flow> Exec(const Node& n) {
    RETURN_IF_ERROR(Step(n.line));
    switch (n.kind) {
      case Node::Kind::kText:
        return Emit(n.text, n.line);
      case Node::Kind::kOutput: {
        ASSIGN_OR_RETURN(Value v, Eval(*n.expr));
        return Emit(ToStr(v), n.line);
      }
      case Node::Kind::kIf:
        for (const auto& [cond, body] : n.branches) {
          ASSIGN_OR_RETURN(Value c, Eval(*cond));
          if (Truthy(c)) return Exec(body);
        }
        return Exec(n.else_body);
      case Node::Kind::kFor:
        return ExecFor(n);
      case Node::Kind::kSet:
        return ExecSet(n);
      case Node::Kind::kBreak:
        return Flow::kBreak;
      case Node::Kind::kContinue:
        return Flow::kContinue;
    }
    return Flow::kNormal;
  }

  absl::StatusOr<Flow> Emit(const std::string& text, int line) {
    if (static_cast<int64_t>(out_.size() + text.size()) > limits_.max_output_bytes) {
      return ErrorAt(
          line, absl::StrCat("the rendered text would pass ", limits_.max_output_bytes, " bytes"));
    }
    out_ += text;
    return Flow::kNormal;
  }

  absl::StatusOr<Flow> ExecFor(const Node& n) {
    ASSIGN_OR_RETURN(Value iterable, Eval(*n.expr));
    ASSIGN_OR_RETURN(List items, Iterate(iterable, n.line));
    if (n.filter != nullptr) {
      List kept;
      for (Value& item : items) {
        scopes_.emplace_back();
        RETURN_IF_ERROR(Bind(n.targets, item, n.line));
        absl::StatusOr<Value> keep = Eval(*n.filter);
        scopes_.pop_back();
        if (!keep.ok()) return keep.status();
        if (Truthy(*keep)) kept.push_back(std::move(item));
      }
      items = std::move(kept);
    }
    if (items.empty()) return Exec(n.else_body);
    const int64_t len = static_cast<int64_t>(items.size());
    for (int64_t k = 0; k < len; ++k) {
      RETURN_IF_ERROR(Step(n.line));
      Dict loop = {{"index", Value::Int(k + 1)},
                   {"index0", Value::Int(k)},
                   {"revindex", Value::Int(len - k)},
                   {"revindex0", Value::Int(len - k - 1)},
                   {"first", Value::Bool(k == 0)},
                   {"last", Value::Bool(k == len - 1)},
                   {"length", Value::Int(len)},
                   {"depth", Value::Int(1)},
                   {"depth0", Value::Int(0)},
                   {"previtem", k > 0 ? items[k - 1] : Value::Undefined("loop.previtem")},
                   {"nextitem", k + 1 < len ? items[k + 1] : Value::Undefined("loop.nextitem")}};
      scopes_.emplace_back();
      scopes_.back().emplace_back("loop", Value::DictOf(std::move(loop)));
      absl::Status bound = Bind(n.targets, items[k], n.line);
      absl::StatusOr<Flow> f = bound.ok() ? Exec(n.body) : absl::StatusOr<Flow>(bound);
      scopes_.pop_back();
      if (!f.ok()) return f.status();
      if (*f == Flow::kBreak) break;
    }
    return Flow::kNormal;
  }

  absl::Status Bind(const std::vector<std::string>& targets, const Value& v, int line) {
    if (targets.size() == 1) {
      Set(targets[0], v);
      return absl::OkStatus();
    }
    ASSIGN_OR_RETURN(List parts, Iterate(v, line));
    if (parts.size() != targets.size()) {
      return ErrorAt(line, absl::StrCat("cannot unpack ", parts.size(), " values into ",
                                        targets.size(), " names"));
    }
    for (size_t k = 0; k < targets.size(); ++k) Set(targets[k], parts[k]);
    return absl::OkStatus();
  }

  absl::StatusOr<Flow> ExecSet(const Node& n) {
    ASSIGN_OR_RETURN(Value v, Eval(*n.expr));
    if (n.attribute.empty()) {
      RETURN_IF_ERROR(Bind(n.targets, v, n.line));
      return Flow::kNormal;
    }
    const Value ns = Lookup(n.targets[0]);
    if (ns.kind != Value::Kind::kDict || !ns.is_namespace) {
      return ErrorAt(
          n.line, absl::StrCat("cannot assign attribute on non-namespace object ", n.targets[0]));
    }
    for (auto& [k, x] : *ns.dict) {
      if (k == n.attribute) {
        x = std::move(v);
        return Flow::kNormal;
      }
    }
    ns.dict->emplace_back(n.attribute, std::move(v));
    return Flow::kNormal;
  }

  void Set(const std::string& name, Value v) {
    for (auto& [k, x] : scopes_.back()) {
      if (k == name) {
        x = std::move(v);
        return;
      }
    }
    scopes_.back().emplace_back(name, std::move(v));
  }

  Value Lookup(const std::string& name) const {
    for (auto scope = scopes_.rbegin(); scope != scopes_.rend(); ++scope) {
      for (const auto& [k, x] : *scope) {
        if (k == name) return x;
      }
    }
    if (IsGlobalFunction(name)) return Value::Function(name);
    return Value::Undefined(absl::StrCat("'", name, "' is undefined"));
  }

  absl::Status Step(int line) {
    if (++steps_ > limits_.max_steps) {
      return ErrorAt(line, absl::StrCat("rendering took over ", limits_.max_steps, " steps"));
    }
    return absl::OkStatus();
  }

  static absl::Status ErrorAt(int line, absl::string_view message) {
    return absl::InvalidArgumentError(absl::StrCat("line ", line, ": ", message));
  }

  // ---- expressions ----

  absl::StatusOr<List> Iterate(const Value& v, int line) {
    switch (v.kind) {
      case Value::Kind::kUndefined:
        return List{};
      case Value::Kind::kList:
        return *v.list;
      case Value::Kind::kDict: {
        List keys;
        for (const auto& [k, x] : *v.dict) keys.push_back(Value::String(k));
        return keys;
      }
      case Value::Kind::kString: {
        List chars;
        for (char32_t c : Decode(v.s)) chars.push_back(Value::String(Encode(std::u32string(1, c))));
        return chars;
      }
      default:
        return ErrorAt(line, absl::StrCat("'", TypeName(v), "' object is not iterable"));
    }
  }

  absl::StatusOr<Value> Eval(const Expr& e) {
    switch (e.kind) {
      case Expr::Kind::kLiteral:
        return e.value;
      case Expr::Kind::kName:
        return Lookup(e.name);
      case Expr::Kind::kList: {
        List items;
        for (const auto& item : e.items) {
          ASSIGN_OR_RETURN(Value v, Eval(*item));
          items.push_back(std::move(v));
        }
        return Value::ListOf(std::move(items));
      }
      case Expr::Kind::kDict: {
        Dict items;
        for (size_t k = 0; k < e.items.size(); ++k) {
          ASSIGN_OR_RETURN(Value key, Eval(*e.keys[k]));
          if (key.kind != Value::Kind::kString) {
            return ErrorAt(e.line, "dict keys must be strings here");
          }
          ASSIGN_OR_RETURN(Value v, Eval(*e.items[k]));
          bool replaced = false;
          for (auto& [k2, x] : items) {
            if (k2 == key.s) {
              x = v;
              replaced = true;
            }
          }
          if (!replaced) items.emplace_back(key.s, std::move(v));
        }
        return Value::DictOf(std::move(items));
      }
      case Expr::Kind::kAttr: {
        ASSIGN_OR_RETURN(Value obj, Eval(*e.a));
        return Attr(obj, e.name, e.line);
      }
      case Expr::Kind::kItem: {
        ASSIGN_OR_RETURN(Value obj, Eval(*e.a));
        ASSIGN_OR_RETURN(Value key, Eval(*e.b));
        return Item(obj, key, e.line);
      }
      case Expr::Kind::kSlice:
        return EvalSlice(e);
      case Expr::Kind::kCall:
        return EvalCall(e);
      case Expr::Kind::kFilter: {
        ASSIGN_OR_RETURN(Value v, Eval(*e.a));
        ASSIGN_OR_RETURN(std::vector<Value> args, EvalArgs(e.args.positional));
        ASSIGN_OR_RETURN(Dict kwargs, EvalKwargs(e.args));
        return Filter(e.name, v, args, kwargs, e.line);
      }
      case Expr::Kind::kTest: {
        ASSIGN_OR_RETURN(Value v, Eval(*e.a));
        ASSIGN_OR_RETURN(std::vector<Value> args, EvalArgs(e.args.positional));
        ASSIGN_OR_RETURN(bool r, Test(e.name, v, args, e.line));
        return Value::Bool(r != e.negated);
      }
      case Expr::Kind::kNot: {
        ASSIGN_OR_RETURN(Value v, Eval(*e.a));
        return Value::Bool(!Truthy(v));
      }
      case Expr::Kind::kNeg: {
        ASSIGN_OR_RETURN(Value v, Eval(*e.a));
        if (v.kind == Value::Kind::kFloat) return Value::Float(-v.f);
        if (v.kind == Value::Kind::kInt || v.kind == Value::Kind::kBool) {
          const int64_t x = v.kind == Value::Kind::kBool ? v.b : v.i;
          if (x == INT64_MIN) return ErrorAt(e.line, "integer overflow");
          return Value::Int(-x);
        }
        return ErrorAt(e.line, absl::StrCat("bad operand type for unary -: '", TypeName(v), "'"));
      }
      case Expr::Kind::kBinary:
        return EvalBinary(e);
      case Expr::Kind::kCond: {
        ASSIGN_OR_RETURN(Value c, Eval(*e.a));
        if (Truthy(c)) return Eval(*e.b);
        if (e.c == nullptr) return Value::Undefined("the else branch of an inline if");
        return Eval(*e.c);
      }
    }
    return ErrorAt(e.line, "unknown expression");
  }

  absl::StatusOr<std::vector<Value>> EvalArgs(const std::vector<ExprPtr>& args) {
    std::vector<Value> out;
    for (const auto& a : args) {
      ASSIGN_OR_RETURN(Value v, Eval(*a));
      out.push_back(std::move(v));
    }
    return out;
  }

  absl::StatusOr<Dict> EvalKwargs(const Arguments& args) {
    Dict out;
    for (const auto& [k, a] : args.keyword) {
      ASSIGN_OR_RETURN(Value v, Eval(*a));
      out.emplace_back(k, std::move(v));
    }
    return out;
  }

  static absl::Status UndefinedError(const Value& v, int line) {
    return ErrorAt(line, v.s.empty() ? "a value is undefined" : v.s);
  }

  absl::StatusOr<Value> Attr(const Value& obj, const std::string& name, int line) {
    if (!obj.defined()) return UndefinedError(obj, line);
    if (obj.kind == Value::Kind::kDict) {
      if (const Value* v = obj.Find(name)) return *v;
    }
    return Value::Undefined(
        absl::StrCat("'", TypeName(obj), " object' has no attribute '", name, "'"));
  }

  absl::StatusOr<Value> Item(const Value& obj, const Value& key, int line) {
    if (!obj.defined()) return UndefinedError(obj, line);
    const bool int_key = key.kind == Value::Kind::kInt || key.kind == Value::Kind::kBool;
    const int64_t index = key.kind == Value::Kind::kBool ? key.b : key.i;
    if (obj.kind == Value::Kind::kDict && key.kind == Value::Kind::kString) {
      if (const Value* v = obj.Find(key.s)) return *v;
      return Value::Undefined(absl::StrCat("'dict object' has no attribute '", key.s, "'"));
    }
    if (obj.kind == Value::Kind::kList && int_key) {
      const int64_t n = static_cast<int64_t>(obj.list->size());
      const int64_t k = index < 0 ? index + n : index;
      if (k >= 0 && k < n) return (*obj.list)[k];
      return Value::Undefined("list index out of range");
    }
    if (obj.kind == Value::Kind::kString && int_key) {
      const std::u32string t = Decode(obj.s);
      const int64_t n = static_cast<int64_t>(t.size());
      const int64_t k = index < 0 ? index + n : index;
      if (k >= 0 && k < n) return Value::String(Encode(t.substr(k, 1)));
      return Value::Undefined("string index out of range");
    }
    if (key.kind == Value::Kind::kString) return Attr(obj, key.s, line);
    return Value::Undefined(absl::StrCat("'", TypeName(obj), " object' has no item ", Repr(key)));
  }

  absl::StatusOr<Value> EvalSlice(const Expr& e) {
    ASSIGN_OR_RETURN(Value obj, Eval(*e.a));
    std::optional<int64_t> parts[3];
    for (int k = 0; k < 3; ++k) {
      if (e.items[k] == nullptr) continue;
      ASSIGN_OR_RETURN(Value v, Eval(*e.items[k]));
      if (v.kind == Value::Kind::kNone) continue;
      if (v.kind != Value::Kind::kInt && v.kind != Value::Kind::kBool) {
        return ErrorAt(e.line, "slice indices must be integers or None");
      }
      parts[k] = v.kind == Value::Kind::kBool ? v.b : v.i;
    }
    const int64_t step = parts[2].value_or(1);
    if (step == 0) return ErrorAt(e.line, "slice step cannot be zero");
    if (obj.kind == Value::Kind::kList) {
      List out;
      for (int64_t k :
           SliceIndices(static_cast<int64_t>(obj.list->size()), parts[0], parts[1], step)) {
        out.push_back((*obj.list)[k]);
      }
      return Value::ListOf(std::move(out));
    }
    if (obj.kind == Value::Kind::kString) {
      const std::u32string t = Decode(obj.s);
      std::u32string out;
      for (int64_t k : SliceIndices(static_cast<int64_t>(t.size()), parts[0], parts[1], step))
        out += t[k];
      return Value::String(Encode(out));
    }
    if (!obj.defined()) return UndefinedError(obj, e.line);
    return ErrorAt(e.line, absl::StrCat("'", TypeName(obj), "' object is not subscriptable"));
  }

  static absl::StatusOr<int64_t> IntArg(const Value& v, absl::string_view what, int line) {
    if (v.kind == Value::Kind::kInt) return v.i;
    if (v.kind == Value::Kind::kBool) return int64_t{v.b};
    return ErrorAt(line, absl::StrCat(what, " must be an integer, not ", TypeName(v)));
  }

  static absl::StatusOr<std::string> StrArg(const Value& v, absl::string_view what, int line) {
    if (v.kind == Value::Kind::kString) return v.s;
    return ErrorAt(line, absl::StrCat(what, " must be a string, not ", TypeName(v)));
  }

  // A call's arguments by position or keyword: `names` in order.
  static absl::StatusOr<std::vector<std::optional<Value>>> Bound(
      absl::string_view fn, const std::vector<Value>& args, const Dict& kwargs,
      const std::vector<std::string>& names, int line) {
    if (args.size() > names.size()) {
      return ErrorAt(line, absl::StrCat(fn, "() takes at most ", names.size(), " arguments (",
                                        args.size(), " given)"));
    }
    std::vector<std::optional<Value>> out(names.size());
    for (size_t k = 0; k < args.size(); ++k) out[k] = args[k];
    for (const auto& [key, v] : kwargs) {
      auto it = std::find(names.begin(), names.end(), key);
      if (it == names.end()) {
        return ErrorAt(line, absl::StrCat(fn, "() got an unexpected keyword argument '", key, "'"));
      }
      out[it - names.begin()] = v;
    }
    return out;
  }

  absl::StatusOr<Value> EvalCall(const Expr& e) {
    ASSIGN_OR_RETURN(std::vector<Value> args, EvalArgs(e.args.positional));
    ASSIGN_OR_RETURN(Dict kwargs, EvalKwargs(e.args));
    if (e.a->kind == Expr::Kind::kName) {
      const Value callee = Lookup(e.a->name);
      if (callee.kind != Value::Kind::kFunction) {
        return ErrorAt(e.line, absl::StrCat("'", e.a->name, "' is not callable"));
      }
      return CallGlobal(callee.s, args, kwargs, e.line);
    }
    ASSIGN_OR_RETURN(Value obj, Eval(*e.a->a));
    return CallMethod(obj, e.a->name, args, kwargs, e.line);
  }

  absl::StatusOr<Value> CallGlobal(const std::string& fn, const std::vector<Value>& args,
                                   const Dict& kwargs, int line) {
    if (fn == "raise_exception") {
      absl::Status raised =
          absl::InvalidArgumentError(args.empty() ? "raise_exception()" : ToStr(args[0]));
      raised.SetPayload(kRaisedPayload, absl::Cord("1"));
      return raised;
    }
    if (fn == "namespace" || fn == "dict") {
      Dict attrs;
      for (const Value& a : args) {
        if (a.kind != Value::Kind::kDict) {
          return ErrorAt(line, absl::StrCat(fn, "() takes keyword arguments or a dict"));
        }
        for (const auto& kv : *a.dict) attrs.push_back(kv);
      }
      for (const auto& kv : kwargs) attrs.push_back(kv);
      return Value::DictOf(std::move(attrs), fn == "namespace");
    }
    if (fn == "range") {
      if (args.empty() || args.size() > 3 || !kwargs.empty()) {
        return ErrorAt(line, "range() takes 1 to 3 integer arguments");
      }
      int64_t v[3] = {0, 0, 1};
      for (size_t k = 0; k < args.size(); ++k) {
        ASSIGN_OR_RETURN(v[args.size() == 1 ? 1 : k], IntArg(args[k], "range()'s arguments", line));
      }
      if (v[2] == 0) return ErrorAt(line, "range() arg 3 must not be zero");
      List out;
      for (int64_t x = v[0]; v[2] > 0 ? x < v[1] : x > v[1]; x += v[2]) {
        RETURN_IF_ERROR(Step(line));
        out.push_back(Value::Int(x));
      }
      return Value::ListOf(std::move(out));
    }
    if (fn == "strftime_now") {
      if (args.size() != 1 || args[0].kind != Value::Kind::kString) {
        return ErrorAt(line, "strftime_now() takes one format string");
      }
      const std::time_t now = std::time(nullptr);
      std::tm tm{};
      localtime_r(&now, &tm);
      char buf[256];
      const size_t n = std::strftime(buf, sizeof(buf), args[0].s.c_str(), &tm);
      return Value::String(std::string(buf, n));
    }
    return ErrorAt(line, absl::StrCat("unknown function ", fn));
  }

  absl::StatusOr<Value> CallMethod(const Value& obj, const std::string& name,
                                   const std::vector<Value>& args, const Dict& kwargs, int line) {
    if (!obj.defined()) return UndefinedError(obj, line);
    if (obj.kind == Value::Kind::kString) return StringMethod(obj.s, name, args, kwargs, line);
    if (obj.kind == Value::Kind::kDict && !obj.is_namespace) {
      if (name == "items" || name == "keys" || name == "values") {
        if (!args.empty() || !kwargs.empty()) {
          return ErrorAt(line, absl::StrCat("dict.", name, "() takes no arguments"));
        }
        List out;
        for (const auto& [k, v] : *obj.dict) {
          if (name == "items") {
            out.push_back(Value::ListOf({Value::String(k), v}, /*is_tuple=*/true));
          } else {
            out.push_back(name == "keys" ? Value::String(k) : v);
          }
        }
        return Value::ListOf(std::move(out));
      }
      if (name == "get") {
        ASSIGN_OR_RETURN(auto a, Bound("get", args, kwargs, {"key", "default"}, line));
        if (!a[0].has_value()) return ErrorAt(line, "dict.get() needs a key");
        if (a[0]->kind == Value::Kind::kString) {
          if (const Value* v = obj.Find(a[0]->s)) return *v;
        }
        return a[1].value_or(Value::None());
      }
    }
    return ErrorAt(line, absl::StrCat("'", TypeName(obj), "' object has no method '", name, "'"));
  }

  absl::StatusOr<Value> StringMethod(const std::string& s, const std::string& name,
                                     const std::vector<Value>& args, const Dict& kwargs, int line) {
    if (name == "strip" || name == "lstrip" || name == "rstrip") {
      ASSIGN_OR_RETURN(auto a, Bound(name, args, kwargs, {"chars"}, line));
      std::string chars;
      const bool given = a[0].has_value() && a[0]->kind != Value::Kind::kNone;
      if (given) {
        ASSIGN_OR_RETURN(chars, StrArg(*a[0], "strip's chars", line));
      }
      return Value::String(Strip(s, given ? &chars : nullptr, name != "rstrip", name != "lstrip"));
    }
    if (name == "split" || name == "rsplit") {
      ASSIGN_OR_RETURN(auto a, Bound(name, args, kwargs, {"sep", "maxsplit"}, line));
      std::string sep;
      const bool given = a[0].has_value() && a[0]->kind != Value::Kind::kNone;
      if (given) {
        ASSIGN_OR_RETURN(sep, StrArg(*a[0], "split's separator", line));
        if (sep.empty()) return ErrorAt(line, "empty separator");
      }
      int64_t maxsplit = -1;
      if (a[1].has_value()) {
        ASSIGN_OR_RETURN(maxsplit, IntArg(*a[1], "maxsplit", line));
      }
      List out;
      for (auto& part : Split(s, given ? &sep : nullptr, maxsplit, name == "rsplit")) {
        out.push_back(Value::String(std::move(part)));
      }
      return Value::ListOf(std::move(out));
    }
    if (name == "startswith" || name == "endswith") {
      if (args.size() != 1 || !kwargs.empty()) {
        return ErrorAt(line, absl::StrCat(name, "() takes one argument here"));
      }
      std::vector<std::string> options;
      if (args[0].kind == Value::Kind::kList) {
        for (const Value& v : *args[0].list) {
          ASSIGN_OR_RETURN(options.emplace_back(), StrArg(v, name, line));
        }
      } else {
        ASSIGN_OR_RETURN(options.emplace_back(), StrArg(args[0], name, line));
      }
      for (const std::string& o : options) {
        if (name == "startswith" ? absl::StartsWith(s, o) : absl::EndsWith(s, o))
          return Value::Bool(true);
      }
      return Value::Bool(false);
    }
    if (name == "upper" || name == "lower" || name == "title" || name == "capitalize") {
      if (!args.empty() || !kwargs.empty())
        return ErrorAt(line, absl::StrCat(name, "() takes no arguments"));
      return Value::String(name == "upper"   ? Upper(s)
                           : name == "lower" ? Lower(s)
                           : name == "title" ? Title(s)
                                             : Capitalize(s));
    }
    if (name == "replace") {
      ASSIGN_OR_RETURN(auto a, Bound(name, args, kwargs, {"old", "new", "count"}, line));
      if (!a[0].has_value() || !a[1].has_value())
        return ErrorAt(line, "replace() needs old and new");
      ASSIGN_OR_RETURN(std::string old, StrArg(*a[0], "replace's old", line));
      ASSIGN_OR_RETURN(std::string with, StrArg(*a[1], "replace's new", line));
      int64_t count = -1;
      if (a[2].has_value()) {
        ASSIGN_OR_RETURN(count, IntArg(*a[2], "replace's count", line));
      }
      return Value::String(Replace(s, old, with, count));
    }
    if (name == "find" || name == "count") {
      if (args.size() != 1 || !kwargs.empty())
        return ErrorAt(line, absl::StrCat(name, "() takes one argument here"));
      ASSIGN_OR_RETURN(std::string sub, StrArg(args[0], name, line));
      if (name == "find") {
        const size_t at = s.find(sub);
        return Value::Int(
            at == std::string::npos ? -1 : static_cast<int64_t>(Decode(s.substr(0, at)).size()));
      }
      if (sub.empty()) return Value::Int(static_cast<int64_t>(Decode(s).size()) + 1);
      int64_t n = 0;
      for (size_t at = s.find(sub); at != std::string::npos; at = s.find(sub, at + sub.size())) ++n;
      return Value::Int(n);
    }
    if (name == "join") {
      if (args.size() != 1 || !kwargs.empty()) return ErrorAt(line, "join() takes one argument");
      ASSIGN_OR_RETURN(List items, Iterate(args[0], line));
      std::string out;
      for (size_t k = 0; k < items.size(); ++k) {
        ASSIGN_OR_RETURN(std::string part, StrArg(items[k], "join's items", line));
        absl::StrAppend(&out, k > 0 ? s : "", part);
      }
      return Value::String(std::move(out));
    }
    return ErrorAt(line, absl::StrCat("'str' object has no method '", name, "'"));
  }

  absl::StatusOr<Value> Filter(const std::string& name, const Value& v,
                               const std::vector<Value>& args, const Dict& kwargs, int line) {
    if (name == "length" || name == "count") {
      switch (v.kind) {
        case Value::Kind::kUndefined:
          return Value::Int(0);
        case Value::Kind::kString:
          return Value::Int(static_cast<int64_t>(Decode(v.s).size()));
        case Value::Kind::kList:
          return Value::Int(static_cast<int64_t>(v.list->size()));
        case Value::Kind::kDict:
          return Value::Int(static_cast<int64_t>(v.dict->size()));
        default:
          return ErrorAt(line, absl::StrCat("object of type '", TypeName(v), "' has no len()"));
      }
    }
    if (name == "default" || name == "d") {
      ASSIGN_OR_RETURN(auto a, Bound(name, args, kwargs, {"default_value", "boolean"}, line));
      const bool boolean = a[1].has_value() && Truthy(*a[1]);
      if (!v.defined() || (boolean && !Truthy(v))) return a[0].value_or(Value::String(""));
      return v;
    }
    if (name == "tojson") {
      ASSIGN_OR_RETURN(auto a, Bound(name, args, kwargs,
                                     {"ensure_ascii", "indent", "separators", "sort_keys"}, line));
      if (a[0].has_value() && Truthy(*a[0]))
        return ErrorAt(line, "tojson(ensure_ascii=True) is not supported");
      if (a[2].has_value() && a[2]->kind != Value::Kind::kNone) {
        return ErrorAt(line, "tojson(separators=...) is not supported");
      }
      int64_t indent = -1;
      if (a[1].has_value() && a[1]->kind != Value::Kind::kNone) {
        ASSIGN_OR_RETURN(indent, IntArg(*a[1], "tojson's indent", line));
        if (indent < 0 || indent > 64) return ErrorAt(line, "tojson's indent must be 0 to 64");
      }
      if (!v.defined()) return UndefinedError(v, line);
      absl::StatusOr<std::string> json =
          ToJson(v, static_cast<int>(indent), a[3].has_value() && Truthy(*a[3]));
      if (!json.ok()) return ErrorAt(line, json.status().message());
      return Value::String(*std::move(json));
    }
    if (name == "safe" || name == "string") {
      if (name == "safe" && v.kind == Value::Kind::kString) return v;
      return Value::String(ToStr(v));
    }
    if (name == "trim") {
      ASSIGN_OR_RETURN(auto a, Bound(name, args, kwargs, {"chars"}, line));
      std::string chars;
      const bool given = a[0].has_value() && a[0]->kind != Value::Kind::kNone;
      if (given) {
        ASSIGN_OR_RETURN(chars, StrArg(*a[0], "trim's chars", line));
      }
      return Value::String(Strip(ToStr(v), given ? &chars : nullptr, true, true));
    }
    if (name == "upper" || name == "lower" || name == "title" || name == "capitalize") {
      return StringMethod(ToStr(v), name, args, kwargs, line);
    }
    if (name == "replace") return StringMethod(ToStr(v), name, args, kwargs, line);
    if (name == "join") {
      ASSIGN_OR_RETURN(auto a, Bound(name, args, kwargs, {"d", "attribute"}, line));
      std::string sep;
      if (a[0].has_value()) sep = ToStr(*a[0]);
      ASSIGN_OR_RETURN(List items, Iterate(v, line));
      std::string out;
      for (size_t k = 0; k < items.size(); ++k) {
        Value item = items[k];
        if (a[1].has_value()) {
          ASSIGN_OR_RETURN(item, Attr(item, ToStr(*a[1]), line));
        }
        absl::StrAppend(&out, k > 0 ? sep : "", ToStr(item));
      }
      return Value::String(std::move(out));
    }
    if (name == "first" || name == "last") {
      if (!args.empty() || !kwargs.empty())
        return ErrorAt(line, absl::StrCat("|", name, " takes no arguments"));
      ASSIGN_OR_RETURN(List items, Iterate(v, line));
      if (items.empty()) return Value::Undefined(absl::StrCat("|", name, " of an empty sequence"));
      return name == "first" ? items.front() : items.back();
    }
    if (name == "list") {
      ASSIGN_OR_RETURN(List items, Iterate(v, line));
      return Value::ListOf(std::move(items));
    }
    if (name == "reverse") {
      if (v.kind == Value::Kind::kString) {
        std::u32string t = Decode(v.s);
        std::reverse(t.begin(), t.end());
        return Value::String(Encode(t));
      }
      ASSIGN_OR_RETURN(List items, Iterate(v, line));
      std::reverse(items.begin(), items.end());
      return Value::ListOf(std::move(items));
    }
    if (name == "items") {
      if (!v.defined()) return Value::ListOf({});
      if (v.kind != Value::Kind::kDict) return ErrorAt(line, "|items needs a mapping");
      return CallMethod(v, "items", {}, {}, line);
    }
    if (name == "int" || name == "float" || name == "abs") {
      if (name == "abs") {
        if (v.kind == Value::Kind::kFloat) return Value::Float(std::fabs(v.f));
        ASSIGN_OR_RETURN(int64_t x, IntArg(v, "|abs's value", line));
        if (x == INT64_MIN) return ErrorAt(line, "integer overflow");
        return Value::Int(x < 0 ? -x : x);
      }
      ASSIGN_OR_RETURN(auto a, Bound(name, args, kwargs, {"default", "base"}, line));
      const Value fallback = a[0].value_or(name == "int" ? Value::Int(0) : Value::Float(0));
      double d = 0;
      if (v.kind == Value::Kind::kInt || v.kind == Value::Kind::kBool) {
        d = static_cast<double>(v.kind == Value::Kind::kBool ? v.b : v.i);
        if (name == "int") return Value::Int(v.kind == Value::Kind::kBool ? v.b : v.i);
      } else if (v.kind == Value::Kind::kFloat) {
        d = v.f;
      } else if (v.kind == Value::Kind::kString) {
        const std::string t = Strip(v.s, nullptr, true, true);
        char* end = nullptr;
        d = std::strtod(t.c_str(), &end);
        if (t.empty() || end != t.c_str() + t.size()) return fallback;
      } else {
        return fallback;
      }
      if (name == "float") return Value::Float(d);
      if (!std::isfinite(d) || std::fabs(d) >= 9.2e18) return fallback;
      return Value::Int(static_cast<int64_t>(d));
    }
    if (name == "selectattr" || name == "rejectattr") {
      if (args.empty() || !kwargs.empty()) {
        return ErrorAt(line, absl::StrCat("|", name, "(attribute[, test, args...])"));
      }
      ASSIGN_OR_RETURN(std::string attr,
                       StrArg(args[0], absl::StrCat("|", name, "'s attribute"), line));
      std::string test;
      if (args.size() > 1) {
        ASSIGN_OR_RETURN(test, StrArg(args[1], absl::StrCat("|", name, "'s test"), line));
        if (!IsTest(test))
          return ErrorAt(line, absl::StrCat("the test \"", test, "\" is not supported"));
      }
      const std::vector<Value> test_args(args.begin() + std::min<size_t>(2, args.size()),
                                         args.end());
      ASSIGN_OR_RETURN(List items, Iterate(v, line));
      List out;
      for (const Value& item : items) {
        ASSIGN_OR_RETURN(Value x, Attr(item, attr, line));
        bool pass = Truthy(x);
        if (!test.empty()) {
          ASSIGN_OR_RETURN(pass, Test(test, x, test_args, line));
        }
        if (pass == (name == "selectattr")) out.push_back(item);
      }
      return Value::ListOf(std::move(out));
    }
    if (name == "map") {
      ASSIGN_OR_RETURN(List items, Iterate(v, line));
      List out;
      const Value* attribute = nullptr;
      for (const auto& [k, x] : kwargs) {
        if (k != "attribute" && k != "default") {
          return ErrorAt(line, absl::StrCat("|map got an unexpected keyword argument '", k, "'"));
        }
        if (k == "attribute") attribute = &x;
      }
      if (attribute != nullptr) {
        if (!args.empty())
          return ErrorAt(line, "|map(attribute=...) takes no positional arguments");
        for (const Value& item : items) {
          ASSIGN_OR_RETURN(Value x, Attr(item, ToStr(*attribute), line));
          out.push_back(std::move(x));
        }
        return Value::ListOf(std::move(out));
      }
      if (args.empty()) return ErrorAt(line, "|map needs a filter name or attribute=");
      ASSIGN_OR_RETURN(std::string filter, StrArg(args[0], "|map's filter", line));
      if (!IsFilter(filter) || filter == "map") {
        return ErrorAt(line, absl::StrCat("|map: the filter ", filter, " is not supported"));
      }
      const std::vector<Value> rest(args.begin() + 1, args.end());
      for (const Value& item : items) {
        ASSIGN_OR_RETURN(Value x, Filter(filter, item, rest, {}, line));
        out.push_back(std::move(x));
      }
      return Value::ListOf(std::move(out));
    }
    return ErrorAt(line, absl::StrCat("unknown filter ", name));
  }

  absl::StatusOr<bool> Test(const std::string& name, const Value& v, const std::vector<Value>& args,
                            int line) {
    using K = Value::Kind;
    if (name == "defined") return v.defined();
    if (name == "undefined") return !v.defined();
    if (name == "none") return v.kind == K::kNone;
    if (name == "string") return v.kind == K::kString;
    if (name == "number") return v.is_number();
    if (name == "integer") return v.kind == K::kInt;
    if (name == "float") return v.kind == K::kFloat;
    if (name == "boolean") return v.kind == K::kBool;
    if (name == "true") return v.kind == K::kBool && v.b;
    if (name == "false") return v.kind == K::kBool && !v.b;
    if (name == "mapping") return v.kind == K::kDict && !v.is_namespace;
    if (name == "iterable") return v.kind == K::kList || v.kind == K::kDict || v.kind == K::kString;
    if (name == "sequence") {
      return v.kind == K::kList || v.kind == K::kString || (v.kind == K::kDict && !v.is_namespace);
    }
    if (name == "lower" || name == "upper") {
      return v.kind == K::kString && (name == "lower" ? Lower(v.s) : Upper(v.s)) == v.s;
    }
    if (name == "odd" || name == "even" || name == "divisibleby") {
      ASSIGN_OR_RETURN(int64_t x, IntArg(v, absl::StrCat("the value tested with ", name), line));
      int64_t d = 2;
      if (name == "divisibleby") {
        if (args.size() != 1) return ErrorAt(line, "divisibleby takes one argument");
        ASSIGN_OR_RETURN(d, IntArg(args[0], "divisibleby's argument", line));
        if (d == 0) return ErrorAt(line, "integer division or modulo by zero");
      }
      const int64_t r = ((x % d) + d) % d;
      return name == "odd" ? r == 1 : r == 0;
    }
    if (args.size() != 1)
      return ErrorAt(line, absl::StrCat("the test ", name, " takes one argument"));
    if (name == "eq" || name == "equalto") return Equal(v, args[0]);
    if (name == "ne") return !Equal(v, args[0]);
    if (name == "in") {
      ASSIGN_OR_RETURN(Value r, Contains(args[0], v, line));
      return r.b;
    }
    const std::string op = name == "lt" ? "<" : name == "gt" ? ">" : name == "le" ? "<=" : ">=";
    ASSIGN_OR_RETURN(Value r, Compare(op, v, args[0], line));
    return r.b;
  }

  // ---- operators ----

  absl::StatusOr<Value> Contains(const Value& container, const Value& item, int line) {
    switch (container.kind) {
      case Value::Kind::kString:
        if (item.kind != Value::Kind::kString) {
          return ErrorAt(line, absl::StrCat("'in <string>' requires string as left operand, not ",
                                            TypeName(item)));
        }
        return Value::Bool(absl::StrContains(container.s, item.s));
      case Value::Kind::kList:
        for (const Value& x : *container.list) {
          if (Equal(x, item)) return Value::Bool(true);
        }
        return Value::Bool(false);
      case Value::Kind::kDict:
        return Value::Bool(item.kind == Value::Kind::kString && container.Find(item.s) != nullptr);
      case Value::Kind::kUndefined:
        return Value::Bool(false);
      default:
        return ErrorAt(
            line, absl::StrCat("argument of type '", TypeName(container), "' is not iterable"));
    }
  }

  absl::StatusOr<Value> Compare(const std::string& op, const Value& a, const Value& b, int line) {
    int c = 0;
    if (a.is_number() && b.is_number()) {
      auto d = [](const Value& x) {
        return x.kind == Value::Kind::kFloat
                   ? x.f
                   : static_cast<double>(x.kind == Value::Kind::kBool ? x.b : x.i);
      };
      if (a.kind != Value::Kind::kFloat && b.kind != Value::Kind::kFloat) {
        const int64_t x = a.kind == Value::Kind::kBool ? a.b : a.i,
                      y = b.kind == Value::Kind::kBool ? b.b : b.i;
        c = x < y ? -1 : x > y ? 1 : 0;
      } else {
        c = d(a) < d(b) ? -1 : d(a) > d(b) ? 1 : 0;
      }
    } else if (a.kind == Value::Kind::kString && b.kind == Value::Kind::kString) {
      // UTF-8 byte order is code point order, as Python compares.
      c = a.s < b.s ? -1 : a.s > b.s ? 1 : 0;
    } else {
      return ErrorAt(line, absl::StrCat("'", op, "' not supported between instances of '",
                                        TypeName(a), "' and '", TypeName(b), "'"));
    }
    const bool r = op == "<" ? c < 0 : op == ">" ? c > 0 : op == "<=" ? c <= 0 : c >= 0;
    return Value::Bool(r);
  }

  absl::StatusOr<Value> EvalBinary(const Expr& e) {
    const std::string& op = e.name;
    ASSIGN_OR_RETURN(Value a, Eval(*e.a));
    if (op == "and") return Truthy(a) ? Eval(*e.b) : a;
    if (op == "or") return Truthy(a) ? a : Eval(*e.b);
    ASSIGN_OR_RETURN(Value b, Eval(*e.b));
    if (op == "==") return Value::Bool(Equal(a, b));
    if (op == "!=") return Value::Bool(!Equal(a, b));
    if (op == "<" || op == ">" || op == "<=" || op == ">=") return Compare(op, a, b, e.line);
    if (op == "in") return Contains(b, a, e.line);
    if (op == "not in") {
      ASSIGN_OR_RETURN(Value r, Contains(b, a, e.line));
      return Value::Bool(!r.b);
    }
    if (op == "~") {
      std::string s = ToStr(a) + ToStr(b);
      return Value::String(std::move(s));
    }
    if (!a.defined()) return UndefinedError(a, e.line);
    if (!b.defined()) return UndefinedError(b, e.line);
    if (op == "+") {
      if (a.kind == Value::Kind::kString && b.kind == Value::Kind::kString) {
        if (static_cast<int64_t>(a.s.size() + b.s.size()) > limits_.max_output_bytes) {
          return ErrorAt(e.line, "a string grows past the output limit");
        }
        return Value::String(a.s + b.s);
      }
      if (a.kind == Value::Kind::kList && b.kind == Value::Kind::kList) {
        List out = *a.list;
        out.insert(out.end(), b.list->begin(), b.list->end());
        return Value::ListOf(std::move(out));
      }
    }
    if (op == "*" && ((a.kind == Value::Kind::kString && b.kind == Value::Kind::kInt) ||
                      (a.kind == Value::Kind::kInt && b.kind == Value::Kind::kString))) {
      const std::string& s = a.kind == Value::Kind::kString ? a.s : b.s;
      const int64_t n = a.kind == Value::Kind::kInt ? a.i : b.i;
      if (n > 0 && static_cast<int64_t>(s.size()) > limits_.max_output_bytes / n) {
        return ErrorAt(e.line, "a string grows past the output limit");
      }
      std::string out;
      for (int64_t k = 0; k < n; ++k) out += s;
      return Value::String(std::move(out));
    }
    if (!a.is_number() || !b.is_number()) {
      return ErrorAt(e.line, absl::StrCat("unsupported operand type(s) for ", op, ": '",
                                          TypeName(a), "' and '", TypeName(b), "'"));
    }
    const bool floats = a.kind == Value::Kind::kFloat || b.kind == Value::Kind::kFloat || op == "/";
    if (floats) {
      auto d = [](const Value& x) {
        return x.kind == Value::Kind::kFloat
                   ? x.f
                   : static_cast<double>(x.kind == Value::Kind::kBool ? x.b : x.i);
      };
      const double x = d(a), y = d(b);
      if ((op == "/" || op == "//" || op == "%") && y == 0) {
        return ErrorAt(e.line, "division by zero");
      }
      if (op == "+") return Value::Float(x + y);
      if (op == "-") return Value::Float(x - y);
      if (op == "*") return Value::Float(x * y);
      if (op == "/") return Value::Float(x / y);
      if (op == "//") return Value::Float(std::floor(x / y));
      if (op == "%") {
        double r = std::fmod(x, y);
        if (r != 0 && ((r < 0) != (y < 0))) r += y;
        return Value::Float(r);
      }
      if (op == "**") return Value::Float(std::pow(x, y));
    } else {
      const int64_t x = a.kind == Value::Kind::kBool ? a.b : a.i,
                    y = b.kind == Value::Kind::kBool ? b.b : b.i;
      int64_t r = 0;
      bool overflow = false;
      if (op == "+") {
        overflow = __builtin_add_overflow(x, y, &r);
      } else if (op == "-") {
        overflow = __builtin_sub_overflow(x, y, &r);
      } else if (op == "*") {
        overflow = __builtin_mul_overflow(x, y, &r);
      } else if (op == "//" || op == "%") {
        if (y == 0) return ErrorAt(e.line, "integer division or modulo by zero");
        if (x == INT64_MIN && y == -1) {
          overflow = true;
        } else {
          int64_t q = x / y, m = x % y;
          if (m != 0 && ((m < 0) != (y < 0))) {
            --q;
            m += y;
          }
          r = op == "//" ? q : m;
        }
      } else if (op == "**") {
        if (y < 0) return Value::Float(std::pow(static_cast<double>(x), static_cast<double>(y)));
        r = 1;
        int64_t base = x;
        for (int64_t n = y; n > 0 && !overflow; n >>= 1) {
          if (n & 1) overflow = __builtin_mul_overflow(r, base, &r);
          if (n > 1 && !overflow) overflow = __builtin_mul_overflow(base, base, &base);
        }
      }
      if (overflow) return ErrorAt(e.line, absl::StrCat("integer overflow in ", op));
      return Value::Int(r);
    }
    return ErrorAt(e.line, absl::StrCat("unknown operator ", op));
  }

  RenderLimits limits_;
  std::vector<Dict> scopes_;
  std::string out_;
  int64_t steps_ = 0;
};

}  // namespace

absl::StatusOr<std::string> Render(const Program& program, const Dict& globals,
                                   const RenderLimits& limits) {
  Renderer r(globals, limits);
  RETURN_IF_ERROR(r.Run(program.body));
  return std::move(r.out());
}

}  // namespace premoe::chat::jinja
