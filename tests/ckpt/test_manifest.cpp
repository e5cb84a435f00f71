// manifest.json: round trip, and malformed manifests rejected with the field's path.
#include <gtest/gtest.h>

#include "ckpt_test_util.h"
#include "ds/ckpt/manifest.h"
#include "support/errors.h"

namespace ds::ckpt {
namespace {

using nlohmann::json;

Manifest sample() {
  Manifest m = test::toy_layout(test::toy_units(8), "global_step42", {PartitionScheme::kEqualChunks, 2});
  m.files = {{model_states_name(), 100, 0x0123456789abcdefULL},
             {optim_states_name(0), 200, 1},
             {optim_states_name(1), 300, ~uint64_t(0)}};
  return m;
}

// The sample's JSON with one edit, parsed.
template <typename Edit>
Manifest parse_edited(Edit edit) {
  json j = json::parse(manifest_to_json(sample()).dump());
  edit(j);
  return parse_manifest(j.dump(), "t/manifest.json");
}

TEST(Manifest, RoundTripsEveryField) {
  Manifest m = sample();
  Manifest back = parse_manifest(manifest_to_json(m).dump(2), "x");
  EXPECT_EQ(manifest_to_json(back), manifest_to_json(m));
  EXPECT_EQ(back.partition.scheme, PartitionScheme::kEqualChunks);
  EXPECT_EQ(back.units[1].slots[2].shape, (std::vector<int64_t>{1, 1, 2}));
  EXPECT_EQ(back.units[3].slots[0].shape, std::vector<int64_t>{});
  EXPECT_EQ(back.engine.data.seed, 1234567890123ULL);
  EXPECT_EQ(back.engine.loss_scaler.last_overflow_iteration, 17);
  EXPECT_EQ(back.engine.client["note"], "hello");
  EXPECT_EQ(back.files[2].xxh64, ~uint64_t(0));
  EXPECT_EQ(back.find_file(optim_states_name(1))->bytes, 300);
  EXPECT_EQ(back.find_file("nope"), nullptr);
  // The file's text: one line per slot and file, and the same JSON.
  std::string text = manifest_text(m);
  EXPECT_EQ(json::parse(text), json::parse(manifest_to_json(m).dump()));
  EXPECT_NE(text.find("\n   {\"name\":\"blocks.0.g\",\"offset\":18,\"numel\":2,\"shape\":[1,1,2],\"split_dim\":-1,\"split_groups\":1}\n"),
            std::string::npos)
      << text;
  EXPECT_NE(
      text.find(
          "\n  {\"name\":\"mp_rank_00_model_states.pt\",\"bytes\":100,\"xxh64\":\"0123456789abcdef\"},\n"),
      std::string::npos)
      << text;
}

TEST(Manifest, MalformedOffsetsAreErrorsNotCrashes) {
  EXPECT_ERROR_HAS(parse_edited([](json& j) { j["units"][0]["slots"][0]["offset"] = -1; }),
                   "t/manifest.json: units[0].slots[0] (wte.weight): elements [-1, -1+35) are outside");
  EXPECT_ERROR_HAS(parse_edited([](json& j) { j["units"][1]["slots"][2]["offset"] = INT64_MAX; }),
                   "units[1].slots[2] (blocks.0.g): elements");
  EXPECT_ERROR_HAS(
      parse_edited([](json& j) { j["units"][0]["slots"][0]["offset"] = 18446744073709551615ULL; }),
      "t/manifest.json.units[0].slots[0].offset: expected an integer");
  EXPECT_ERROR_HAS(parse_edited([](json& j) { j["units"][0]["numel"] = -5; }),
                   "t/manifest.json.units[0].numel: expected an integer in [0,");
  EXPECT_ERROR_HAS(parse_edited([](json& j) {
                     j["units"][0]["slots"][0]["shape"] = {7, -5};
                   }),
                   "units[0].slots[0].shape: expected non-negative integer sizes");
  EXPECT_ERROR_HAS(parse_edited([](json& j) {
                     j["units"][0]["slots"][0]["shape"] = {int64_t(1) << 40, int64_t(1) << 40};
                   }),
                   "bad shape");
}

TEST(Manifest, WrongTypesAndMissingFieldsNameThePath) {
  EXPECT_ERROR_HAS(parse_manifest("{not json", "m.json"), "m.json: not valid JSON");
  EXPECT_ERROR_HAS(parse_manifest("[]", "m.json"), "m.json: expected an object, got array");
  EXPECT_ERROR_HAS(parse_manifest("{}", "m.json"), "not a deepspeed.cpp checkpoint manifest");
  EXPECT_ERROR_HAS(parse_edited([](json& j) { j["world"].erase("dp"); }),
                   "t/manifest.json.world.dp: missing");
  EXPECT_ERROR_HAS(parse_edited([](json& j) { j["zero_stage"] = 4; }),
                   "zero_stage: expected an integer in [0, 3]");
  EXPECT_ERROR_HAS(parse_edited([](json& j) { j["partition"]["count"] = 0; }),
                   "partition.count: expected an integer");
  EXPECT_ERROR_HAS(parse_edited([](json& j) { j["partition"]["scheme"] = "round_robin"; }),
                   "partition.scheme: unknown partition scheme \"round_robin\"");
  EXPECT_ERROR_HAS(parse_edited([](json& j) { j["units"] = "x"; }), "units: expected an array");
  EXPECT_ERROR_HAS(parse_edited([](json& j) {
                     j["optimizer"]["state_names"] = {"m", "m"};
                   }),
                   "optimizer state name \"m\" is empty, reserved or repeated");
  EXPECT_ERROR_HAS(parse_edited([](json& j) { j["engine_state"]["loss_scaler"]["scale"] = "big"; }),
                   "engine_state.loss_scaler.scale: expected a number");
  EXPECT_ERROR_HAS(parse_edited([](json& j) { j["format_version"] = 4; }),
                   "format_version 4 was written by a newer");
}

TEST(Manifest, SplitDimensionsAreRecordedAndVersionOneReadsAsWhole) {
  Manifest m = sample();
  m.units[1].slots[2].split_dim = 2;  // shape [1, 1, 2]: split along the last dimension
  Manifest back = parse_manifest(manifest_to_json(m).dump(), "x");
  EXPECT_EQ(back.units[1].slots[2].split_dim, 2);
  EXPECT_EQ(back.units[1].slots[0].split_dim, -1);
  EXPECT_ERROR_HAS(parse_edited([](json& j) { j["units"][1]["slots"][2]["split_dim"] = 3; }),
                   "units[1].slots[2].split_dim: 3 is not a dimension of shape [1, 1, 2]");
  EXPECT_ERROR_HAS(parse_edited([](json& j) { j["units"][1]["slots"][2]["split_dim"] = -2; }),
                   "split_dim: expected an integer in [-1, 63]");
  EXPECT_ERROR_HAS(parse_edited([](json& j) { j["units"][1]["slots"][2].erase("split_dim"); }),
                   "units[1].slots[2].split_dim: missing");
  // A version-1 manifest (written before split dimensions were recorded) has none: every
  // parameter is whole; writing it again gives version 2.
  Manifest old = parse_edited([](json& j) {
    j["format_version"] = 1;
    for (auto& u : j["units"]) {
      u.erase("mp_rank");
      for (auto& s : u["slots"]) s.erase("split_dim");
    }
  });
  EXPECT_EQ(old.format_version, 1);
  for (const auto& u : old.units)
    for (const auto& s : u.slots) EXPECT_EQ(s.split_dim, -1) << s.name;
  EXPECT_EQ(manifest_to_json(old)["format_version"], kFormatVersion);
  EXPECT_EQ(kFormatVersion, 3);
}

TEST(Manifest, UnitsOfModelParallelRanksNeedTheirFilesAndAValidRank) {
  // Version 2 (before pipeline checkpoints) reads every unit as model-parallel rank 0.
  Manifest v2 = parse_edited([](json& j) {
    j["format_version"] = 2;
    for (auto& u : j["units"]) u.erase("mp_rank");
  });
  for (const auto& u : v2.units) EXPECT_EQ(u.mp_rank, 0) << u.name;
  EXPECT_EQ(v2.mp_ranks(), std::vector<int>{0});
  EXPECT_ERROR_HAS(parse_edited([](json& j) { j["units"][1]["mp_rank"] = 1; }),
                   "unit " + sample().units[1].name + " has mp_rank 1 but there are 1 model-parallel ranks (pp x tp)");
  // Two pipeline stages: stage 1's unit needs stage 1's model states and optimizer parts.
  auto two_stages = [](json& j) {
    j["world"]["pp"] = 2;
    j["units"][1]["mp_rank"] = 1;
  };
  EXPECT_ERROR_HAS(parse_edited(two_stages), "files: does not list mp_rank_01_model_states.pt");
  Manifest m = parse_edited([&](json& j) {
    two_stages(j);
    const int parts = j["partition"]["count"];
    j["files"].push_back({{"name", "mp_rank_01_model_states.pt"}, {"bytes", 1}, {"xxh64", "0000000000000001"}});
    for (int k = 0; k < parts; ++k)
      j["files"].push_back({{"name", optim_states_name(k, 1)}, {"bytes", 1}, {"xxh64", "0000000000000001"}});
  });
  EXPECT_EQ(m.mp_ranks(), (std::vector<int>{0, 1}));
  EXPECT_EQ(parse_manifest(manifest_text(m), "x").units[1].mp_rank, 1);  // the written text keeps it
}

TEST(Manifest, FileListMustBeCompleteAndSafe) {
  EXPECT_ERROR_HAS(parse_edited([](json& j) { j["files"].erase(2); }),
                   "files: does not list zero_pp_rank_1_mp_rank_00_optim_states.pt");
  EXPECT_ERROR_HAS(parse_edited([](json& j) { j["files"][0]["name"] = "../../etc/passwd"; }),
                   "unsafe file name \"../../etc/passwd\"");
  EXPECT_ERROR_HAS(parse_edited([](json& j) { j["files"][1]["xxh64"] = "xyz"; }),
                   "files[1].xxh64: expected 16 hex");
  EXPECT_ERROR_HAS(parse_edited([](json& j) { j["files"][1]["bytes"] = -1; }),
                   "files[1].bytes: expected an integer");
  EXPECT_ERROR_HAS(parse_edited([](json& j) { j["files"].push_back(j["files"][0]); }), "is listed twice");
  EXPECT_ERROR_HAS(parse_edited([](json& j) { j["tag"] = "a/b"; }), "one path component");
}

}  // namespace
}  // namespace ds::ckpt
