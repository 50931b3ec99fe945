// API keys through a real server and client on loopback: the pattern
// store's, whose calls span both scopes (Put and Delete are admin calls,
// the rest API calls). A call without a valid key is UNAUTHENTICATED, an
// API key on an admin call PERMISSION_DENIED, health checks stay open, and
// key files are re-read when they change.
#include "premoe/proto/auth.h"

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <stdlib.h>

#include <cstdlib>
#include <filesystem>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "premoe/common/tls_files.h"
#include "premoe/store/embedded_store.h"
#include "premoe/store/grpc_client.h"
#include "premoe/store/server.h"
#include "tests/store/test_patterns.h"
#include "tests/testutil/testutil.h"

namespace premoe::rpc {
namespace {

using ::premoe::testing::StatusIs;
using ::premoe::testing::TempDir;
using ::premoe::testing::WriteStringToFile;

constexpr char kApiKey[] = "api-key-0123456789abcdef";
constexpr char kAdminKey[] = "admin-key-0123456789abcdef";

class AuthTest : public ::testing::Test {
 protected:
  void SetUp() override {
    store::EmbeddedPatternStore::Options o;
    o.in_memory = true;
    o.path = "/premoe-auth-test";
    ASSERT_OK_AND_ASSIGN(store_, store::EmbeddedPatternStore::Open(o));
  }

  // Starts the store server asking for keys per `options`.
  void Serve(const AuthOptions& options) {
    ASSERT_OK_AND_ASSIGN(std::shared_ptr<Authenticator> auth, Authenticator::Open(options));
    store::PatternStoreServer::Options so;
    so.auth = auth;
    ASSERT_OK_AND_ASSIGN(server_, store::PatternStoreServer::Start(so, store_.get()));
  }

  std::unique_ptr<store::GrpcPatternStoreClient> Client(const std::string& key) {
    store::GrpcPatternStoreClient::Options o;
    o.address = server_->address();
    o.api_key = key;
    auto client = store::GrpcPatternStoreClient::Open(o);
    EXPECT_OK(client.status());
    return client.ok() ? std::move(client).value() : nullptr;
  }

  AuthOptions Files() {
    WriteStringToFile(api_file_, std::string("# API keys\n\n  ") + kApiKey + "  \n");
    WriteStringToFile(admin_file_, std::string(kAdminKey) + "\n");
    AuthOptions o;
    o.api_key_file = api_file_;
    o.admin_key_file = admin_file_;
    o.read_environment = false;
    return o;
  }

  TempDir dir_;
  std::string api_file_ = dir_.Join("api_keys");
  std::string admin_file_ = dir_.Join("admin_keys");
  std::unique_ptr<store::EmbeddedPatternStore> store_;
  std::unique_ptr<store::PatternStoreServer> server_;
};

TEST_F(AuthTest, WithoutKeysConfiguredEverythingIsOpen) {
  AuthOptions none;
  none.read_environment = false;
  Serve(none);
  auto client = Client("");
  ASSERT_OK(client->Put(store::testing::MakePattern("t", 1)).status());
  EXPECT_OK(client->List({}).status());
}

TEST_F(AuthTest, ScopesAreEnforcedAndHealthStaysOpen) {
  Serve(Files());
  auto nobody = Client("");
  auto wrong = Client("wrong-key-0123456789abcdef");
  auto api = Client(kApiKey);
  auto admin = Client(kAdminKey);
  const store::Pattern p = store::testing::MakePattern("t", 1);
  const auto kUnauthenticated = absl::StatusCode::kUnauthenticated;
  const auto kDenied = absl::StatusCode::kPermissionDenied;

  EXPECT_THAT(nobody->List({}), StatusIs(kUnauthenticated, "List needs an API key"));
  EXPECT_THAT(nobody->Put(p), StatusIs(kUnauthenticated, "Put needs an API key"));
  // A refusal is logged with the caller's address, never with the key.
  ::testing::internal::CaptureStderr();
  EXPECT_THAT(wrong->Info(), StatusIs(kUnauthenticated, "the API key is not valid"));
  const std::string log = ::testing::internal::GetCapturedStderr();
  EXPECT_THAT(log, ::testing::HasSubstr("GetInfo from ipv4:127.0.0.1:"));
  EXPECT_THAT(log, ::testing::Not(::testing::HasSubstr("wrong-key")));
  EXPECT_THAT(api->Put(p), StatusIs(kDenied, "Put needs an admin key; this is an API key"));
  EXPECT_EQ(store_->Info()->num_patterns, 0);
  ASSERT_OK_AND_ASSIGN(store::PutResult put, admin->Put(p));
  EXPECT_OK(api->Get(put.id).status());
  EXPECT_OK(api->List({}).status());
  EXPECT_OK(admin->List({}).status());  // an admin key opens the API calls too
  EXPECT_THAT(api->Delete(put.id), StatusIs(kDenied, "admin key"));
  EXPECT_OK(api->Get(put.id).status());

  // A Watch stream is refused the same way, and delivers with a key.
  absl::Notification refused;
  absl::Status watch_status;
  ASSERT_OK_AND_ASSIGN(auto watch,
                       nobody->Watch(0, [&](const absl::StatusOr<store::ChangeEvent>& e) {
                         if (!e.ok() && !refused.HasBeenNotified()) {
                           watch_status = e.status();
                           refused.Notify();
                         }
                         return false;
                       }));
  ASSERT_TRUE(refused.WaitForNotificationWithTimeout(absl::Seconds(30)));
  EXPECT_THAT(watch_status, StatusIs(kUnauthenticated, "Watch needs an API key"));
  watch->Cancel();

  // Health checks need no key (Kubernetes probes): grpc.health.v1.Health/Check
  // for "premoe.v1.PatternStore", encoded by hand (field 1, a string), answers
  // SERVING (field 1 = 1).
  auto channel = grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials());
  grpc::GenericStub stub(channel);
  const std::string service = "premoe.v1.PatternStore";
  const std::string wire = std::string("\x0a") + static_cast<char>(service.size()) + service;
  grpc::Slice slice(wire);
  grpc::ByteBuffer request(&slice, 1), response;
  grpc::ClientContext ctx;
  grpc::CompletionQueue cq;
  auto call = stub.PrepareUnaryCall(&ctx, "/grpc.health.v1.Health/Check", request, &cq);
  call->StartCall();
  grpc::Status status;
  call->Finish(&response, &status, reinterpret_cast<void*>(1));
  void* tag = nullptr;
  bool ok = false;
  ASSERT_TRUE(cq.Next(&tag, &ok));
  ASSERT_TRUE(status.ok()) << status.error_message();
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(response.Dump(&slices).ok());
  std::string answer;
  for (const grpc::Slice& s : slices)
    answer.append(reinterpret_cast<const char*>(s.begin()), s.size());
  EXPECT_EQ(answer, std::string("\x08\x01"));
}

TEST_F(AuthTest, OnlyApiKeysConfiguredLeavesNoOneToChangeThings) {
  AuthOptions o = Files();
  o.admin_key_file.clear();
  Serve(o);
  EXPECT_THAT(Client(kApiKey)->Put(store::testing::MakePattern("t", 1)),
              StatusIs(absl::StatusCode::kPermissionDenied, "none configured"));
  EXPECT_OK(Client(kApiKey)->List({}).status());
}

TEST_F(AuthTest, KeyFilesAreReloadedWhenTheyChange) {
  AuthOptions o = Files();
  ASSERT_OK_AND_ASSIGN(std::shared_ptr<Authenticator> auth, Authenticator::Open(o));
  store::PatternStoreServer::Options so;
  so.auth = auth;
  ASSERT_OK_AND_ASSIGN(server_, store::PatternStoreServer::Start(so, store_.get()));
  const std::string rotated = "rotated-key-0123456789abcdef";
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  WriteStringToFile(api_file_, rotated + "\n");
  // Checked at most once a second, on a call: the next calls see it.
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  EXPECT_OK(Client(rotated)->List({}).status());
  EXPECT_THAT(Client(kApiKey)->List({}), StatusIs(absl::StatusCode::kUnauthenticated, "not valid"));
  // A broken file keeps the keys in use; Reload says why.
  WriteStringToFile(api_file_, "short\n");
  EXPECT_THAT(auth->Reload(), StatusIs(absl::StatusCode::kInvalidArgument, "api_keys:1"));
  EXPECT_OK(Client(rotated)->List({}).status());
}

TEST_F(AuthTest, MalformedKeysAndFilesAreRefusedNamingTheLine) {
  AuthOptions o = Files();
  WriteStringToFile(api_file_, std::string(kApiKey) + "\n# ok\nhas space in the key 0123\n");
  EXPECT_THAT(Authenticator::Open(o),
              StatusIs(absl::StatusCode::kInvalidArgument, "api_keys:3: a key holds a character"));
  WriteStringToFile(api_file_, "tooshort\n");
  EXPECT_THAT(Authenticator::Open(o),
              StatusIs(absl::StatusCode::kInvalidArgument, "api_keys:1: a key of 8 characters"));
  WriteStringToFile(api_file_, "# no keys yet\n\n");
  EXPECT_THAT(Authenticator::Open(o), StatusIs(absl::StatusCode::kInvalidArgument, "holds no key"));
  o.api_key_file = dir_.Join("missing");
  EXPECT_THAT(Authenticator::Open(o), StatusIs(absl::StatusCode::kNotFound, "missing"));
}

TEST_F(AuthTest, KeysComeFromTheEnvironmentToo) {
  ASSERT_EQ(setenv("PREMOE_API_KEYS", "env-api-key-0123456789, other-key-0123456789ab", 1), 0);
  ASSERT_EQ(setenv("PREMOE_API_KEY", "env-api-key-0123456789", 1), 0);
  AuthOptions o;
  Serve(o);
  ASSERT_OK_AND_ASSIGN(std::string client_key, LoadClientKey(""));
  EXPECT_EQ(client_key, "env-api-key-0123456789");
  EXPECT_OK(Client(client_key)->List({}).status());
  EXPECT_OK(Client("other-key-0123456789ab")->List({}).status());
  EXPECT_THAT(Client("")->List({}), StatusIs(absl::StatusCode::kUnauthenticated, ""));
  unsetenv("PREMOE_API_KEYS");
  unsetenv("PREMOE_API_KEY");
  ASSERT_OK_AND_ASSIGN(client_key, LoadClientKey(""));
  EXPECT_EQ(client_key, "");
  WriteStringToFile(api_file_, std::string("# mine\n") + kApiKey + "\n");
  ASSERT_OK_AND_ASSIGN(client_key, LoadClientKey(api_file_));
  EXPECT_EQ(client_key, kApiKey);
}

// TLS with gRPC's own stack, between the store's real server and client,
// with certificates made here by the openssl command.
class TlsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    const std::string d = dir_->path();
    const std::string key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    WriteStringToFile(
        dir_->Join("make.sh"),
        absl::StrCat("set -e\ncd ", d, "\nexec 2>openssl.log\n",
                     "for ca in ca other_ca; do openssl req -x509 ", key,
                     " -keyout $ca.key -out $ca.pem -days 2 -subj /CN=$ca; done\n",
                     "echo subjectAltName=IP:127.0.0.1,DNS:localhost > san\n",
                     "for who in server client; do\n", "  openssl req ", key,
                     " -keyout $who.key -out $who.csr -subj /CN=$who\n",
                     "  openssl x509 -req -in $who.csr -CA ca.pem -CAkey ca.key -CAcreateserial ",
                     "-out $who.pem -days 2 -extfile san\n", "done\n"));
    ASSERT_EQ(std::system(absl::StrCat("bash ", d, "/make.sh").c_str()), 0)
        << premoe::testing::ReadFileOrDie(d + "/openssl.log");
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  static std::string File(const std::string& name) { return dir_->Join(name); }

  void SetUp() override {
    store::EmbeddedPatternStore::Options o;
    o.in_memory = true;
    o.path = "/premoe-tls-test";
    ASSERT_OK_AND_ASSIGN(store_, store::EmbeddedPatternStore::Open(o));
  }

  absl::Status Serve(common::TlsFiles tls) {
    store::PatternStoreServer::Options so;
    so.tls = std::move(tls);
    absl::StatusOr<std::unique_ptr<store::PatternStoreServer>> server =
        store::PatternStoreServer::Start(so, store_.get());
    if (!server.ok()) return server.status();
    server_ = *std::move(server);
    return absl::OkStatus();
  }

  // A List through a client with `tls`, with a short deadline.
  absl::Status List(common::TlsFiles tls) {
    store::GrpcPatternStoreClient::Options o;
    o.address = absl::StrCat("localhost:", server_->port());
    o.rpc_timeout = std::chrono::seconds(5);
    o.tls = std::move(tls);
    absl::StatusOr<std::unique_ptr<store::GrpcPatternStoreClient>> client =
        store::GrpcPatternStoreClient::Open(o);
    if (!client.ok()) return client.status();
    return (*client)->List({}).status();
  }

  static TempDir* dir_;
  std::unique_ptr<store::EmbeddedPatternStore> store_;
  std::unique_ptr<store::PatternStoreServer> server_;
};
TempDir* TlsTest::dir_ = nullptr;

TEST_F(TlsTest, ClientsVerifyTheServerAndPlaintextIsRefused) {
  ASSERT_OK(Serve({.cert = File("server.pem"), .key = File("server.key")}));
  EXPECT_OK(List({.ca = File("ca.pem")}));
  EXPECT_THAT(List({}), StatusIs(absl::StatusCode::kUnavailable, ""));
  EXPECT_THAT(List({.ca = File("other_ca.pem")}), StatusIs(absl::StatusCode::kUnavailable, ""));
}

TEST_F(TlsTest, MutualTlsNeedsAClientCertificateOfTheClientCa) {
  ASSERT_OK(
      Serve({.cert = File("server.pem"), .key = File("server.key"), .client_ca = File("ca.pem")}));
  EXPECT_OK(List({.cert = File("client.pem"), .key = File("client.key"), .ca = File("ca.pem")}));
  EXPECT_THAT(List({.ca = File("ca.pem")}), StatusIs(absl::StatusCode::kUnavailable, ""));
}

TEST_F(TlsTest, BadTlsFilesAreNamedAtStart) {
  EXPECT_THAT(Serve({.cert = File("server.pem")}),
              StatusIs(absl::StatusCode::kInvalidArgument, "without its key (--tls-key)"));
  EXPECT_THAT(Serve({.cert = File("missing.pem"), .key = File("server.key")}),
              StatusIs(absl::StatusCode::kInvalidArgument, "--tls-cert: "));
  EXPECT_THAT(Serve({.cert = File("server.pem"), .key = File("san")}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       "--tls-key " + File("san") + ": not a PEM file"));
  EXPECT_THAT(Serve({.key = File("server.key")}),
              StatusIs(absl::StatusCode::kInvalidArgument, "without a certificate"));
  ASSERT_OK(Serve({.cert = File("server.pem"), .key = File("server.key")}));
  EXPECT_THAT(List({.ca = File("nothing.pem")}),
              StatusIs(absl::StatusCode::kInvalidArgument, "--tls-ca: "));
}

}  // namespace
}  // namespace premoe::rpc
