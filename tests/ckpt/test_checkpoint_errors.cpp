// What a loader meets on disk: corruption, missing pieces, another model, crashed saves.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <thread>

#include "ckpt_test_util.h"
#include "ds/ckpt/atomic_file.h"
#include "ds/ckpt/checkpoint.h"
#include "ds/ckpt/consolidate.h"
#include "support/errors.h"

namespace ds::ckpt {
namespace {

using test::TempDir;

const Partition kThree{PartitionScheme::kTensorSplit, 3};

// A saved checkpoint with tag "global_step42" over three parts.
struct Saved {
  TempDir dir;
  std::vector<UnitInfo> units = test::toy_units(8);
  test::FullState full = test::random_state(units, 2, 1);
  Saved() { test::save_as_ranks(dir.path(), units, full, kThree, "global_step42"); }
  std::string file(const std::string& name) const { return dir.path() + "/global_step42/" + name; }
  std::vector<UnitShard> load(int rank = 0) const {
    return CheckpointReader(dir.path()).load_partition(units, {PartitionScheme::kTensorSplit, 2}, rank);
  }
};

TEST(CheckpointErrors, TruncatedFileIsNamedBeforeAnythingIsParsed) {
  Saved s;
  std::string path = s.file(optim_states_name(1));
  std::string bytes = test::slurp(path);
  test::spit(path, bytes.substr(0, bytes.size() / 2));
  EXPECT_ERROR_HAS(CheckpointReader{s.dir.path()},
                   ds::str("checkpoint file ", path, " has ", bytes.size() / 2,
                           " bytes but the manifest records ", bytes.size(), " (truncated or overwritten)"));
}

TEST(CheckpointErrors, OneFlippedByteIsACorruptFileError) {
  Saved s;
  for (const std::string& name : {optim_states_name(2), model_states_name()}) {
    std::string path = s.file(name), bytes = test::slurp(path), good = bytes;
    bytes[bytes.size() / 3] ^= 0x10;
    test::spit(path, bytes);
    CheckpointReader ck(s.dir.path());  // sizes still match: opening succeeds
    std::string want = ds::str("checkpoint file ", path, " is corrupt: its xxh64 is ");
    if (name == model_states_name())
      EXPECT_ERROR_HAS(ck.load_model_states(), want);
    else
      EXPECT_ERROR_HAS(s.load(1), want);
    EXPECT_ERROR_HAS(ck.verify_all(), want);
    EXPECT_NE(ck.verify_file(*ck.manifest().find_file(name)), "");
    test::spit(path, good);
  }
  EXPECT_NO_THROW(s.load(1));
}

// A .pt read without a manifest (read_torch_state_dict: a user's file) has no checksum to stop
// damage before LibTorch's zip reader, which reads past the buffer for some damaged archives
// (found by fuzzing: a span cut out of the middle), and allocates whatever length a damaged
// pickle argument claims. The zip structure and the pickle's lengths are bounds-checked first.
TEST(CheckpointErrors, DamagedPtFilesWithoutAManifestAreErrorsNotOutOfBoundsReads) {
  TempDir dir;
  const std::string path = dir / "w.pt";
  write_torch_state_dict(path, {{"a", at::randn({1000})}, {"b", at::arange(300)}});
  const std::string good = test::slurp(path);
  ASSERT_EQ(read_torch_state_dict(path).size(), 2u);
  std::vector<std::string> damaged;
  for (size_t keep : {size_t(0), size_t(10), good.size() / 3, good.size() - 30, good.size() - 1})
    damaged.push_back(good.substr(0, keep));
  damaged.push_back(good.substr(0, good.size() * 4 / 5) + good.substr(good.size() * 4 / 5 + 700));  // a span cut out
  std::string bad_dir = good;  // the central directory's offset moved past the end of the file
  const size_t end64 = bad_dir.rfind(std::string("PK\x06\x06", 4)), end = bad_dir.rfind(std::string("PK\x05\x06", 4));
  ASSERT_NE(end, std::string::npos);
  bad_dir[end64 != std::string::npos ? end64 + 54 : end + 19] = char(0x7f);
  damaged.push_back(bad_dir);
  std::string bad_length = good;  // the key "a" (BINUNICODE) claims 4 GB: LibTorch would allocate them
  const size_t key = bad_length.find(std::string("X\x01\x00\x00\x00" "a", 6));
  ASSERT_NE(key, std::string::npos);
  bad_length.replace(key + 1, 4, "\xf0\xff\xff\xfe");
  damaged.push_back(bad_length);
  for (size_t i = 0; i < damaged.size(); ++i) {
    test::spit(path, damaged[i]);
    EXPECT_ERROR_HAS(read_torch_state_dict(path), ds::str("checkpoint file ", path, " is not a readable .pt (zip) file"))
        << "damage " << i;
  }
}

// Every .pt input the fuzzer found a problem with (fuzz/corpus/pickle/regression_*) is a
// one-line error in the ordinary test suite too.
TEST(CheckpointErrors, EveryPtFileTheFuzzerBrokeIsAnError) {
  const char* src = std::getenv("DS_SOURCE_DIR");
  ASSERT_NE(src, nullptr) << "run through ctest (DS_SOURCE_DIR names the source tree)";
  TempDir dir;
  int found = 0;
  for (const auto& f : std::filesystem::directory_iterator(std::string(src) + "/fuzz/corpus/pickle")) {
    if (f.path().filename().string().rfind("regression_", 0) != 0) continue;
    ++found;
    const std::string path = dir / f.path().filename().string();
    test::spit(path, test::slurp(f.path().string()));
    EXPECT_ERROR_HAS(read_torch_state_dict(path), ds::str("checkpoint file ", path, " is not a readable .pt (zip) file"));
  }
  EXPECT_GE(found, 3);
}

TEST(CheckpointErrors, MissingShardsAreListed) {
  Saved s;
  ASSERT_TRUE(remove_file_durably(s.file(optim_states_name(0))));
  ASSERT_TRUE(remove_file_durably(s.file(optim_states_name(2))));
  EXPECT_ERROR_HAS(
      CheckpointReader{s.dir.path()},
      ds::str("checkpoint ", s.dir.path(), "/global_step42 is missing 2 of 4 files: ",
              "zero_pp_rank_0_mp_rank_00_optim_states.pt, zero_pp_rank_2_mp_rank_00_optim_states.pt"));
}

TEST(CheckpointErrors, AnotherModelNamesTheFirstMismatchingParameter) {
  Saved s;
  auto other = s.units;
  other[2].slots[0].shape = {3, 5};
  CheckpointReader ck(s.dir.path());
  EXPECT_ERROR_HAS(ck.check_model(other),
                   "parameter blocks.1.w has shape [5, 3] in the checkpoint but [3, 5] in the model");
  EXPECT_ERROR_HAS(ck.load_partition(other, kThree, 0), "parameter blocks.1.w has shape [5, 3]");
}

TEST(CheckpointErrors, NoDirectoryEmptyDirectoryNoLatestMissingTagIncompleteTag) {
  TempDir empty;
  EXPECT_ERROR_HAS(CheckpointReader{empty.path() + "/nope"},
                   ds::str("checkpoint directory ", empty.path(), "/nope does not exist"));
  EXPECT_ERROR_HAS(
      CheckpointReader{empty.path()},
      ds::str("no checkpoint in ", empty.path(), ": it has no 'latest' file and no complete checkpoint tag"));
  Saved s;
  ASSERT_TRUE(remove_file_durably(s.dir.path() + "/latest"));
  EXPECT_ERROR_HAS(
      CheckpointReader{s.dir.path()},
      ds::str(s.dir.path(),
              " has no 'latest' file; complete tags there: global_step42 (pass one as the tag)"));
  EXPECT_NO_THROW(CheckpointReader(s.dir.path(), "global_step42"));
  EXPECT_ERROR_HAS(CheckpointReader(s.dir.path(), "global_step7"),
                   "checkpoint tag 'global_step7' not found: " + s.dir.path() +
                       "/global_step7 does not exist (complete tags in " + s.dir.path() + ": global_step42)");
  test::spit(s.dir.path() + "/latest", "\n");
  EXPECT_ERROR_HAS(CheckpointReader{s.dir.path()},
                   "/latest is empty: it should name the newest checkpoint tag");
  make_directories(s.dir.path() + "/global_step50");
  test::spit(s.dir.path() + "/latest", "global_step50\n");
  EXPECT_ERROR_HAS(CheckpointReader{s.dir.path()}, ds::str("checkpoint ", s.dir.path(),
                                                           "/global_step50 is incomplete: it "
                                                           "has no manifest.json (its save did not finish)"));
}

// Rewrites the manifest on disk with one edit.
template <typename Edit>
void edit_manifest(const Saved& s, Edit edit) {
  auto j = nlohmann::json::parse(test::slurp(s.file(kManifestName)));
  edit(j);
  test::spit(s.file(kManifestName), j.dump());
}

TEST(CheckpointErrors, MalformedManifestOffsetsAndSizesAreErrorsNotCrashes) {
  {
    Saved s;
    edit_manifest(s, [](auto& j) { j["units"][1]["slots"][0]["offset"] = -8; });
    EXPECT_ERROR_HAS(CheckpointReader{s.dir.path()},
                     "manifest.json: units[1].slots[0] (blocks.0.w): elements [-8, -8+15)");
  }
  {
    Saved s;
    edit_manifest(s, [](auto& j) { j["units"][0]["slots"][1]["offset"] = 1000; });
    EXPECT_ERROR_HAS(CheckpointReader{s.dir.path()}, "are outside the unit's 50 parameter elements");
  }
  {
    Saved s;  // every offset fine, but far more elements than the files hold
    edit_manifest(s, [](auto& j) {
      j["units"][0]["numel"] = int64_t(1) << 40;
      j["units"][0]["padded_numel"] = int64_t(1) << 40;
    });
    EXPECT_ERROR_HAS(CheckpointReader{s.dir.path()},
                     "the units claim more elements for part 0 than "
                     "zero_pp_rank_0_mp_rank_00_optim_states.pt can hold");
  }
  {
    Saved s;  // consistent with the sizes, but not with the files' tensors
    edit_manifest(s, [](auto& j) { j["units"][0]["padded_numel"] = 51; });
    EXPECT_ERROR_HAS(s.load(0), "per the manifest");  // a checksum-valid file whose tensors disagree
  }
  {
    Saved s;
    test::spit(s.file(kManifestName), "{\"format\": ");
    EXPECT_ERROR_HAS(CheckpointReader{s.dir.path()}, "manifest.json: not valid JSON");
  }
}

TEST(CheckpointErrors, ACrashMidSaveLeavesLatestOnTheLastCompleteTag) {
  Saved s;  // global_step42 complete
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {  // the next save dies after two of three parts and half of the third
    try {
      CheckpointWriter w(s.dir.path(), test::toy_layout(s.units, "global_step43", kThree));
      w.prepare();
      w.write_optimizer_part(0, test::part_of(s.units, s.full, kThree, 0));
      w.write_optimizer_part(1, test::part_of(s.units, s.full, kThree, 1));
      AtomicFile f(s.dir.path() + "/global_step43/" + optim_states_name(2));
      f.write("PK", 2);
      ::_exit(0);
    } catch (...) {
      ::_exit(1);
    }
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  EXPECT_EQ(read_latest(s.dir.path()), "global_step42");
  CheckpointReader ck(s.dir.path());
  EXPECT_EQ(ck.tag(), "global_step42");
  ck.verify_all();
  EXPECT_NO_THROW(s.load(1));
  EXPECT_ERROR_HAS(CheckpointReader(s.dir.path(), "global_step43"), "global_step43 is incomplete");
  EXPECT_EQ(list_tags(s.dir.path()), std::vector<std::string>{"global_step42"});
}

// The saving child's fault injection: SIGKILL at the g_kill_at-th file commit.
int g_commits = 0, g_kill_at = 0;
void kill_at_commit(const std::string&) {
  if (++g_commits == g_kill_at) ::kill(::getpid(), SIGKILL);
}

TEST(CheckpointErrors, KillNineAtEveryFileOfASaveNeverLeavesABrokenLatest) {
  // A save of two parts commits five files: part 0, part 1, the model states, the manifest,
  // `latest`. The child saves global_step1, then dies by SIGKILL in global_step2 with file k
  // fully written but not renamed into place, for every k.
  auto units = test::toy_units(8);
  units[0].slots[0].shape = {1024, 1024};  // 4 MiB per tensor: 6 MiB per part file, 16 MiB per save
  units[0].slots[0].numel = 1 << 20;
  units[0].slots[1].offset = 1 << 20;
  units[0].numel = (1 << 20) + 15;
  units[0].padded_numel = (units[0].numel + 7) / 8 * 8;
  auto full = test::random_state(units, 2, 2);
  constexpr int kFilesPerSave = 5;
  for (int k = 1; k <= kFilesPerSave; ++k) {
    TempDir dir;
    pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      try {
        g_kill_at = kFilesPerSave + k;
        set_commit_hook_for_testing(&kill_at_commit);
        for (int step = 1;; ++step)
          test::save_as_ranks(dir.path(), units, full, {PartitionScheme::kTensorSplit, 2}, ds::str("global_step", step));
      } catch (...) {
      }
      ::_exit(1);
    }
    int status = 0;
    ASSERT_EQ(::waitpid(child, &status, 0), child);
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "file " << k << ": status " << status;
    EXPECT_EQ(stale_temp_files(dir.path()).size(), 1u) << "file " << k;
    const std::vector<std::string> complete = list_tags(dir.path());
    const std::vector<std::string> expected = k < kFilesPerSave ? std::vector<std::string>{"global_step1"}
                                                                : std::vector<std::string>{"global_step1", "global_step2"};
    EXPECT_EQ(complete, expected) << "file " << k;
    CheckpointReader ck(dir.path());
    EXPECT_EQ(ck.tag(), "global_step1") << "file " << k;
    ck.verify_all();
    auto loaded = ck.load_partition(units, {PartitionScheme::kTensorSplit, 1}, 0);
    ASSERT_TRUE(test::bit_equal(loaded[0].fp32, full.fp32[0])) << "file " << k;
  }
}

TEST(CheckpointErrors, OverwritingATagDropsItsManifestFirst) {
  Saved s;
  CheckpointWriter w(s.dir.path(), test::toy_layout(s.units, "global_step42", kThree));
  w.prepare();  // a crash from here until commit() leaves global_step42 visibly incomplete
  EXPECT_FALSE(file_size(s.file(kManifestName)));
  EXPECT_ERROR_HAS(CheckpointReader{s.dir.path()}, "global_step42 is incomplete");
  test::save_as_ranks(s.dir.path(), s.units, s.full, kThree, "global_step42");
  EXPECT_NO_THROW(s.load(0));
}

}  // namespace
}  // namespace ds::ckpt
