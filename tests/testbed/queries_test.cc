// Testbed queries scored by exact match, with answers from a fake service.
#include "premoe/testbed/queries.h"

#include <string>
#include <vector>

#include "tests/testutil/testutil.h"

namespace premoe::testbed {
namespace {

using ::premoe::testing::StatusIs;

std::vector<const Task*> Tasks(const std::string& spec) {
  auto tasks = ParseTaskList(spec);
  EXPECT_TRUE(tasks.ok()) << tasks.status();
  return tasks.ok() ? *tasks : std::vector<const Task*>{};
}

TEST(QueriesTest, EachExactMatchPromptIsAskedInOrderAndScored) {
  // The service gets "add" right and everything else wrong; the text task
  // is never asked.
  std::vector<std::string> asked;
  std::vector<AnsweredQuery> seen;
  ASSERT_OK_AND_ASSIGN(
      const QueryTally tally,
      AskTestbedQueries(
          {.tasks = Tasks("add,licenses,reverse"), .split = Split::kEval, .samples = 2},
          [&](const Task& task, const Sample& s) -> absl::StatusOr<std::string> {
            asked.push_back(task.name() + ": " + s.prompt);
            return task.name() == "add" ? s.completion : std::string("nope");
          },
          [&](const AnsweredQuery& q) { seen.push_back(q); }));
  EXPECT_EQ(tally.total, 4);
  EXPECT_EQ(tally.correct, 2);
  ASSERT_EQ(seen.size(), 4u);
  // The first eval sample of add, as tasks_test pins it.
  EXPECT_EQ(asked[0], "add: What is 61 + 83?");
  EXPECT_EQ(seen[0].task->name(), "add");
  EXPECT_EQ(seen[0].index, 0);
  EXPECT_EQ(seen[0].sample.completion, "144");
  EXPECT_EQ(seen[0].answer, "144");
  EXPECT_TRUE(seen[0].correct);
  EXPECT_EQ(seen[1].index, 1);
  EXPECT_TRUE(seen[1].correct);
  for (int i : {2, 3}) {
    EXPECT_EQ(seen[i].task->name(), "reverse");
    EXPECT_EQ(seen[i].index, i - 2);
    EXPECT_EQ(seen[i].answer, "nope");
    EXPECT_FALSE(seen[i].correct);
    const Sample want = *(*FindTask("reverse"))->Get(Split::kEval, i - 2);
    EXPECT_EQ(seen[i].sample, want);
  }
}

TEST(QueriesTest, AnAnswerThatIsAlmostRightIsWrong) {
  ASSERT_OK_AND_ASSIGN(const QueryTally tally,
                       AskTestbedQueries(
                           {.tasks = Tasks("add"), .samples = 1},
                           [](const Task&, const Sample& s) -> absl::StatusOr<std::string> {
                             return s.completion + "\n";
                           },
                           nullptr));
  EXPECT_EQ(tally.total, 1);
  EXPECT_EQ(tally.correct, 0);
}

TEST(QueriesTest, TheFirstServiceErrorStopsTheRun) {
  int answered = 0, calls = 0;
  EXPECT_THAT(AskTestbedQueries(
                  {.tasks = Tasks("add"), .samples = 5},
                  [&](const Task&, const Sample& s) -> absl::StatusOr<std::string> {
                    if (++calls == 3) return absl::UnavailableError("server went away");
                    return s.completion;
                  },
                  [&](const AnsweredQuery&) { ++answered; }),
              StatusIs(absl::StatusCode::kUnavailable, "server went away"));
  EXPECT_EQ(answered, 2);
}

TEST(QueriesTest, BadOptionsAreRefused) {
  auto never = [](const Task&, const Sample&) -> absl::StatusOr<std::string> {
    ADD_FAILURE() << "asked";
    return std::string();
  };
  EXPECT_THAT(AskTestbedQueries({}, never, nullptr),
              StatusIs(absl::StatusCode::kInvalidArgument, "no tasks"));
  EXPECT_THAT(AskTestbedQueries({.tasks = Tasks("add"), .samples = 0}, never, nullptr),
              StatusIs(absl::StatusCode::kInvalidArgument, "samples must be >= 1, got 0"));
  EXPECT_THAT(AskTestbedQueries({.tasks = {nullptr}}, never, nullptr),
              StatusIs(absl::StatusCode::kInvalidArgument, "null task"));
}

}  // namespace
}  // namespace premoe::testbed
