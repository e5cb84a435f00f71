#include "ds/launch/net.h"

#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <memory>

#include "ds/common/error.h"
#include "ds/launch/process.h"

namespace ds::launch {

namespace {

struct AddrInfoDeleter {
  void operator()(addrinfo* ai) const { ::freeaddrinfo(ai); }
};
using AddrInfoPtr = std::unique_ptr<addrinfo, AddrInfoDeleter>;

// Resolves addr:port for a TCP bind; nullptr when it does not resolve.
AddrInfoPtr resolve(const std::string& addr, int port) {
  addrinfo hints;
  std::memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (::getaddrinfo(addr.c_str(), std::to_string(port).c_str(), &hints, &res) != 0) return nullptr;
  return AddrInfoPtr(res);
}

// bind() on the first resolved address; returns 0 or the errno. `bound_port` receives the port,
// `keep` the bound socket.
int try_bind(const std::string& addr, int port, int* bound_port, UniqueFd* keep = nullptr) {
  AddrInfoPtr ai = resolve(addr, port);
  if (!ai) return EADDRNOTAVAIL;
  UniqueFd fd(::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol));
  if (!fd.valid()) return errno;
  int one = 1;
  DS_CHECK_SYS(::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one), "setsockopt SO_REUSEADDR");
  if (::bind(fd.get(), ai->ai_addr, ai->ai_addrlen) != 0) return errno;
  if (bound_port) {
    sockaddr_storage ss;
    socklen_t len = sizeof ss;
    DS_CHECK_SYS(::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&ss), &len), "getsockname");
    *bound_port = ss.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port)
                                           : ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  }
  if (keep) *keep = std::move(fd);
  return 0;
}

}  // namespace

PortState probe_port(const std::string& addr, int port) {
  DS_CHECK(port > 0 && port < 65536, "port ", port, " is outside 1..65535");
  int err = try_bind(addr, port, nullptr);
  if (err == 0) return PortState::kFree;
  if (err == EADDRINUSE) return PortState::kInUse;
  if (err == EACCES) return PortState::kDenied;
  return PortState::kNotLocal;
}

PortReservation reserve_free_port(const std::string& addr) {
  int port = 0;
  UniqueFd fd;
  int err = try_bind(addr, 0, &port, &fd);
  if (err != 0) throw SystemError(str("cannot choose a free port on '", addr, "': ", std::strerror(err)));
  return PortReservation(port, std::move(fd));
}

int pick_free_port(const std::string& addr) { return reserve_free_port(addr).port(); }

}  // namespace ds::launch
