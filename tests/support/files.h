// Files for tests: a temporary directory removed with its contents, and a byte flipper for
// corruption tests.
//
//   ds::test::TempDir dir("ds_ckpt");          // /tmp/ds_ckpt.XXXXXX
//   std::string f = dir.write("a.json", "{}");   // dir.file("a.json") == dir / "a.json"
//   ds::test::flip_byte(f, 0);
#pragma once

#include <stdlib.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>

namespace ds::test {

class TempDir {
 public:
  // Under `parent` (default: $TMPDIR or /tmp; O_DIRECT tests pass "/tmp", a disk filesystem).
  explicit TempDir(const std::string& prefix = "ds_test", std::string parent = "") {
    if (parent.empty()) parent = std::filesystem::temp_directory_path().string();
    std::string tmpl = parent + "/" + prefix + ".XXXXXX";
    if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed: " + tmpl);
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }
  std::string operator/(const std::string& name) const { return file(name); }
  // Writes `text` to `name` in the directory and returns its path.
  std::string write(const std::string& name, const std::string& text) const {
    std::ofstream(file(name)) << text;
    return file(name);
  }
  // The whole content of `name` in the directory ("" when it does not exist).
  std::string read(const std::string& name) const {
    std::ifstream in(file(name), std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }

 private:
  std::string path_;
};

// Flips one bit of the byte at `offset` in place.
inline void flip_byte(const std::string& path, int64_t offset) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  if (!f) throw std::runtime_error("cannot open " + path);
  f.seekg(offset);
  char c = 0;
  f.get(c);
  f.seekp(offset);
  f.put(char(c ^ 0x20));
}

}  // namespace ds::test
