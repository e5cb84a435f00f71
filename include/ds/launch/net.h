// The master port: choosing a free one, and checking a given one before starting any rank.
//
//   ds::launch::PortReservation port = ds::launch::reserve_free_port("127.0.0.1");
//   ... start the ranks with MASTER_PORT=port.port(), keep `port` until they are done ...
//   switch (ds::launch::probe_port("127.0.0.1", 29500)) {  // kFree, kInUse, kDenied, kNotLocal
//     ...
//   }
// A reservation keeps the chosen port's socket bound (with SO_REUSEADDR) but not listening: the
// kernel gives the port to no other process, while rank 0's TCPStore, which binds with
// SO_REUSEADDR too, can still listen on it. So nothing can take the port between choosing it
// and rank 0 binding it (torchrun's window; pick_free_port alone still has it).
#pragma once

#include <string>

#include "ds/launch/process.h"

namespace ds::launch {

enum class PortState {
  kFree,      // bind() on addr:port worked
  kInUse,     // EADDRINUSE
  kDenied,    // EACCES: a privileged port (< 1024) and we are not allowed to bind it
  kNotLocal,  // addr is not an address of this host (or does not resolve): cannot tell
};

// Tries to bind addr:port (with SO_REUSEADDR, as c10d's TCPStore does) and closes at once.
PortState probe_port(const std::string& addr, int port);

// A port the kernel considers free on `addr`; throws ds::SystemError when addr is not local.
int pick_free_port(const std::string& addr);

class PortReservation {
 public:
  PortReservation() = default;
  PortReservation(int port, UniqueFd fd) : port_(port), fd_(std::move(fd)) {}
  int port() const { return port_; }

 private:
  int port_ = -1;
  UniqueFd fd_;
};
// A free port on `addr`, held until the reservation is destroyed (see above).
PortReservation reserve_free_port(const std::string& addr);

}  // namespace ds::launch
