#include "tokenizer_components.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>

#include <algorithm>
#include <cstdlib>
#include <queue>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "premoe/common/status.h"

namespace premoe::tokenizer::tokenizer_internal {
namespace {

absl::Status Invalid(absl::string_view where, absl::string_view problem) {
  return absl::InvalidArgumentError(absl::StrCat(where, ": ", problem));
}

// Typed field access that never throws: a field of the wrong type is an error,
// an absent (or null) one yields `fallback`.
absl::StatusOr<std::string> GetString(const json& j, const char* key, absl::string_view where,
                                      std::optional<std::string> fallback = std::nullopt) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (fallback) return *fallback;
    return Invalid(where, absl::StrCat("missing string field \"", key, "\""));
  }
  if (!it->is_string()) {
    return Invalid(where,
                   absl::StrCat("field \"", key, "\" must be a string, not ", it->type_name()));
  }
  return it->get<std::string>();
}

absl::StatusOr<bool> GetBool(const json& j, const char* key, absl::string_view where,
                             bool fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) {
    return Invalid(where,
                   absl::StrCat("field \"", key, "\" must be a boolean, not ", it->type_name()));
  }
  return it->get<bool>();
}

absl::StatusOr<std::int64_t> GetInt(const json& j, const char* key, absl::string_view where,
                                    std::int64_t fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_number_integer()) {
    return Invalid(where,
                   absl::StrCat("field \"", key, "\" must be an integer, not ", it->type_name()));
  }
  return it->get<std::int64_t>();
}

absl::StatusOr<const json*> GetArray(const json& j, const char* key, absl::string_view where) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_array()) {
    return Invalid(where, absl::StrCat("field \"", key, "\" must be an array"));
  }
  return &*it;
}

absl::StatusOr<std::string> ComponentType(const json& j, absl::string_view where) {
  if (!j.is_object()) return Invalid(where, absl::StrCat("must be an object, not ", j.type_name()));
  return GetString(j, "type", where);
}

// Characters of `s` (valid UTF-8) as byte ranges.
template <typename F>
void ForEachChar(absl::string_view s, F&& f) {
  size_t i = 0;
  while (i < s.size()) {
    const int n = Utf8CharLength(static_cast<unsigned char>(s[i]));
    f(i, static_cast<size_t>(n));
    i += n;
  }
}

std::string ReplaceAll(absl::string_view text, absl::string_view from, absl::string_view to) {
  if (from.empty()) return std::string(text);
  std::string out;
  size_t pos = 0;
  while (true) {
    const size_t hit = text.find(from, pos);
    if (hit == absl::string_view::npos) break;
    out.append(text.data() + pos, hit - pos);
    out.append(to.data(), to.size());
    pos = hit + from.size();
  }
  out.append(text.data() + pos, text.size() - pos);
  return out;
}

}  // namespace

// ---- UTF-8 ----------------------------------------------------------------

int Utf8CharLength(unsigned char lead) {
  if (lead < 0x80) return 1;
  if ((lead >> 5) == 0x6) return 2;
  if ((lead >> 4) == 0xE) return 3;
  return 4;
}

char32_t DecodeUtf8(absl::string_view text, size_t i) {
  const auto b = [&](size_t k) {
    return static_cast<char32_t>(static_cast<unsigned char>(text[i + k]));
  };
  switch (Utf8CharLength(static_cast<unsigned char>(text[i]))) {
    case 1:
      return b(0);
    case 2:
      return ((b(0) & 0x1F) << 6) | (b(1) & 0x3F);
    case 3:
      return ((b(0) & 0x0F) << 12) | ((b(1) & 0x3F) << 6) | (b(2) & 0x3F);
    default:
      return ((b(0) & 0x07) << 18) | ((b(1) & 0x3F) << 12) | ((b(2) & 0x3F) << 6) | (b(3) & 0x3F);
  }
}

void AppendUtf8(char32_t c, std::string* out) {
  if (c < 0x80) {
    out->push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (c >> 6)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (c >> 12)));
    out->push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (c >> 18)));
    out->push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

bool IsUnicodeWhitespace(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

// ---- Regex ----------------------------------------------------------------

namespace {

// Rewrites the Oniguruma constructs whose meaning differs in PCRE2:
//   \s, \S  Oniguruma's include U+0085 (NEL); PCRE2's UCP \s does not.
//   \h, \H  Oniguruma: hex digit; PCRE2: horizontal space.
std::string TranslateOniguruma(absl::string_view p) {
  std::string out;
  out.reserve(p.size() + 16);
  int class_depth = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char e = p[i + 1];
      ++i;
      if (e == 's') {
        out += class_depth > 0 ? "\\s\\x{85}" : "[\\s\\x{85}]";
      } else if (e == 'S' && class_depth == 0) {
        out += "[^\\s\\x{85}]";
      } else if (e == 'h') {
        out += class_depth > 0 ? "0-9a-fA-F" : "[0-9a-fA-F]";
      } else if (e == 'H' && class_depth == 0) {
        out += "[^0-9a-fA-F]";
      } else {
        out += '\\';
        out += e;
      }
      continue;
    }
    if (c == '[') {
      ++class_depth;
      out += c;
      // A ']' right after '[' or '[^' is a literal, not the end of the class.
      if (i + 1 < p.size() && p[i + 1] == '^') out += p[++i];
      if (i + 1 < p.size() && p[i + 1] == ']') out += p[++i];
      continue;
    }
    if (c == ']' && class_depth > 0) --class_depth;
    out += c;
  }
  return out;
}

// One JIT stack per thread, shared by every pattern: long whitespace runs
// under `\s+(?!\S)` need more than PCRE2's default 32 KiB.
pcre2_match_context* ThreadMatchContext() {
  struct Holder {
    pcre2_match_context* context = pcre2_match_context_create(nullptr);
    pcre2_jit_stack* stack = pcre2_jit_stack_create(64 << 10, 8 << 20, nullptr);
    Holder() { pcre2_jit_stack_assign(context, nullptr, stack); }
    ~Holder() {
      pcre2_jit_stack_free(stack);
      pcre2_match_context_free(context);
    }
  };
  thread_local Holder holder;
  return holder.context;
}

}  // namespace

absl::StatusOr<std::shared_ptr<const Regex>> Regex::Compile(absl::string_view pattern) {
  const std::string translated = TranslateOniguruma(pattern);
  int error = 0;
  PCRE2_SIZE offset = 0;
  pcre2_code* code =
      pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(),
                    PCRE2_UTF | PCRE2_UCP, &error, &offset, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error, message, sizeof(message));
    return absl::InvalidArgumentError(absl::StrCat("regex \"", pattern, "\" does not compile at ",
                                                   offset, ": ",
                                                   reinterpret_cast<const char*>(message)));
  }
  // JIT is an optimisation: when unavailable, matching still works.
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
  return std::shared_ptr<const Regex>(new Regex(code));
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

absl::Status Regex::FindAll(absl::string_view text, std::vector<Match>* out) const {
  auto* code = static_cast<pcre2_code*>(code_);
  pcre2_match_data* data = pcre2_match_data_create_from_pattern(code, nullptr);
  pcre2_match_context* context = ThreadMatchContext();
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t search_from = 0;
  std::optional<size_t> last_match_end;
  absl::Status status;
  while (search_from <= text.size()) {
    // The input was validated once, up front; re-checking it on every call
    // would make matching quadratic.
    const int rc =
        pcre2_match(code, subject, text.size(), search_from, PCRE2_NO_UTF_CHECK, data, context);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(rc, message, sizeof(message));
      status = absl::ResourceExhaustedError(
          absl::StrCat("regex match failed: ", reinterpret_cast<const char*>(message)));
      break;
    }
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(data);
    const size_t begin = ovector[0];
    const size_t end = ovector[1];
    if (begin == end && last_match_end == end) {
      // Oniguruma's iterator refuses an empty match where the last one ended
      // and resumes one character later.
      search_from += search_from < text.size()
                         ? Utf8CharLength(static_cast<unsigned char>(text[search_from]))
                         : 1;
      continue;
    }
    out->push_back({begin, end});
    search_from = end;
    last_match_end = end;
  }
  pcre2_match_data_free(data);
  return status;
}

absl::StatusOr<TextPattern> TextPattern::FromJson(const json& j, absl::string_view where) {
  if (!j.is_object() || j.size() != 1) {
    return Invalid(where, "pattern must be {\"String\": ...} or {\"Regex\": ...}");
  }
  TextPattern p;
  if (auto it = j.find("String"); it != j.end() && it->is_string()) {
    p.literal_ = it->get<std::string>();
    return p;
  }
  if (auto it = j.find("Regex"); it != j.end() && it->is_string()) {
    ASSIGN_OR_RETURN(p.regex_, common::WithContext(Regex::Compile(it->get<std::string>()), where));
    return p;
  }
  return Invalid(where, "pattern must be {\"String\": ...} or {\"Regex\": ...}");
}

absl::Status TextPattern::FindAll(absl::string_view text, std::vector<Match>* out) const {
  if (regex_ != nullptr) return regex_->FindAll(text, out);
  if (literal_.empty()) return absl::OkStatus();
  size_t pos = 0;
  while ((pos = text.find(literal_, pos)) != absl::string_view::npos) {
    out->push_back({pos, pos + literal_.size()});
    pos += literal_.size();
  }
  return absl::OkStatus();
}

// ---- Normalizers ----------------------------------------------------------

namespace {

class SequenceNormalizer : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> parts)
      : parts_(std::move(parts)) {}
  absl::Status Normalize(std::string* text) const override {
    for (const auto& p : parts_) RETURN_IF_ERROR(p->Normalize(text));
    return absl::OkStatus();
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> parts_;
};

class UnicodeNormalizer : public Normalizer {
 public:
  explicit UnicodeNormalizer(int options) : options_(options) {}
  absl::Status Normalize(std::string* text) const override {
    if (text->empty()) return absl::OkStatus();
    utf8proc_uint8_t* result = nullptr;
    const utf8proc_ssize_t n =
        utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text->data()),
                     static_cast<utf8proc_ssize_t>(text->size()), &result,
                     static_cast<utf8proc_option_t>(options_ | UTF8PROC_STABLE));
    if (n < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("unicode normalization failed: ", utf8proc_errmsg(n)));
    }
    text->assign(reinterpret_cast<const char*>(result), static_cast<size_t>(n));
    std::free(result);
    return absl::OkStatus();
  }

 private:
  int options_;
};

class LowercaseNormalizer : public Normalizer {
 public:
  absl::Status Normalize(std::string* text) const override {
    std::string out;
    out.reserve(text->size());
    ForEachChar(*text, [&](size_t i, size_t) {
      const char32_t c = DecodeUtf8(*text, i);
      // Rust's char::to_lowercase uses the full mapping; U+0130 is the one
      // character whose full lowercase differs from utf8proc's simple one.
      if (c == 0x130) {
        out += "i\u0307";
        return;
      }
      AppendUtf8(static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(c))), &out);
    });
    *text = std::move(out);
    return absl::OkStatus();
  }
};

class PrependNormalizer : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
  absl::Status Normalize(std::string* text) const override {
    if (!text->empty()) text->insert(0, prefix_);
    return absl::OkStatus();
  }

 private:
  std::string prefix_;
};

class ReplaceNormalizer : public Normalizer {
 public:
  ReplaceNormalizer(TextPattern pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  absl::Status Normalize(std::string* text) const override {
    if (pattern_.is_string()) {
      *text = ReplaceAll(*text, pattern_.literal(), content_);
      return absl::OkStatus();
    }
    std::vector<Match> matches;
    RETURN_IF_ERROR(pattern_.FindAll(*text, &matches));
    std::string out;
    size_t pos = 0;
    for (const Match& m : matches) {
      out.append(*text, pos, m.begin - pos);
      out += content_;
      pos = m.end;
    }
    out.append(*text, pos, std::string::npos);
    *text = std::move(out);
    return absl::OkStatus();
  }

 private:
  TextPattern pattern_;
  std::string content_;
};

class StripNormalizer : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  absl::Status Normalize(std::string* text) const override {
    size_t begin = 0, end = text->size();
    if (left_) {
      while (begin < end) {
        const size_t n = Utf8CharLength(static_cast<unsigned char>((*text)[begin]));
        if (!IsUnicodeWhitespace(DecodeUtf8(*text, begin))) break;
        begin += n;
      }
    }
    if (right_) {
      while (end > begin) {
        size_t start = end - 1;
        while (start > begin && (static_cast<unsigned char>((*text)[start]) & 0xC0) == 0x80)
          --start;
        if (!IsUnicodeWhitespace(DecodeUtf8(*text, start))) break;
        end = start;
      }
    }
    *text = text->substr(begin, end - begin);
    return absl::OkStatus();
  }

 private:
  bool left_, right_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Normalizer>> MakeNormalizer(const json& j) {
  if (j.is_null()) return nullptr;
  ASSIGN_OR_RETURN(const std::string type, ComponentType(j, "normalizer"));
  const std::string where = absl::StrCat("normalizer ", type);
  if (type == "Sequence") {
    ASSIGN_OR_RETURN(const json* list, GetArray(j, "normalizers", where));
    std::vector<std::unique_ptr<Normalizer>> parts;
    for (const json& item : *list) {
      ASSIGN_OR_RETURN(auto part, MakeNormalizer(item));
      if (part != nullptr) parts.push_back(std::move(part));
    }
    return std::make_unique<SequenceNormalizer>(std::move(parts));
  }
  if (type == "NFC") return std::make_unique<UnicodeNormalizer>(UTF8PROC_COMPOSE);
  if (type == "NFD") return std::make_unique<UnicodeNormalizer>(UTF8PROC_DECOMPOSE);
  if (type == "NFKC")
    return std::make_unique<UnicodeNormalizer>(UTF8PROC_COMPOSE | UTF8PROC_COMPAT);
  if (type == "NFKD")
    return std::make_unique<UnicodeNormalizer>(UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT);
  if (type == "Lowercase") return std::make_unique<LowercaseNormalizer>();
  if (type == "Prepend") {
    ASSIGN_OR_RETURN(std::string prefix, GetString(j, "prepend", where));
    return std::make_unique<PrependNormalizer>(std::move(prefix));
  }
  if (type == "Replace") {
    if (!j.contains("pattern")) return Invalid(where, "missing field \"pattern\"");
    ASSIGN_OR_RETURN(TextPattern pattern, TextPattern::FromJson(j["pattern"], where));
    ASSIGN_OR_RETURN(std::string content, GetString(j, "content", where));
    return std::make_unique<ReplaceNormalizer>(std::move(pattern), std::move(content));
  }
  if (type == "Strip") {
    ASSIGN_OR_RETURN(bool left, GetBool(j, "strip_left", where, true));
    ASSIGN_OR_RETURN(bool right, GetBool(j, "strip_right", where, true));
    return std::make_unique<StripNormalizer>(left, right);
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "normalizer type \"", type,
      "\" is not supported (supported: Sequence, NFC, NFD, NFKC, NFKD, Lowercase, Prepend, "
      "Replace, Strip)"));
}

// ---- Pre-tokenizers -------------------------------------------------------

namespace {

enum class Behavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

absl::StatusOr<Behavior> ParseBehavior(const std::string& s, absl::string_view where) {
  if (s == "Removed") return Behavior::kRemoved;
  if (s == "Isolated") return Behavior::kIsolated;
  if (s == "MergedWithPrevious") return Behavior::kMergedWithPrevious;
  if (s == "MergedWithNext") return Behavior::kMergedWithNext;
  if (s == "Contiguous") return Behavior::kContiguous;
  return Invalid(where, absl::StrCat("unknown split behavior \"", s, "\""));
}

struct Span {
  size_t begin;
  size_t end;
  bool flag;  // is a match (before applying the behaviour) / is removed (after)
};

// HF NormalizedString::split: `matches` cover the text; behaviour decides
// what becomes a piece. Appends non-empty pieces of `piece` to `out`.
void SplitByMatches(const Piece& piece, const std::vector<Match>& found, bool invert,
                    Behavior behavior, std::vector<Piece>* out) {
  const std::string& text = piece.text;
  std::vector<Span> spans;
  if (text.empty()) {
    spans.push_back({0, 0, false});
  } else {
    size_t prev = 0;
    for (const Match& m : found) {
      if (prev != m.begin) spans.push_back({prev, m.begin, false});
      spans.push_back({m.begin, m.end, true});
      prev = m.end;
    }
    if (prev != text.size()) spans.push_back({prev, text.size(), false});
  }
  if (invert) {
    for (Span& s : spans) s.flag = !s.flag;
  }
  std::vector<Span> result;
  switch (behavior) {
    case Behavior::kIsolated:
      for (const Span& s : spans) result.push_back({s.begin, s.end, false});
      break;
    case Behavior::kRemoved:
      result = spans;
      break;
    case Behavior::kContiguous: {
      bool previous = false;
      for (const Span& s : spans) {
        if (s.flag == previous && !result.empty()) {
          result.back().end = s.end;
        } else {
          result.push_back({s.begin, s.end, false});
        }
        previous = s.flag;
      }
      break;
    }
    case Behavior::kMergedWithPrevious: {
      bool previous = false;
      for (const Span& s : spans) {
        if (s.flag && !previous && !result.empty()) {
          result.back().end = s.end;
        } else {
          result.push_back({s.begin, s.end, false});
        }
        previous = s.flag;
      }
      break;
    }
    case Behavior::kMergedWithNext: {
      bool previous = false;
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->flag && !previous && !result.empty()) {
          result.back().begin = it->begin;
        } else {
          result.push_back({it->begin, it->end, false});
        }
        previous = it->flag;
      }
      std::reverse(result.begin(), result.end());
      break;
    }
  }
  for (const Span& s : result) {
    if (s.flag || s.begin == s.end) continue;
    out->push_back({text.substr(s.begin, s.end - s.begin), piece.at_start && s.begin == 0});
  }
}

class SequencePreTokenizer : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> parts)
      : parts_(std::move(parts)) {}
  absl::Status Split(std::vector<Piece>* pieces) const override {
    for (const auto& p : parts_) RETURN_IF_ERROR(p->Split(pieces));
    return absl::OkStatus();
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> parts_;
};

class SplitPreTokenizer : public PreTokenizer {
 public:
  SplitPreTokenizer(TextPattern pattern, Behavior behavior, bool invert)
      : pattern_(std::move(pattern)), behavior_(behavior), invert_(invert) {}
  absl::Status Split(std::vector<Piece>* pieces) const override {
    std::vector<Piece> out;
    out.reserve(pieces->size() * 2);
    std::vector<Match> found;
    for (const Piece& piece : *pieces) {
      found.clear();
      RETURN_IF_ERROR(pattern_.FindAll(piece.text, &found));
      SplitByMatches(piece, found, invert_, behavior_, &out);
    }
    *pieces = std::move(out);
    return absl::OkStatus();
  }

 private:
  TextPattern pattern_;
  Behavior behavior_;
  bool invert_;
};

// GPT-2's reversible byte -> printable character map.
const std::array<std::string, 256>& ByteToUnicode() {
  static const std::array<std::string, 256> table = [] {
    std::array<std::string, 256> t;
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable =
          (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      AppendUtf8(printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + extra++),
                 &t[b]);
    }
    return t;
  }();
  return table;
}

const absl::flat_hash_map<char32_t, unsigned char>& UnicodeToByte() {
  static const auto* map = [] {
    auto* m = new absl::flat_hash_map<char32_t, unsigned char>();
    const auto& forward = ByteToUnicode();
    for (int b = 0; b < 256; ++b) (*m)[DecodeUtf8(forward[b], 0)] = static_cast<unsigned char>(b);
    return m;
  }();
  return *map;
}

// The GPT-2 pre-tokenization regex ByteLevel uses when use_regex is set.
constexpr absl::string_view kGpt2Regex =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

class ByteLevelPreTokenizer : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, std::shared_ptr<const Regex> regex)
      : add_prefix_space_(add_prefix_space), regex_(std::move(regex)) {}
  absl::Status Split(std::vector<Piece>* pieces) const override {
    std::vector<Piece> split;
    std::vector<Match> found;
    for (Piece& piece : *pieces) {
      if (add_prefix_space_ && (piece.text.empty() || piece.text[0] != ' ')) {
        piece.text.insert(0, " ");
      }
      if (regex_ == nullptr) {
        if (!piece.text.empty()) split.push_back(std::move(piece));
        continue;
      }
      found.clear();
      RETURN_IF_ERROR(regex_->FindAll(piece.text, &found));
      SplitByMatches(piece, found, /*invert=*/false, Behavior::kIsolated, &split);
    }
    const auto& table = ByteToUnicode();
    for (Piece& piece : split) {
      std::string mapped;
      mapped.reserve(piece.text.size() * 2);
      for (unsigned char b : piece.text) mapped += table[b];
      piece.text = std::move(mapped);
    }
    *pieces = std::move(split);
    return absl::OkStatus();
  }

 private:
  bool add_prefix_space_;
  std::shared_ptr<const Regex> regex_;
};

enum class PrependScheme { kAlways, kFirst, kNever };

absl::StatusOr<PrependScheme> ParsePrependScheme(const json& j, absl::string_view where) {
  if (j.contains("prepend_scheme") && !j["prepend_scheme"].is_null()) {
    ASSIGN_OR_RETURN(std::string s, GetString(j, "prepend_scheme", where));
    if (s == "always") return PrependScheme::kAlways;
    if (s == "first") return PrependScheme::kFirst;
    if (s == "never") return PrependScheme::kNever;
    return Invalid(where, absl::StrCat("unknown prepend_scheme \"", s, "\""));
  }
  // Files written before prepend_scheme existed say add_prefix_space.
  ASSIGN_OR_RETURN(bool add, GetBool(j, "add_prefix_space", where, true));
  return add ? PrependScheme::kAlways : PrependScheme::kNever;
}

class MetaspacePreTokenizer : public PreTokenizer {
 public:
  MetaspacePreTokenizer(std::string replacement, PrependScheme scheme, bool split)
      : replacement_(std::move(replacement)), scheme_(scheme), split_(split) {
    split_pattern_ = *TextPattern::FromJson(json{{"String", replacement_}}, "");
  }
  absl::Status Split(std::vector<Piece>* pieces) const override {
    std::vector<Piece> out;
    std::vector<Match> found;
    for (Piece& piece : *pieces) {
      piece.text = ReplaceAll(piece.text, " ", replacement_);
      const bool prepend =
          scheme_ == PrependScheme::kAlways || (scheme_ == PrependScheme::kFirst && piece.at_start);
      if (prepend && !absl::StartsWith(piece.text, replacement_)) {
        piece.text.insert(0, replacement_);
      }
      if (!split_) {
        if (!piece.text.empty()) out.push_back(std::move(piece));
        continue;
      }
      found.clear();
      RETURN_IF_ERROR(split_pattern_.FindAll(piece.text, &found));
      SplitByMatches(piece, found, /*invert=*/false, Behavior::kMergedWithNext, &out);
    }
    *pieces = std::move(out);
    return absl::OkStatus();
  }

 private:
  std::string replacement_;
  PrependScheme scheme_;
  bool split_;
  TextPattern split_pattern_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<PreTokenizer>> MakePreTokenizer(const json& j) {
  if (j.is_null()) return nullptr;
  ASSIGN_OR_RETURN(const std::string type, ComponentType(j, "pre_tokenizer"));
  const std::string where = absl::StrCat("pre_tokenizer ", type);
  if (type == "Sequence") {
    ASSIGN_OR_RETURN(const json* list, GetArray(j, "pretokenizers", where));
    std::vector<std::unique_ptr<PreTokenizer>> parts;
    for (const json& item : *list) {
      ASSIGN_OR_RETURN(auto part, MakePreTokenizer(item));
      if (part != nullptr) parts.push_back(std::move(part));
    }
    return std::make_unique<SequencePreTokenizer>(std::move(parts));
  }
  if (type == "Split") {
    if (!j.contains("pattern")) return Invalid(where, "missing field \"pattern\"");
    ASSIGN_OR_RETURN(TextPattern pattern, TextPattern::FromJson(j["pattern"], where));
    ASSIGN_OR_RETURN(std::string behavior_name, GetString(j, "behavior", where));
    ASSIGN_OR_RETURN(Behavior behavior, ParseBehavior(behavior_name, where));
    ASSIGN_OR_RETURN(bool invert, GetBool(j, "invert", where, false));
    return std::make_unique<SplitPreTokenizer>(std::move(pattern), behavior, invert);
  }
  if (type == "ByteLevel") {
    ASSIGN_OR_RETURN(bool add_prefix_space, GetBool(j, "add_prefix_space", where, true));
    ASSIGN_OR_RETURN(bool use_regex, GetBool(j, "use_regex", where, true));
    std::shared_ptr<const Regex> regex;
    if (use_regex) {
      ASSIGN_OR_RETURN(regex, Regex::Compile(kGpt2Regex));
    }
    return std::make_unique<ByteLevelPreTokenizer>(add_prefix_space, std::move(regex));
  }
  if (type == "Metaspace") {
    ASSIGN_OR_RETURN(std::string replacement, GetString(j, "replacement", where, "\u2581"));
    if (replacement.empty() || Utf8CharLength(static_cast<unsigned char>(replacement[0])) !=
                                   static_cast<int>(replacement.size())) {
      return Invalid(where, "replacement must be exactly one character");
    }
    ASSIGN_OR_RETURN(PrependScheme scheme, ParsePrependScheme(j, where));
    ASSIGN_OR_RETURN(bool split, GetBool(j, "split", where, true));
    return std::make_unique<MetaspacePreTokenizer>(std::move(replacement), scheme, split);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("pre_tokenizer type \"", type,
                   "\" is not supported (supported: Sequence, Split, ByteLevel, Metaspace)"));
}

// ---- BPE model ------------------------------------------------------------

absl::StatusOr<std::unique_ptr<BpeModel>> BpeModel::FromJson(const json& j) {
  ASSIGN_OR_RETURN(const std::string type, ComponentType(j, "model"));
  if (type != "BPE") {
    return absl::InvalidArgumentError(
        absl::StrCat("model type \"", type, "\" is not supported (supported: BPE)"));
  }
  constexpr absl::string_view where = "model BPE";
  if (auto it = j.find("dropout"); it != j.end() && !it->is_null()) {
    if (!it->is_number() || it->get<double>() != 0.0) {
      return Invalid(where, "BPE dropout is not supported (inference tokenizes deterministically)");
    }
  }
  auto model = std::unique_ptr<BpeModel>(new BpeModel());
  auto vocab_it = j.find("vocab");
  if (vocab_it == j.end() || !vocab_it->is_object()) {
    return Invalid(where, "field \"vocab\" must be an object of token -> id");
  }
  std::int64_t max_id = -1;
  model->vocab_.reserve(vocab_it->size());
  for (auto it = vocab_it->begin(); it != vocab_it->end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<std::int64_t>() < 0 ||
        it.value().get<std::int64_t>() > (1 << 30)) {
      return Invalid(where,
                     absl::StrCat("vocab entry \"", it.key(), "\" must map to an id in [0, 2^30]"));
    }
    const std::int64_t id = it.value().get<std::int64_t>();
    model->vocab_[it.key()] = static_cast<std::int32_t>(id);
    max_id = std::max(max_id, id);
  }
  model->id_to_token_.resize(static_cast<size_t>(max_id + 1));
  model->id_present_.assign(static_cast<size_t>(max_id + 1), false);
  for (const auto& [token, id] : model->vocab_) {
    model->id_to_token_[id] = token;
    model->id_present_[id] = true;
  }

  ASSIGN_OR_RETURN(model->prefix_, GetString(j, "continuing_subword_prefix", where, ""));
  ASSIGN_OR_RETURN(model->suffix_, GetString(j, "end_of_word_suffix", where, ""));
  ASSIGN_OR_RETURN(model->fuse_unk_, GetBool(j, "fuse_unk", where, false));
  ASSIGN_OR_RETURN(model->byte_fallback_, GetBool(j, "byte_fallback", where, false));
  ASSIGN_OR_RETURN(model->ignore_merges_, GetBool(j, "ignore_merges", where, false));
  ASSIGN_OR_RETURN(std::string unk, GetString(j, "unk_token", where, ""));
  if (!unk.empty()) {
    auto it = model->vocab_.find(unk);
    if (it == model->vocab_.end()) {
      return Invalid(where, absl::StrCat("unk_token \"", unk, "\" is not in the vocab"));
    }
    model->unk_id_ = it->second;
  }
  for (int b = 0; b < 256; ++b) {
    auto it = model->vocab_.find(absl::StrFormat("<0x%02X>", b));
    model->byte_tokens_[b] = it == model->vocab_.end() ? -1 : it->second;
  }

  ASSIGN_OR_RETURN(const json* merges, GetArray(j, "merges", where));
  model->merges_.reserve(merges->size());
  std::int32_t rank = 0;
  for (const json& m : *merges) {
    std::string a, b;
    if (m.is_string()) {
      const std::string& s = m.get_ref<const std::string&>();
      const size_t space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
        return Invalid(where, absl::StrCat("merge ", rank, " \"", s, "\" is not two tokens"));
      }
      a = s.substr(0, space);
      b = s.substr(space + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      a = m[0].get<std::string>();
      b = m[1].get<std::string>();
    } else {
      return Invalid(where, absl::StrCat("merge ", rank, " must be \"a b\" or [a, b]"));
    }
    const auto ia = model->vocab_.find(a);
    const auto ib = model->vocab_.find(b);
    const std::string merged = a + b.substr(std::min(model->prefix_.size(), b.size()));
    const auto im = model->vocab_.find(merged);
    if (ia == model->vocab_.end() || ib == model->vocab_.end() || im == model->vocab_.end()) {
      return Invalid(where, absl::StrCat("merge ", rank, " (\"", a, "\", \"", b,
                                         "\") uses a token that is not in the vocab"));
    }
    // Later duplicates win, as in HF (a HashMap insert).
    model->merges_[PairKey(ia->second, ib->second)] = Merge{rank, im->second};
    ++rank;
  }
  return model;
}

const BpeModel::Merge* BpeModel::FindMerge(std::int32_t a, std::int32_t b) const {
  auto it = merges_.find(PairKey(a, b));
  return it == merges_.end() ? nullptr : &it->second;
}

const std::string* BpeModel::IdToToken(std::int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= id_to_token_.size() || !id_present_[id]) {
    return nullptr;
  }
  return &id_to_token_[id];
}

const std::int32_t* BpeModel::TokenToId(absl::string_view token) const {
  auto it = vocab_.find(token);
  return it == vocab_.end() ? nullptr : &it->second;
}

void BpeModel::Tokenize(absl::string_view word, std::vector<std::int32_t>* out) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    if (const std::int32_t* id = TokenToId(word)) {
      out->push_back(*id);
      return;
    }
  }
  // Initial symbols: one per character (HF merge_word), with byte fallback
  // and unknown-token fusing.
  std::vector<std::int32_t> symbols;
  symbols.reserve(word.size());
  std::int32_t pending_unk = -1;
  std::string key;
  size_t i = 0;
  while (i < word.size()) {
    const size_t n = Utf8CharLength(static_cast<unsigned char>(word[i]));
    const bool first = i == 0;
    const bool last = i + n >= word.size();
    key.clear();
    if (!first) key += prefix_;
    key.append(word.data() + i, n);
    if (last) key += suffix_;
    i += n;
    if (const std::int32_t* id = TokenToId(key)) {
      if (pending_unk >= 0) {
        symbols.push_back(pending_unk);
        pending_unk = -1;
      }
      symbols.push_back(*id);
      continue;
    }
    if (byte_fallback_) {
      bool all = true;
      for (unsigned char b : key) all = all && byte_tokens_[b] >= 0;
      if (all) {
        // HF leaves a pending unk in place here (it is pushed later); kept.
        for (unsigned char b : key) symbols.push_back(byte_tokens_[b]);
        continue;
      }
    }
    if (unk_id_ >= 0) {
      if (pending_unk >= 0 && !fuse_unk_) symbols.push_back(pending_unk);
      pending_unk = unk_id_;
    }
    // Without an unk token HF drops the character; so do we.
  }
  if (pending_unk >= 0) symbols.push_back(pending_unk);

  // Merge the lowest-ranked adjacent pair first, leftmost among equals,
  // with lazy deletion of stale queue entries (HF Word::merge_all).
  const int n = static_cast<int>(symbols.size());
  if (n > 1) {
    std::vector<int> prev(n), next(n);
    std::vector<bool> alive(n, true);
    for (int k = 0; k < n; ++k) {
      prev[k] = k - 1;
      next[k] = k + 1 < n ? k + 1 : -1;
    }
    struct Entry {
      std::int32_t rank;
      int pos;
      std::int32_t new_id;
      bool operator>(const Entry& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    std::priority_queue<Entry, std::vector<Entry>, std::greater<>> queue;
    for (int k = 0; k + 1 < n; ++k) {
      if (const Merge* m = FindMerge(symbols[k], symbols[k + 1]))
        queue.push({m->rank, k, m->new_id});
    }
    while (!queue.empty()) {
      const Entry top = queue.top();
      queue.pop();
      if (!alive[top.pos] || next[top.pos] < 0) continue;
      const int right = next[top.pos];
      const Merge* current = FindMerge(symbols[top.pos], symbols[right]);
      if (current == nullptr || current->new_id != top.new_id) continue;
      symbols[top.pos] = top.new_id;
      alive[right] = false;
      next[top.pos] = next[right];
      if (next[right] >= 0) prev[next[right]] = top.pos;
      if (prev[top.pos] >= 0) {
        if (const Merge* m = FindMerge(symbols[prev[top.pos]], symbols[top.pos])) {
          queue.push({m->rank, prev[top.pos], m->new_id});
        }
      }
      if (next[top.pos] >= 0) {
        if (const Merge* m = FindMerge(symbols[top.pos], symbols[next[top.pos]])) {
          queue.push({m->rank, top.pos, m->new_id});
        }
      }
    }
    for (int k = 0; k >= 0; k = next[k]) out->push_back(symbols[k]);
    return;
  }
  out->insert(out->end(), symbols.begin(), symbols.end());
}

// ---- Post-processors ------------------------------------------------------

namespace {

class TemplatePostProcessor : public PostProcessor {
 public:
  // `single`: ids to emit, with -1 standing for the sequence.
  explicit TemplatePostProcessor(std::vector<std::int32_t> single) : single_(std::move(single)) {}
  void Process(std::vector<std::int32_t>* ids) const override {
    std::vector<std::int32_t> out;
    out.reserve(ids->size() + single_.size());
    for (std::int32_t item : single_) {
      if (item == -1) {
        out.insert(out.end(), ids->begin(), ids->end());
      } else {
        out.push_back(item);
      }
    }
    *ids = std::move(out);
  }

 private:
  std::vector<std::int32_t> single_;
};

class SequencePostProcessor : public PostProcessor {
 public:
  explicit SequencePostProcessor(std::vector<std::unique_ptr<PostProcessor>> parts)
      : parts_(std::move(parts)) {}
  void Process(std::vector<std::int32_t>* ids) const override {
    for (const auto& p : parts_) p->Process(ids);
  }

 private:
  std::vector<std::unique_ptr<PostProcessor>> parts_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<PostProcessor>> MakePostProcessor(
    const json& j, const std::function<bool(std::int32_t)>& id_known) {
  if (j.is_null()) return nullptr;
  ASSIGN_OR_RETURN(const std::string type, ComponentType(j, "post_processor"));
  const std::string where = absl::StrCat("post_processor ", type);
  if (type == "ByteLevel") return nullptr;  // only adjusts offsets
  if (type == "Sequence") {
    ASSIGN_OR_RETURN(const json* list, GetArray(j, "processors", where));
    std::vector<std::unique_ptr<PostProcessor>> parts;
    for (const json& item : *list) {
      ASSIGN_OR_RETURN(auto part, MakePostProcessor(item, id_known));
      if (part != nullptr) parts.push_back(std::move(part));
    }
    return std::make_unique<SequencePostProcessor>(std::move(parts));
  }
  if (type == "TemplateProcessing") {
    ASSIGN_OR_RETURN(const json* single, GetArray(j, "single", where));
    auto specials = j.find("special_tokens");
    std::vector<std::int32_t> items;
    for (const json& item : *single) {
      if (item.contains("Sequence")) {
        items.push_back(-1);
        continue;
      }
      auto st = item.find("SpecialToken");
      if (st == item.end() || !st->is_object() || !st->contains("id") || !(*st)["id"].is_string()) {
        return Invalid(where, "items of \"single\" must be {\"Sequence\"} or {\"SpecialToken\"}");
      }
      const std::string name = (*st)["id"].get<std::string>();
      // The ids come from the special_tokens table of the template.
      if (specials == j.end() || !specials->is_object() || !specials->contains(name)) {
        return Invalid(where,
                       absl::StrCat("special token \"", name, "\" is not in special_tokens"));
      }
      const json& entry = (*specials)[name];
      if (!entry.contains("ids") || !entry["ids"].is_array()) {
        return Invalid(where, absl::StrCat("special_tokens \"", name, "\" has no ids"));
      }
      for (const json& id : entry["ids"]) {
        if (!id.is_number_integer() || id.get<std::int64_t>() < 0 ||
            id.get<std::int64_t>() > (1 << 30)) {
          return Invalid(where, absl::StrCat("special_tokens \"", name, "\" has a bad id"));
        }
        const auto value = static_cast<std::int32_t>(id.get<std::int64_t>());
        if (!id_known(value)) {
          return Invalid(where, absl::StrCat("special token \"", name, "\" has id ", value,
                                             ", which is not in the vocabulary"));
        }
        items.push_back(value);
      }
    }
    return std::make_unique<TemplatePostProcessor>(std::move(items));
  }
  if (type == "BertProcessing" || type == "RobertaProcessing") {
    std::vector<std::int32_t> ids;
    for (const char* key : {"cls", "sep"}) {
      auto it = j.find(key);
      if (it == j.end() || !it->is_array() || it->size() != 2 || !(*it)[1].is_number_integer()) {
        return Invalid(where, absl::StrCat("field \"", key, "\" must be [token, id]"));
      }
      const std::int64_t id = (*it)[1].get<std::int64_t>();
      if (id < 0 || id > (1 << 30) || !id_known(static_cast<std::int32_t>(id))) {
        return Invalid(where, absl::StrCat("\"", key, "\" id ", id, " is not in the vocabulary"));
      }
      ids.push_back(static_cast<std::int32_t>(id));
    }
    return std::make_unique<TemplatePostProcessor>(std::vector<std::int32_t>{ids[0], -1, ids[1]});
  }
  return absl::InvalidArgumentError(
      absl::StrCat("post_processor type \"", type,
                   "\" is not supported (supported: TemplateProcessing, ByteLevel, BertProcessing, "
                   "RobertaProcessing, Sequence)"));
}

// ---- Decoders -------------------------------------------------------------

namespace {

class SequenceDecoder : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> parts)
      : parts_(std::move(parts)) {}
  absl::Status DecodeChain(std::vector<std::string>* tokens) const override {
    for (const auto& p : parts_) RETURN_IF_ERROR(p->DecodeChain(tokens));
    return absl::OkStatus();
  }

 private:
  std::vector<std::unique_ptr<Decoder>> parts_;
};

class ByteLevelDecoder : public Decoder {
 public:
  absl::Status DecodeChain(std::vector<std::string>* tokens) const override {
    const auto& map = UnicodeToByte();
    std::string bytes;
    for (const std::string& token : *tokens) {
      // A token with any character outside the byte map (an added token like
      // "<｜begin▁of▁sentence｜>") contributes its own UTF-8 bytes.
      std::string mapped;
      bool ok = true;
      ForEachChar(token, [&](size_t i, size_t) {
        if (!ok) return;
        auto it = map.find(DecodeUtf8(token, i));
        if (it == map.end()) {
          ok = false;
        } else {
          mapped.push_back(static_cast<char>(it->second));
        }
      });
      bytes += ok ? mapped : token;
    }
    *tokens = {Utf8Lossy(bytes)};
    return absl::OkStatus();
  }
};

class ReplaceDecoder : public Decoder {
 public:
  ReplaceDecoder(TextPattern pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  absl::Status DecodeChain(std::vector<std::string>* tokens) const override {
    std::vector<Match> found;
    for (std::string& token : *tokens) {
      if (pattern_.is_string()) {
        token = ReplaceAll(token, pattern_.literal(), content_);
        continue;
      }
      found.clear();
      RETURN_IF_ERROR(pattern_.FindAll(token, &found));
      std::string out;
      size_t pos = 0;
      for (const Match& m : found) {
        out.append(token, pos, m.begin - pos);
        out += content_;
        pos = m.end;
      }
      out.append(token, pos, std::string::npos);
      token = std::move(out);
    }
    return absl::OkStatus();
  }

 private:
  TextPattern pattern_;
  std::string content_;
};

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

class ByteFallbackDecoder : public Decoder {
 public:
  absl::Status DecodeChain(std::vector<std::string>* tokens) const override {
    std::vector<std::string> out;
    std::string pending;
    auto flush = [&] {
      if (pending.empty()) return;
      if (FindInvalidUtf8(pending) < 0) {
        out.push_back(pending);
      } else {
        // HF emits one U+FFFD per byte token when the bytes are not UTF-8.
        for (size_t k = 0; k < pending.size(); ++k) out.emplace_back("\xEF\xBF\xBD");
      }
      pending.clear();
    };
    for (std::string& token : *tokens) {
      if (token.size() == 6 && absl::StartsWith(token, "<0x") && token[5] == '>' &&
          HexValue(token[3]) >= 0 && HexValue(token[4]) >= 0) {
        pending.push_back(static_cast<char>(HexValue(token[3]) * 16 + HexValue(token[4])));
        continue;
      }
      flush();
      out.push_back(std::move(token));
    }
    flush();
    *tokens = std::move(out);
    return absl::OkStatus();
  }
};

class FuseDecoder : public Decoder {
 public:
  absl::Status DecodeChain(std::vector<std::string>* tokens) const override {
    *tokens = {absl::StrJoin(*tokens, "")};
    return absl::OkStatus();
  }
};

// Strips up to `start` leading and `stop` trailing `content` characters from
// every token.
class StripDecoder : public Decoder {
 public:
  StripDecoder(char32_t content, int start, int stop)
      : content_(content), start_(start), stop_(stop) {}
  absl::Status DecodeChain(std::vector<std::string>* tokens) const override {
    for (std::string& token : *tokens) {
      std::vector<std::pair<size_t, size_t>> chars;
      ForEachChar(token, [&](size_t i, size_t n) { chars.push_back({i, n}); });
      size_t first = 0;
      while (first < chars.size() && static_cast<int>(first) < start_ &&
             DecodeUtf8(token, chars[first].first) == content_) {
        ++first;
      }
      size_t last = chars.size();
      int stripped = 0;
      while (last > first && stripped < stop_ &&
             DecodeUtf8(token, chars[last - 1].first) == content_) {
        --last;
        ++stripped;
      }
      const size_t begin = first < chars.size() ? chars[first].first : token.size();
      const size_t end = last < chars.size() ? chars[last].first : token.size();
      token = token.substr(begin, end > begin ? end - begin : 0);
    }
    return absl::OkStatus();
  }

 private:
  char32_t content_;
  int start_, stop_;
};

class MetaspaceDecoder : public Decoder {
 public:
  MetaspaceDecoder(char32_t replacement, PrependScheme scheme)
      : replacement_(replacement), scheme_(scheme) {}
  absl::Status DecodeChain(std::vector<std::string>* tokens) const override {
    for (size_t t = 0; t < tokens->size(); ++t) {
      std::string& token = (*tokens)[t];
      std::string out;
      ForEachChar(token, [&](size_t i, size_t n) {
        if (DecodeUtf8(token, i) == replacement_) {
          // HF drops every replacement character of the first token, not
          // just a leading one.
          if (!(t == 0 && scheme_ != PrependScheme::kNever)) out += ' ';
        } else {
          out.append(token, i, n);
        }
      });
      token = std::move(out);
    }
    return absl::OkStatus();
  }

 private:
  char32_t replacement_;
  PrependScheme scheme_;
};

absl::StatusOr<char32_t> SingleChar(const std::string& s, absl::string_view where,
                                    absl::string_view field) {
  if (s.empty() || FindInvalidUtf8(s) >= 0 ||
      Utf8CharLength(static_cast<unsigned char>(s[0])) != static_cast<int>(s.size())) {
    return Invalid(where, absl::StrCat("field \"", field, "\" must be exactly one character"));
  }
  return DecodeUtf8(s, 0);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Decoder>> MakeDecoder(const json& j) {
  if (j.is_null()) return nullptr;
  ASSIGN_OR_RETURN(const std::string type, ComponentType(j, "decoder"));
  const std::string where = absl::StrCat("decoder ", type);
  if (type == "Sequence") {
    ASSIGN_OR_RETURN(const json* list, GetArray(j, "decoders", where));
    std::vector<std::unique_ptr<Decoder>> parts;
    for (const json& item : *list) {
      ASSIGN_OR_RETURN(auto part, MakeDecoder(item));
      if (part != nullptr) parts.push_back(std::move(part));
    }
    return std::make_unique<SequenceDecoder>(std::move(parts));
  }
  if (type == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (type == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  if (type == "Fuse") return std::make_unique<FuseDecoder>();
  if (type == "Replace") {
    if (!j.contains("pattern")) return Invalid(where, "missing field \"pattern\"");
    ASSIGN_OR_RETURN(TextPattern pattern, TextPattern::FromJson(j["pattern"], where));
    ASSIGN_OR_RETURN(std::string content, GetString(j, "content", where));
    return std::make_unique<ReplaceDecoder>(std::move(pattern), std::move(content));
  }
  if (type == "Strip") {
    ASSIGN_OR_RETURN(std::string content, GetString(j, "content", where));
    ASSIGN_OR_RETURN(char32_t c, SingleChar(content, where, "content"));
    ASSIGN_OR_RETURN(std::int64_t start, GetInt(j, "start", where, 0));
    ASSIGN_OR_RETURN(std::int64_t stop, GetInt(j, "stop", where, 0));
    if (start < 0 || stop < 0 || start > 1024 || stop > 1024) {
      return Invalid(where, "start and stop must be in [0, 1024]");
    }
    return std::make_unique<StripDecoder>(c, static_cast<int>(start), static_cast<int>(stop));
  }
  if (type == "Metaspace") {
    ASSIGN_OR_RETURN(std::string replacement, GetString(j, "replacement", where, "\u2581"));
    ASSIGN_OR_RETURN(char32_t c, SingleChar(replacement, where, "replacement"));
    ASSIGN_OR_RETURN(PrependScheme scheme, ParsePrependScheme(j, where));
    return std::make_unique<MetaspaceDecoder>(c, scheme);
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "decoder type \"", type,
      "\" is not supported (supported: Sequence, ByteLevel, ByteFallback, Fuse, Replace, Strip, "
      "Metaspace)"));
}

// ---- Added tokens ---------------------------------------------------------

AddedTokenMatcher::AddedTokenMatcher(std::vector<std::string> patterns,
                                     std::vector<const AddedToken*> tokens)
    : tokens_(std::move(tokens)) {
  nodes_.emplace_back();
  for (size_t t = 0; t < patterns.size(); ++t) {
    if (patterns[t].empty()) continue;
    std::int32_t node = 0;
    for (unsigned char c : patterns[t]) {
      auto it = nodes_[node].next.find(c);
      if (it == nodes_[node].next.end()) {
        nodes_[node].next[c] = static_cast<std::int32_t>(nodes_.size());
        node = static_cast<std::int32_t>(nodes_.size());
        nodes_.emplace_back();
      } else {
        node = it->second;
      }
    }
    // Two tokens with the same text: the first one listed wins.
    if (nodes_[node].token < 0) nodes_[node].token = static_cast<std::int32_t>(t);
  }
}

namespace {

bool IsWordChar(char32_t c) {
  const utf8proc_category_t cat = utf8proc_category(static_cast<utf8proc_int32_t>(c));
  return (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO) ||
         (cat >= UTF8PROC_CATEGORY_ND && cat <= UTF8PROC_CATEGORY_NO);
}

size_t PrevCharStart(absl::string_view s, size_t i) {
  size_t k = i - 1;
  while (k > 0 && (static_cast<unsigned char>(s[k]) & 0xC0) == 0x80) --k;
  return k;
}

}  // namespace

void AddedTokenMatcher::Split(const Piece& piece,
                              std::vector<std::pair<Piece, std::int32_t>>* out) const {
  const std::string& s = piece.text;
  if (nodes_.size() == 1) {
    if (!s.empty()) out->push_back({piece, -1});
    return;
  }
  // Leftmost-longest, non-overlapping matches.
  struct Found {
    size_t begin, end;
    const AddedToken* token;
  };
  std::vector<Found> found;
  size_t i = 0;
  while (i < s.size()) {
    std::int32_t node = 0;
    std::int32_t best = -1;
    size_t best_end = 0;
    for (size_t k = i; k < s.size(); ++k) {
      auto it = nodes_[node].next.find(static_cast<unsigned char>(s[k]));
      if (it == nodes_[node].next.end()) break;
      node = it->second;
      if (nodes_[node].token >= 0) {
        best = nodes_[node].token;
        best_end = k + 1;
      }
    }
    if (best >= 0) {
      found.push_back({i, best_end, tokens_[best]});
      i = best_end;
    } else {
      ++i;
    }
  }
  // HF AddedVocabulary::find_matches: filter single_word, extend lstrip/rstrip.
  size_t start_offset = 0;
  auto emit_text = [&](size_t b, size_t e) {
    if (e > b) out->push_back({Piece{s.substr(b, e - b), piece.at_start && b == 0}, -1});
  };
  for (const Found& f : found) {
    size_t start = f.begin, stop = f.end;
    if (f.token->single_word) {
      const bool start_space = start == 0 || !IsWordChar(DecodeUtf8(s, PrevCharStart(s, start)));
      const bool stop_space = stop == s.size() || !IsWordChar(DecodeUtf8(s, stop));
      if (!start_space || !stop_space) continue;
    }
    if (f.token->lstrip) {
      size_t k = start;
      while (k > 0) {
        const size_t p = PrevCharStart(s, k);
        if (!IsUnicodeWhitespace(DecodeUtf8(s, p))) break;
        k = p;
      }
      start = std::max(k, start_offset);
    }
    if (f.token->rstrip) {
      while (stop < s.size() && IsUnicodeWhitespace(DecodeUtf8(s, stop))) {
        stop += Utf8CharLength(static_cast<unsigned char>(s[stop]));
      }
    }
    emit_text(start_offset, start);
    out->push_back({Piece{"", piece.at_start && start == 0}, f.token->id});
    start_offset = stop;
  }
  emit_text(start_offset, s.size());
}

}  // namespace premoe::tokenizer::tokenizer_internal
