// Our safetensors writer against the format's rules, and the reader against malformed files.
#include <gtest/gtest.h>

#include <cstring>
#include <nlohmann/json.hpp>

#include "ckpt_test_util.h"
#include "ds/ckpt/safetensors.h"
#include "support/errors.h"

namespace ds::ckpt {
namespace {

using test::TempDir;

std::vector<std::pair<std::string, at::Tensor>> sample_tensors() {
  return {{"w", at::randn({3, 5})},
          {"b16", at::randn({4}).to(at::kBFloat16)},
          {"h", at::randn({2, 2}).to(at::kHalf)},
          {"d", at::randn({3}, at::kDouble)},
          {"steps", at::arange(7, at::kLong)},
          {"mask", at::tensor({1, 0, 1}).to(at::kBool)},
          {"bytes", at::arange(5, at::kByte)},
          {"scalar", at::full({}, 2.5f)},
          {"empty", at::zeros({0, 4})},
          {"strided", at::randn({4, 6}).t()}};  // non-contiguous: written in C order
}

TEST(Safetensors, RoundTripsEveryDtypeShapeAndMetadata) {
  TempDir dir;
  auto tensors = sample_tensors();
  std::string path = dir.path() + "/m.safetensors";
  FileDigest d = write_safetensors(path, tensors, {{"format", "pt"}, {"tag", "global_step1"}});
  EXPECT_EQ(d.bytes, *file_size(path));
  SafetensorsFile f = read_safetensors(path);
  EXPECT_EQ(f.metadata.at("format"), "pt");
  EXPECT_EQ(f.metadata.at("tag"), "global_step1");
  ASSERT_EQ(f.tensors.size(), tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    EXPECT_EQ(f.tensors[i].first, tensors[i].first);  // written in order, so offsets are in order
    EXPECT_TRUE(test::bit_equal(f.tensors[i].second, tensors[i].second)) << tensors[i].first;
  }
}

TEST(Safetensors, FileFollowsTheSpecByteForByte) {
  TempDir dir;
  std::string path = dir.path() + "/m.safetensors";
  at::Tensor w = at::tensor({1.0f, -2.0f, 0.5f});
  write_safetensors(path, {{"w", w}, {"i", at::tensor({int64_t(-1)})}}, {{"format", "pt"}});
  std::string bytes = test::slurp(path);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);  // little-endian u64
  ASSERT_LE(8 + n, bytes.size());
  EXPECT_EQ((8 + n) % 8, 0u);  // data 8-byte aligned; header padded with spaces
  std::string header = bytes.substr(8, n);
  EXPECT_EQ(header.front(), '{');
  EXPECT_EQ(header.substr(header.rfind('}') + 1).find_first_not_of(' '), std::string::npos);  // only spaces
  auto j = nlohmann::json::parse(header);
  EXPECT_EQ(j["__metadata__"]["format"], "pt");
  EXPECT_EQ(j["w"]["dtype"], "F32");
  EXPECT_EQ(j["w"]["shape"], nlohmann::json({3}));
  EXPECT_EQ(j["w"]["data_offsets"], nlohmann::json({0, 12}));
  EXPECT_EQ(j["i"]["dtype"], "I64");
  EXPECT_EQ(j["i"]["data_offsets"], nlohmann::json({12, 20}));
  EXPECT_EQ(bytes.size(), 8 + n + 20);
  EXPECT_EQ(std::memcmp(bytes.data() + 8 + n, w.data_ptr(), 12), 0);
}

// A file with the given header text and `data` bytes.
std::string write_raw(const std::string& dir, const std::string& header, size_t data,
                      uint64_t length_field = 0) {
  std::string path = dir + "/raw.safetensors";
  uint64_t n = length_field ? length_field : header.size();
  std::string bytes(8, '\0');
  std::memcpy(bytes.data(), &n, 8);
  test::spit(path, bytes + header + std::string(data, '\0'));
  return path;
}

TEST(Safetensors, MalformedFilesAreErrorsNamingTheProblem) {
  TempDir dir;
  const std::string d = dir.path();
  test::spit(d + "/short", "abc");
  EXPECT_ERROR_HAS(read_safetensors(d + "/short"), "3 bytes is too short");
  EXPECT_ERROR_HAS(read_safetensors(write_raw(d, "{}", 0, 1u << 30)),
                   "header length 1073741824 does not fit");
  EXPECT_ERROR_HAS(read_safetensors(write_raw(d, "{\"a\":", 0)), "the header is not valid JSON");
  EXPECT_ERROR_HAS(read_safetensors(write_raw(d, "[1]", 0)), "the header is not a JSON object");
  EXPECT_ERROR_HAS(
      read_safetensors(write_raw(d, R"({"a":{"dtype":"Q8","shape":[1],"data_offsets":[0,1]}})", 1)),
      "tensor \"a\": unsupported safetensors dtype \"Q8\"");
  EXPECT_ERROR_HAS(
      read_safetensors(write_raw(d, R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", 4)),
      "do not hold 2 elements of F32");
  EXPECT_ERROR_HAS(
      read_safetensors(write_raw(d, R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 2)),
      "inside 2 data bytes");
  EXPECT_ERROR_HAS(
      read_safetensors(write_raw(d, R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4)),
      "bad shape");
  EXPECT_ERROR_HAS(read_safetensors(write_raw(d,
                                              R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},)"
                                              R"("b":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}})",
                                              3)),
                   "starts at byte 1, expected 2 (overlap or gap)");
  EXPECT_ERROR_HAS(
      read_safetensors(write_raw(d, R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})", 5)),
      "3 bytes after the last tensor are not described");
  EXPECT_ERROR_HAS(read_safetensors(write_raw(d, R"({"__metadata__":{"k":1}})", 0)),
                   "__metadata__.k is not a string");
  EXPECT_ERROR_HAS(read_safetensors(write_raw(d, R"({"a":{"dtype":"U8","shape":[1]}})", 1)), "tensor \"a\":");
}

TEST(Safetensors, WriterRejectsWhatTheFormatCannotHold) {
  TempDir dir;
  EXPECT_ERROR_HAS(write_safetensors(dir.path() + "/x", {{"a", at::zeros({2}, at::kComplexFloat)}}),
                   "safetensors has no dtype for ComplexFloat");
  EXPECT_ERROR_HAS(write_safetensors(dir.path() + "/x", {{"a", at::zeros({2})}, {"a", at::zeros({2})}}),
                   "tensor name \"a\" is empty, reserved or repeated");
  EXPECT_FALSE(file_size(dir.path() + "/x"));
}

}  // namespace
}  // namespace ds::ckpt
