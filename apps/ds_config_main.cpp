// ds-config: checks a DeepSpeed ds_config.json the way deepspeed.cpp will read it.
//
//   ds-config validate ds_config.json --world-size 8
//
// Prints the fully resolved configuration (every default filled in, DeepSpeed key names) on
// stdout and exits 0; warnings go to stderr as "warning: ...". On a bad configuration prints
// "ds-config: error: <one line>" on stderr and exits 1; usage errors exit 2.
#include <CLI/CLI.hpp>
#include <cstdint>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>

#include "ds/common/error.h"
#include "ds/config/config.h"

namespace {

constexpr int kExitBadConfig = 1;
constexpr int kExitUsage = 2;

struct ValidateArgs {
  std::string file;
  ds::ResolveOptions resolve;
};

int validate(const ValidateArgs& args) {
  ds::Config config = ds::Config::load(args.file);
  config.resolve(args.resolve);
  for (const auto& w : config.warnings()) std::cerr << "warning: " << w << "\n";
  std::cout << config.to_json().dump(2) << "\n";
  return 0;
}

// A positive integer, with a short message (CLI11's PositiveNumber prints the whole double range).
const CLI::Validator kPositive(
    [](std::string& text) {
      try {
        size_t used = 0;
        long long v = std::stoll(text, &used);
        if (used == text.size() && v > 0) return std::string();
      } catch (const std::exception&) {
      }
      return "expected a positive integer, got \"" + text + "\"";
    },
    "POSITIVE");

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Validate a DeepSpeed ds_config.json for deepspeed.cpp and print it fully resolved.",
               "ds-config"};
  app.require_subcommand(1);
  ValidateArgs args;
  CLI::App* cmd = app.add_subcommand("validate", "Check FILE; print the resolved configuration as JSON");
  cmd->add_option("file", args.file, "the ds_config.json to check")->required();
  cmd->add_option("--world-size", args.resolve.world_size, "number of ranks (default 1)")->check(kPositive);
  cmd->add_option("--micro-batch", args.resolve.train_micro_batch_size_per_gpu,
                  "train_micro_batch_size_per_gpu for a config that leaves it \"auto\"")
      ->check(kPositive);
  cmd->add_option("--grad-accum", args.resolve.gradient_accumulation_steps,
                  "gradient_accumulation_steps for a config that leaves it \"auto\"")
      ->check(kPositive);
  cmd->add_option("--total-steps", args.resolve.total_num_steps,
                  "scheduler total_num_steps for a config that leaves it \"auto\"")
      ->check(kPositive);

  if (argc > 1 && argv[1][0] != '-' && std::string(argv[1]) != "validate") {
    std::cerr << "ds-config: error: unknown command \"" << argv[1] << "\" (commands: validate)\n";
    return kExitUsage;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help
    std::cerr << "ds-config: error: " << e.what() << " (see ds-config --help)\n";
    return kExitUsage;
  }
  try {
    return validate(args);
  } catch (const ds::Error& e) {
    std::cerr << "ds-config: error: " << e.what() << "\n";
    return kExitBadConfig;
  } catch (const std::exception& e) {
    std::cerr << "ds-config: error: " << e.what() << "\n";
    return kExitBadConfig;
  }
}
