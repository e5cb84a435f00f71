// Errors and always-on checks for deepspeed.cpp.
//
// Library code throws; command-line tools catch ds::Error at the top, print its
// one-line message and exit non-zero. Checks are never compiled out (no assert()).
//
//   DS_CHECK(n % world == 0, "buffer of ", n, " elements does not split over ", world, " ranks");
//   DS_CHECK_SYS(::write(fd, p, len), "writing ", path);   // throws with strerror(errno)
//   throw ds::ConfigError(ds::str("zero_optimization.stage: expected 0..3, got ", s));
#pragma once

#include <cerrno>
#include <sstream>
#include <stdexcept>
#include <string>

namespace ds {

// Base of every error deepspeed.cpp throws on purpose.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};
// A ds_config.json (or command-line option) that cannot be honoured.
class ConfigError : public Error {
 public:
  using Error::Error;
};
// A collective or point-to-point operation failed (peer gone, bad arguments, ...).
class CommError : public Error {
 public:
  using Error::Error;
};
// An operation did not finish within its timeout.
class TimeoutError : public CommError {
 public:
  using CommError::CommError;
};
// An operating-system call failed (file, socket, process).
class SystemError : public Error {
 public:
  using Error::Error;
};

// str(a, b, c): concatenates anything that has operator<<. Where c10 types are arguments,
// call it as ds::str(...): c10 has its own str() that argument-dependent lookup would find.
template <typename... Args>
std::string str(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

namespace detail {
[[noreturn]] void check_failed(const char* file, int line, const char* cond, const std::string& msg);
[[noreturn]] void sys_failed(const char* file, int line, int err, const std::string& msg);
}  // namespace detail

}  // namespace ds

// Throws ds::Error("<msg> [check 'cond' failed at file:line]") when cond is false.
#define DS_CHECK(cond, ...)                                                      \
  do {                                                                           \
    if (!(cond)) ::ds::detail::check_failed(__FILE__, __LINE__, #cond, ::ds::str(__VA_ARGS__)); \
  } while (0)

// For POSIX calls that return -1 and set errno: throws ds::SystemError with strerror.
#define DS_CHECK_SYS(expr, ...)                                                   \
  ([&]() {                                                                        \
    auto ds_rc_ = (expr);                                                         \
    if (ds_rc_ == -1) ::ds::detail::sys_failed(__FILE__, __LINE__, errno, ::ds::str(__VA_ARGS__)); \
    return ds_rc_;                                                                \
  }())
