// WorkerClient's progress watchdog, against fake workers on loopback: one
// that accepts a stream and never sends (alive but stuck: keepalive cannot
// see it), and one that sends slowly but steadily. The first ends UNAVAILABLE
// after progress_timeout; the second is left alone.
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <future>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "premoe/proto/grpc_edge.h"
#include "premoe/v1/worker.grpc.pb.h"
#include "premoe/worker/client.h"
#include "tests/testutil/testutil.h"

namespace premoe::worker {
namespace {

using ::premoe::testing::StatusIs;

// Sends `messages` messages, `gap` apart (the last one done), or none and
// waits for the client to give up when messages is 0.
class FakeWorker final : public v1::Worker::CallbackService {
 public:
  FakeWorker(int messages, std::chrono::milliseconds gap) : messages_(messages), gap_(gap) {}

  grpc::ServerWriteReactor<v1::GenerateResponse>* Generate(grpc::CallbackServerContext*,
                                                           const v1::GenerateRequest*) override {
    return new Stream(messages_, gap_);
  }

 private:
  class Stream final : public grpc::ServerWriteReactor<v1::GenerateResponse> {
   public:
    Stream(int messages, std::chrono::milliseconds gap) {
      if (messages == 0) return;  // stuck: only a cancellation ends it
      writer_ = std::thread([this, messages, gap] {
        // Waits until no write is outstanding; false once cancelled. The
        // lock is not held across StartWrite and Finish, whose reactions
        // take it.
        auto idle = [this] {
          absl::MutexLock lock(&mu_);
          mu_.Await(absl::Condition(
              +[](Stream* s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(s->mu_) { return !s->writing_; }, this));
          writing_ = !cancelled_;
          return !cancelled_;
        };
        for (int i = 0; i < messages; ++i) {
          std::this_thread::sleep_for(gap);
          if (!idle()) return Finish(grpc::Status::CANCELLED);
          message_.set_text("x");
          message_.set_done(i + 1 == messages);
          StartWrite(&message_);
        }
        Finish(idle() ? grpc::Status::OK : grpc::Status::CANCELLED);
      });
    }
    void OnWriteDone(bool) override {
      absl::MutexLock lock(&mu_);
      writing_ = false;
    }
    void OnCancel() override {
      absl::MutexLock lock(&mu_);
      cancelled_ = true;
      if (!writer_.joinable()) Finish(grpc::Status::CANCELLED);
    }
    void OnDone() override {
      if (writer_.joinable()) writer_.join();
      delete this;
    }

   private:
    absl::Mutex mu_;
    bool writing_ ABSL_GUARDED_BY(mu_) = false;
    bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
    v1::GenerateResponse message_;
    std::thread writer_;
  };

  const int messages_;
  const std::chrono::milliseconds gap_;
};

// StartGenerate against `service`; its result and how long it took.
std::pair<absl::StatusOr<TextResult>, std::chrono::milliseconds> Generate(
    FakeWorker& service, std::chrono::milliseconds progress_timeout) {
  rpc::ServerOptions so;
  so.who = "fake worker";
  auto server = rpc::Server::Start(so, {&service});
  EXPECT_OK(server.status());
  WorkerClient::Options o;
  o.address = (*server)->address();
  o.progress_timeout = progress_timeout;
  auto client = WorkerClient::Open(o);
  EXPECT_OK(client.status());
  std::promise<absl::StatusOr<TextResult>> done;
  const auto start = std::chrono::steady_clock::now();
  TextRequest request;
  request.prompt = "hi";
  (*client)->StartGenerate(request, nullptr,
                           [&done](absl::StatusOr<TextResult> r) { done.set_value(std::move(r)); });
  absl::StatusOr<TextResult> result = done.get_future().get();
  return {std::move(result), std::chrono::duration_cast<std::chrono::milliseconds>(
                                 std::chrono::steady_clock::now() - start)};
}

TEST(WorkerClientTest, AStuckStreamEndsUnavailableAfterTheProgressTimeout) {
  FakeWorker stuck(0, std::chrono::milliseconds(0));
  auto [result, took] = Generate(stuck, std::chrono::milliseconds(1000));
  EXPECT_THAT(result, StatusIs(absl::StatusCode::kUnavailable, "nothing came for 1s"));
  EXPECT_GE(took, std::chrono::milliseconds(1000));
  EXPECT_LT(took, std::chrono::seconds(20));
}

TEST(WorkerClientTest, ASlowButSteadyStreamIsLeftAlone) {
  FakeWorker slow(5, std::chrono::milliseconds(400));
  auto [result, took] = Generate(slow, std::chrono::milliseconds(1000));
  ASSERT_OK(result.status());
  EXPECT_EQ(result->text, "xxxxx");
  EXPECT_GE(took, std::chrono::milliseconds(2000));  // longer than the timeout in all
}

}  // namespace
}  // namespace premoe::worker
