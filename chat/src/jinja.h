// The Jinja subset behind premoe::chat::Template: values, the syntax tree,
// the parser and the renderer. Internal to premoe::chat.
//
// Semantics are Jinja's (3.1) as Hugging Face configures it for chat
// templates: trim_blocks and lstrip_blocks, loop controls, the default
// Undefined, Python's str() for output, its own tojson. Values follow
// Python: bools are integers in arithmetic, strings are sequences of code
// points (length, slicing), dicts keep insertion order.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace premoe::chat::jinja {

struct Value;
using List = std::vector<Value>;
// String keys only (JSON's), in insertion order.
using Dict = std::vector<std::pair<std::string, Value>>;

struct Value {
  enum class Kind { kUndefined, kNone, kBool, kInt, kFloat, kString, kList, kDict, kFunction };
  Kind kind = Kind::kUndefined;
  bool b = false;
  int64_t i = 0;
  double f = 0;
  // kString: the text; kFunction: the global's name; kUndefined: what was
  // looked up, for the error when it is used.
  std::string s;
  std::shared_ptr<const List> list;
  // Shared, and mutable only for a namespace() (its attributes can be set).
  std::shared_ptr<Dict> dict;
  bool is_namespace = false;
  bool is_tuple = false;  // a kList that Python would hold as a tuple (repr "(a, b)")

  static Value Undefined(std::string what = "") {
    Value v;
    v.s = std::move(what);
    return v;
  }
  static Value None() { return Of(Kind::kNone); }
  static Value Bool(bool x) {
    Value v = Of(Kind::kBool);
    v.b = x;
    return v;
  }
  static Value Int(int64_t x) {
    Value v = Of(Kind::kInt);
    v.i = x;
    return v;
  }
  static Value Float(double x) {
    Value v = Of(Kind::kFloat);
    v.f = x;
    return v;
  }
  static Value String(std::string x) {
    Value v = Of(Kind::kString);
    v.s = std::move(x);
    return v;
  }
  static Value ListOf(List items, bool is_tuple = false) {
    Value v = Of(Kind::kList);
    v.list = std::make_shared<const List>(std::move(items));
    v.is_tuple = is_tuple;
    return v;
  }
  static Value DictOf(Dict items, bool is_namespace = false) {
    Value v = Of(Kind::kDict);
    v.dict = std::make_shared<Dict>(std::move(items));
    v.is_namespace = is_namespace;
    return v;
  }
  static Value Function(std::string name) {
    Value v = Of(Kind::kFunction);
    v.s = std::move(name);
    return v;
  }

  bool defined() const { return kind != Kind::kUndefined; }
  bool is_number() const {
    return kind == Kind::kBool || kind == Kind::kInt || kind == Kind::kFloat;
  }
  // The entry `key` of a dict, or null.
  const Value* Find(absl::string_view key) const;

 private:
  static Value Of(Kind k) {
    Value v;
    v.kind = k;
    return v;
  }
};

Value FromJson(const nlohmann::ordered_json& j);
// Python's truth value (Undefined and None are false).
bool Truthy(const Value& v);
// Python's str(); Undefined renders as "".
std::string ToStr(const Value& v);
// Python's repr() (as str() shows list items).
std::string Repr(const Value& v);
// Python's json.dumps(v, ensure_ascii=False, indent=indent, sort_keys=...);
// indent < 0 = None. INVALID_ARGUMENT for what JSON cannot hold.
absl::StatusOr<std::string> ToJson(const Value& v, int indent, bool sort_keys);
bool Equal(const Value& a, const Value& b);
// "string", "list", ... for error messages.
const char* TypeName(const Value& v);

// Code points of valid UTF-8 (the template and every string in it are).
std::u32string Decode(absl::string_view utf8);
std::string Encode(std::u32string_view text);
// Python's str.isspace() for one code point.
bool IsSpace(char32_t c);
// Python's str.strip/lstrip/rstrip: `chars` null = whitespace.
std::string Strip(absl::string_view s, const std::string* chars, bool left, bool right);

// ---- The syntax tree --------------------------------------------------

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Arguments {
  std::vector<ExprPtr> positional;
  std::vector<std::pair<std::string, ExprPtr>> keyword;
};

struct Expr {
  enum class Kind {
    kLiteral,  // value
    kName,     // name
    kList,     // items (a tuple too)
    kDict,     // keys (literals) and items
    kAttr,     // a.name
    kItem,     // a[b]
    kSlice,    // a[b:c:d], items 0-2 may be null
    kCall,     // a(args): a is a kName (a global) or a kAttr (a method)
    kFilter,   // a | name(args)
    kTest,     // a is [not] name(args)
    kNot,
    kNeg,
    kBinary,  // op over a, b
    kCond,    // b if a else c (c may be null)
  };
  Kind kind;
  int line = 0;
  Value value;
  std::string name;  // kName, kAttr, kFilter, kTest, and kBinary's operator
  ExprPtr a, b, c;
  std::vector<ExprPtr> items;
  std::vector<ExprPtr> keys;
  Arguments args;
  bool negated = false;  // kTest
};

struct Node;
using Body = std::vector<std::unique_ptr<Node>>;

struct Node {
  enum class Kind { kText, kOutput, kIf, kFor, kSet, kBreak, kContinue };
  Kind kind;
  int line = 0;
  std::string text;  // kText
  ExprPtr expr;      // kOutput, kSet's value, kFor's iterable
  // kIf: one condition and body per if/elif; else_body.
  std::vector<std::pair<ExprPtr, Body>> branches;
  Body body;       // kFor
  Body else_body;  // kIf, kFor
  // kFor: the loop variables (several unpack each item); kSet: the names
  // assigned, or {namespace, attribute} when `attribute` is set.
  std::vector<std::string> targets;
  std::string attribute;
  ExprPtr filter;  // kFor's `if`
};

struct Program {
  Body body;
};

// INVALID_ARGUMENT "line N: ..." naming a construct outside the subset or a
// syntax error.
absl::StatusOr<std::unique_ptr<Program>> Parse(absl::string_view source);

// The payload that marks raise_exception's error: its message is the
// template's own, for the caller to show as is.
inline constexpr char kRaisedPayload[] = "premoe.chat.raise_exception";

struct RenderLimits {
  int64_t max_output_bytes = 0;
  int64_t max_steps = 0;  // nodes and loop iterations
};
absl::StatusOr<std::string> Render(const Program& program, const Dict& globals,
                                   const RenderLimits& limits);

// What the parser accepts by name; the renderer implements exactly these.
bool IsFilter(absl::string_view name);
bool IsTest(absl::string_view name);
bool IsGlobalFunction(absl::string_view name);
bool IsMethod(absl::string_view name);

}  // namespace premoe::chat::jinja
