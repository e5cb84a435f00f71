// The master port: choosing a free one, and checking a given one before starting any rank.
//
//   int port = ds::launch::pick_free_port("127.0.0.1");   // bind :0, read it back, close
//   switch (ds::launch::probe_port("127.0.0.1", 29500)) {  // kFree, kInUse, kDenied, kNotLocal
//     ...
//   }
// There is a short window between choosing a port and rank 0 binding it; another process could
// take it then (torchrun has the same window).
#pragma once

#include <string>

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

}  // namespace ds::launch
