// premoe: the operator CLI. `premoe --help` lists the subcommands.
#include <cstdio>

#include "cli/commands.h"
#include "premoe/common/logging.h"

int main(int argc, char** argv) {
  CLI::App app{"premoe: serve Mixture-of-Experts models with only the experts a task needs"};
  app.require_subcommand(1);
  std::string log_level;
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error or off")
      ->envname("PREMOE_LOG_LEVEL");
  std::string log_format;
  app.add_option("--log-format", log_format,
                 "text or json (one object a line, with the request id of lines about a request)")
      ->envname("PREMOE_LOG_FORMAT");
  premoe::common::TlsFiles& tls = premoe::cli::ProcessTls();
  app.add_option("--tls-cert", tls.cert,
                 "PEM certificate chain: servers serve TLS with it; clients present it to servers "
                 "that ask for client certificates");
  app.add_option("--tls-key", tls.key, "PEM private key of --tls-cert");
  app.add_option("--tls-ca", tls.ca, "PEM roots: clients dial TLS and verify servers with them");
  app.add_option("--tls-client-ca", tls.client_ca,
                 "PEM roots: servers require client certificates signed by them (mutual TLS)");
  std::string key_file;
  app.add_option("--key-file", key_file,
                 "API key that clients send to premoe servers (the file's first key); default: "
                 "the environment variable PREMOE_API_KEY");
  int exit_code = 0;
  premoe::cli::RegisterTokenize(app, &exit_code);
  premoe::cli::RegisterChat(app, &exit_code);
  premoe::cli::RegisterInspect(app, &exit_code);
  premoe::cli::RegisterGenerate(app, &exit_code);
  premoe::cli::RegisterTasks(app, &exit_code);
  premoe::cli::RegisterEval(app, &exit_code);
  premoe::cli::RegisterTestbed(app, &exit_code);
  premoe::cli::RegisterProfile(app, &exit_code);
  premoe::cli::RegisterPatterns(app, &exit_code);
  premoe::cli::RegisterWorker(app, &exit_code);
  premoe::cli::RegisterServe(app, &exit_code);
  premoe::cli::RegisterRepack(app, &exit_code);
  premoe::cli::RegisterVersion(app, &exit_code);
  app.parse_complete_callback([&] {
    if (auto status = premoe::common::InitLogging(log_level, log_format); !status.ok()) {
      throw CLI::ValidationError("--log-level/--log-format", std::string(status.message()));
    }
    if (auto status = premoe::cli::LoadClientKey(key_file); !status.ok()) {
      throw CLI::ValidationError("--key-file", std::string(status.message()));
    }
  });
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help and --version end here too, with code 0; anything else is bad usage.
    const int code = app.exit(e);
    return code == 0 ? 0 : 2;
  }
  return exit_code;
}
