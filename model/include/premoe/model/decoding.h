// Per-request decoding: sampling the next token from logits, stopping at eos,
// stop sequences or max_new_tokens, and holding back tokens that could start
// a stop sequence until they are known to be final. Engine::Generate and the
// worker's continuous-batching scheduler both drive one SequenceSampler per
// request, so a request decodes the same tokens alone, in a static batch, or
// joined mid-flight.
//
// A plain object: not thread-safe, used by one thread at a time.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <random>
#include <vector>

#include "premoe/model/engine.h"

namespace premoe::model {

class SequenceSampler {
 public:
  // `options` must pass Validate() (its stop_requested is not used here: the
  // caller asks and calls Stop). `seed` seeds this request's sampler
  // (Generate uses options.seed + request index). `eos` ends the request
  // when options.stop_at_eos.
  SequenceSampler(const GenerationOptions& options, uint64_t seed, std::vector<int64_t> eos);

  // Samples the next token from `logits` [V] fp32 (any device) and applies
  // the stop rules. Returns the tokens that became final and may be streamed
  // now, in order. Must not be called once finished().
  std::vector<int64_t> Step(const at::Tensor& logits);
  // Ends the request now with `reason` (e.g. a stop string the caller
  // matched, or cancellation); returns the tokens held back until now.
  std::vector<int64_t> Stop(GenerationResult::FinishReason reason);

  bool finished() const { return finished_; }
  // The token to feed next (the last one sampled); only while !finished().
  int64_t next_input() const { return last_; }
  // Generated tokens so far (without eos or a matched stop sequence) and,
  // once finished, why it stopped.
  const GenerationResult& result() const { return result_; }

 private:
  std::vector<int64_t> Emit(bool final);

  GenerationOptions options_;
  std::vector<int64_t> eos_;
  std::mt19937_64 rng_;
  size_t max_stop_ = 0;
  size_t emitted_ = 0;
  int64_t last_ = -1;
  bool finished_ = false;
  GenerationResult result_;
};

// The next token from fp32 logits [V] (CPU): argmax when temperature == 0,
// else a sample after temperature, top-k and top-p.
int64_t SampleToken(const at::Tensor& logits, const GenerationOptions& options,
                    std::mt19937_64& rng);

}  // namespace premoe::model
