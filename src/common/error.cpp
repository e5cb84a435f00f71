#include "ds/common/error.h"

#include <cstring>

namespace ds::detail {

namespace {
const char* basename_of(const char* path) {
  const char* slash = std::strrchr(path, '/');
  return slash ? slash + 1 : path;
}
}  // namespace

void check_failed(const char* file, int line, const char* cond, const std::string& msg) {
  throw Error(str(msg.empty() ? std::string("internal error") : msg, " [check '", cond, "' failed at ",
                  basename_of(file), ":", line, "]"));
}

void sys_failed(const char* file, int line, int err, const std::string& msg) {
  throw SystemError(str(msg, ": ", std::strerror(err), " [", basename_of(file), ":", line, "]"));
}

}  // namespace ds::detail
