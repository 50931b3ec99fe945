// The gRPC edge every premoe server and client shares: addresses, the
// server's start and shutdown, deadlines.
#include "premoe/proto/grpc_edge.h"

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "tests/testutil/testutil.h"

namespace premoe::rpc {
namespace {

using ::premoe::testing::StatusIs;

TEST(ParseHostPortTest, TakesHostsAndPortsAndNamesWhatIsWrong) {
  ASSERT_OK_AND_ASSIGN(HostPort a, ParseHostPort("127.0.0.1:50051"));
  EXPECT_EQ(a.host, "127.0.0.1");
  EXPECT_EQ(a.port, 50051);
  ASSERT_OK_AND_ASSIGN(HostPort b, ParseHostPort("[::1]:0"));
  EXPECT_EQ(b.host, "[::1]");
  EXPECT_EQ(b.port, 0);
  ASSERT_OK_AND_ASSIGN(HostPort c, ParseHostPort("premoe-store.default.svc:7000"));
  EXPECT_EQ(c.host, "premoe-store.default.svc");
  EXPECT_THAT(ParseHostPort("localhost"), StatusIs(absl::StatusCode::kInvalidArgument, "no host"));
  EXPECT_THAT(ParseHostPort(":80"), StatusIs(absl::StatusCode::kInvalidArgument, "no host"));
  EXPECT_THAT(ParseHostPort("host:http"),
              StatusIs(absl::StatusCode::kInvalidArgument, "0 to 65535"));
  EXPECT_THAT(ParseHostPort("host:65536"),
              StatusIs(absl::StatusCode::kInvalidArgument, "0 to 65535"));
  EXPECT_THAT(ParseHostPort("::1:80"), StatusIs(absl::StatusCode::kInvalidArgument, "brackets"));
  EXPECT_EQ(DialableHost("0.0.0.0:80"), "127.0.0.1");
  EXPECT_EQ(DialableHost("[::]:80"), "127.0.0.1");
  EXPECT_EQ(DialableHost("10.0.0.7:80"), "10.0.0.7");
}

TEST(ServerTest, ListensOnAFreePortRefusesABusyOneAndShutsDownOnce) {
  ServerOptions o;
  o.who = "test server";
  o.serving = {"premoe.v1.Test"};
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Server> server, Server::Start(o, {}));
  EXPECT_GT(server->port(), 0);
  EXPECT_EQ(server->address(), absl::StrCat("127.0.0.1:", server->port()));
  auto connects = [&](std::chrono::seconds wait) {
    absl::StatusOr<std::shared_ptr<grpc::Channel>> channel =
        MakeChannel("test", server->address(), 1 << 20);
    EXPECT_TRUE(channel.ok()) << channel.status();
    if (!channel.ok()) return false;
    return (*channel)->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(5));
  };
  EXPECT_TRUE(connects(std::chrono::seconds(30)));
  server->SetServing("premoe.v1.Test", false);
  // The same port again cannot be bound.
  ServerOptions busy = o;
  busy.address = server->address();
  EXPECT_THAT(Server::Start(busy, {}), StatusIs(absl::StatusCode::kUnavailable, "test server"));
  server->Shutdown(std::chrono::milliseconds(10));
  server->Shutdown();                          // idempotent
  server->SetServing("premoe.v1.Test", true);  // a no-op now
  EXPECT_FALSE(connects(std::chrono::seconds(1)));
  // Options are checked before anything is bound.
  o.address = "localhost";
  EXPECT_THAT(Server::Start(o, {}), StatusIs(absl::StatusCode::kInvalidArgument, "test server"));
  o.address = "127.0.0.1:0";
  o.who.clear();
  EXPECT_THAT(Server::Start(o, {}), StatusIs(absl::StatusCode::kInvalidArgument, "who"));
}

TEST(SetDeadlineTest, UsesTheGivenDeadlineElseTheTimeout) {
  const auto at = std::chrono::system_clock::now() + std::chrono::hours(1);
  grpc::ClientContext given;
  SetDeadline(given, at, std::chrono::seconds(1));
  EXPECT_LE(std::chrono::abs(given.deadline() - at), std::chrono::milliseconds(1));
  grpc::ClientContext fallback;
  const auto before = std::chrono::system_clock::now();
  SetDeadline(fallback, std::nullopt, std::chrono::seconds(30));
  EXPECT_GE(fallback.deadline(), before + std::chrono::seconds(30));
  EXPECT_LE(fallback.deadline(), std::chrono::system_clock::now() + std::chrono::seconds(30));
}

}  // namespace
}  // namespace premoe::rpc
