// The `premoe` subcommands. Each Register* adds its subcommand and options to
// the app; the callback runs the command and sets the process exit code.
// Commands parse flags and call libraries; they hold no logic of their own.
#pragma once

#include <string>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "premoe/common/tls_files.h"

namespace premoe::cli {

// Exit codes: 0 success, 1 a command failed (message on stderr), 2 bad usage.
void RegisterTokenize(CLI::App& app, int* exit_code);
void RegisterChat(CLI::App& app, int* exit_code);  // chat render
void RegisterInspect(CLI::App& app, int* exit_code);
void RegisterGenerate(CLI::App& app, int* exit_code);
void RegisterTasks(CLI::App& app, int* exit_code);
void RegisterRepack(CLI::App& app, int* exit_code);
void RegisterVersion(CLI::App& app, int* exit_code);
void RegisterEval(CLI::App& app, int* exit_code);
void RegisterTestbed(CLI::App& app, int* exit_code);
void RegisterProfile(CLI::App& app, int* exit_code);  // profile and select
void RegisterPatterns(CLI::App& app, int* exit_code);
void RegisterWorker(CLI::App& app, int* exit_code);
void RegisterServe(CLI::App& app, int* exit_code);  // serve and query

// The help text of every --budget option that selects experts from a
// pattern (the grammar of premoe/checkpoint/budget.h).
extern const char kBudgetHelp[];

// The API key premoe's clients send (store, worker and router calls):
// the first key of `premoe --key-file FILE`, else the environment variable
// PREMOE_API_KEY, else none (""). Loaded once, before any command runs.
const std::string& ClientKey();
absl::Status LoadClientKey(const std::string& key_file);

// The process's TLS files (premoe --tls-cert, --tls-key, --tls-ca,
// --tls-client-ca): its servers serve TLS with the certificate, its clients
// dial TLS verifying with the CA (and present the certificate for mutual TLS).
common::TlsFiles& ProcessTls();

// The exit code of a finished command: 0, or 1 after printing
// "premoe <command>: <status>" to stderr.
int ReportStatus(absl::string_view command, const absl::Status& status);

}  // namespace premoe::cli
