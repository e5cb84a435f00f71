// ds-ckpt: looks into and converts deepspeed.cpp checkpoints.
//
//   ds-ckpt inspect /ckpt [--tag global_step100] [--params]
//       the tag, the layout it was saved under, parameter count, every file with its size,
//       and a checksum verification of every file (exit 1 if any is bad)
//   ds-ckpt to-fp32 /ckpt out [--tag T]
//       consolidated fp32 weights as out.pt (Python: torch.load("out.pt")) and out.safetensors
//   ds-ckpt to-fp32 /ckpt out_dir --hf
//       a ds-train GPT as Hugging Face GPT-2: out_dir/model.safetensors (HF's names, Conv1D
//       layout) and out_dir/config.json (GPT2LMHeadModel.from_pretrained("out_dir") loads it)
//
// Errors: one line "ds-ckpt: error: ..." on stderr, exit 1; usage errors exit 2.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <string>

#include "ds/ckpt/atomic_file.h"
#include "ds/ckpt/checkpoint.h"
#include "ds/ckpt/consolidate.h"
#include "ds/common/error.h"
#include "ds/common/strings.h"
#include "ds/ckpt/safetensors.h"
#include "ds/models/gpt2_hf.h"

namespace {

constexpr int kExitError = 1;
constexpr int kExitUsage = 2;

struct Args {
  std::string dir, tag, out;
  bool params = false, hf = false;
};

std::string join(const std::vector<std::string>& items) {
  std::string s;
  for (size_t i = 0; i < items.size(); ++i) s += (i ? ", " : "") + items[i];
  return s;
}

void print_layout(const ds::ckpt::CheckpointReader& ck, const Args& args) {
  const ds::ckpt::Manifest& m = ck.manifest();
  const ds::ckpt::EngineState& e = m.engine;
  std::cout << "checkpoint: " << ck.tag_path() << "\n"
            << "tag: " << ck.tag() << (args.tag.empty() ? " (from latest)" : "") << "\n"
            << "format: version " << m.format_version << ", written by " << m.producer << "\n"
            << "layout: dp " << m.dp_world_size << ", pp " << m.pp_world_size << ", tp " << m.tp_world_size
            << "; ZeRO stage " << m.zero_stage << "; " << m.partition.count << " optimizer file"
            << (m.partition.count == 1 ? "" : "s") << " (" << ds::ckpt::to_string(m.partition.scheme)
            << "); precision " << m.precision << "\n"
            << "optimizer: " << m.optimizer.type << " (" << join(m.optimizer.state_names) << ")\n"
            << "engine: global_steps " << e.global_steps << ", global_samples " << e.global_samples
            << ", optimizer_steps " << e.optimizer_steps << ", skipped_steps " << e.skipped_steps
            << ", scheduler_iteration " << e.scheduler_iteration << ", loss_scale " << e.loss_scaler.scale
            << "\n";
  int64_t tensors = 0, padded = 0;
  for (const auto& u : m.units) tensors += int64_t(u.slots.size()), padded += u.padded_numel;
  std::cout << "parameters: " << ds::ckpt::parameter_count(m.units) << " in " << tensors << " tensors, "
            << m.units.size() << " units (" << padded << " elements with padding)\n";
  if (!args.params) return;
  for (const auto& u : m.units) {
    std::cout << "  unit " << u.name << ": " << u.numel << " elements, padded " << u.padded_numel << "\n";
    for (const auto& s : u.slots)
      std::cout << "    " << s.name << " " << ds::ckpt::shape_string(s.shape) << " at " << s.offset << "\n";
  }
}

int inspect(const Args& args) {
  ds::ckpt::CheckpointReader ck(args.dir, args.tag);
  print_layout(ck, args);
  std::cout << "files:\n";
  std::string first_problem;
  int64_t total = 0;
  for (const auto& f : ck.manifest().files) {
    std::string problem = ck.verify_file(f);
    char line[512];
    std::snprintf(line, sizeof line, "  %-48s %12s  xxh64 %s  %s\n", f.name.c_str(),
                  ds::format_bytes(double(f.bytes)).c_str(), ds::ckpt::to_hex(f.xxh64).c_str(),
                  problem.empty() ? "ok" : "BAD");
    std::cout << line;
    total += f.bytes;
    if (first_problem.empty()) first_problem = problem;
  }
  if (!first_problem.empty()) throw ds::Error(first_problem);
  std::cout << "checksums: all " << ck.manifest().files.size() << " files ok ("
            << ds::format_bytes(double(total)) << ")\n";
  // Temp files of saves killed by SIGKILL: harmless (readers ignore them) but possibly large.
  const auto stale = ds::ckpt::stale_temp_files(args.dir);
  if (!stale.empty()) {
    std::cout << "left by killed saves (the next save removes them, or rm them):\n";
    for (const auto& e : stale) {
      const auto bytes = ds::ckpt::file_size(e.path);
      std::cout << "  " << e.path << "  " << ds::format_bytes(double(bytes.value_or(0))) << "  (process " << e.pid
                << " is gone)\n";
    }
  }
  return 0;
}

int to_hf(const ds::ckpt::CheckpointReader& ck, const Args& args) {
  const nlohmann::json& client = ck.manifest().engine.client;
  if (!client.contains("gpt"))
    throw ds::Error(ds::str(ck.tag_path(), " has no GPT description in its client state (ds-train writes one): "
                            "--hf converts checkpoints of ds-train's reference GPT only"));
  const ds::GptConfig c = ds::GptConfig::from_json(client["gpt"]);
  const auto hf = ds::to_gpt2_hf(ds::ckpt::consolidate_fp32(ck), c);
  std::error_code ec;
  std::filesystem::create_directories(args.out, ec);
  if (!std::filesystem::is_directory(args.out))
    throw ds::Error(ds::str("cannot create the directory ", args.out, ec ? ": " + ec.message() : ""));
  const std::string weights = args.out + "/model.safetensors", config = args.out + "/config.json";
  const ds::ckpt::FileDigest w = ds::ckpt::write_safetensors(weights, hf, {{"format", "pt"}});
  const std::string text = ds::gpt2_hf_config(c).dump(2) + "\n";
  ds::ckpt::AtomicFile f(config);
  f.write(text.data(), text.size());
  f.commit();
  std::cout << "tag " << ck.tag() << ": " << c.describe() << "\n"
            << "wrote " << weights << " (" << hf.size() << " tensors, " << ds::format_bytes(double(w.bytes)) << ")\n"
            << "wrote " << config << "\n";
  return 0;
}

int to_fp32(const Args& args) {
  ds::ckpt::CheckpointReader ck(args.dir, args.tag);
  if (args.hf) return to_hf(ck, args);
  ds::ckpt::ConsolidatedFiles out = ds::ckpt::write_consolidated(ck, args.out);
  std::cout << "tag " << ck.tag() << ": " << out.tensors << " tensors, "
            << ds::ckpt::parameter_count(ck.manifest().units) << " parameters\n"
            << "wrote " << out.pt_path << " (" << ds::format_bytes(double(out.pt.bytes)) << ")\n"
            << "wrote " << out.safetensors_path << " (" << ds::format_bytes(double(out.safetensors.bytes))
            << ")\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Inspect and convert deepspeed.cpp checkpoints.", "ds-ckpt"};
  app.require_subcommand(1);
  Args args;
  CLI::App* ins =
      app.add_subcommand("inspect", "Print a checkpoint's layout and files; verify every checksum");
  ins->add_option("dir", args.dir, "the checkpoint directory (holding 'latest')")->required();
  ins->add_option("--tag", args.tag, "the tag to inspect (default: the one in DIR/latest)");
  ins->add_flag("--params", args.params, "also list every unit and parameter");
  CLI::App* fp32 =
      app.add_subcommand("to-fp32", "Write consolidated fp32 weights as OUT.pt and OUT.safetensors");
  fp32->add_option("dir", args.dir, "the checkpoint directory (holding 'latest')")->required();
  fp32->add_option("out", args.out, "output path without extension")->required();
  fp32->add_option("--tag", args.tag, "the tag to convert (default: the one in DIR/latest)");
  fp32->add_flag("--hf", args.hf,
                 "write Hugging Face GPT-2 (OUT/model.safetensors + OUT/config.json) from a ds-train checkpoint");

  if (argc > 1 && argv[1][0] != '-' && std::string(argv[1]) != "inspect" &&
      std::string(argv[1]) != "to-fp32") {
    std::cerr << "ds-ckpt: error: unknown command \"" << argv[1] << "\" (commands: inspect, to-fp32)\n";
    return kExitUsage;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help
    std::cerr << "ds-ckpt: error: " << e.what() << " (see ds-ckpt --help)\n";
    return kExitUsage;
  }
  try {
    return ins->parsed() ? inspect(args) : to_fp32(args);
  } catch (const std::exception& e) {
    std::string message = e.what();
    std::cerr << "ds-ckpt: error: " << message.substr(0, message.find('\n')) << "\n";
    return kExitError;
  }
}
