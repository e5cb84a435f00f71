#include "ds/comm/agreement.h"

#include <ATen/ATen.h>

#include <unistd.h>

#include <cstring>
#include <fstream>
#include <functional>
#include <sstream>
#include <vector>

#include "ds/common/error.h"

namespace ds::comm {

namespace {

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

std::string quoted(const std::string& line) { return "\"" + line + "\""; }

// Where `mine` differs from `theirs` (rank 0's), as a phrase: the first three differing lines
// (one setting often implies others: a stage's defaults), and how many more there are.
std::string first_difference(const std::string& mine, const std::string& theirs, int me) {
  const auto a = lines_of(mine), b = lines_of(theirs);
  std::string out;
  int shown = 0, more = 0;
  for (size_t i = 0; i < std::max(a.size(), b.size()); ++i) {
    if (i < a.size() && i < b.size() && a[i] == b[i]) continue;
    if (shown == 3) {
      ++more;
      continue;
    }
    const std::string has = i < a.size() ? quoted(a[i]) : "nothing more";
    const std::string where = i < b.size() ? quoted(b[i]) : "nothing more";
    out += shown == 0 ? ds::str("rank ", me, " has ", has, " where rank 0 has ", where) : ds::str("; ", has, " vs ", where);
    ++shown;
  }
  if (more > 0) out += ds::str(" (and ", more, " more)");
  return shown ? out : ds::str("rank ", me, " describes it differently from rank 0");
}

}  // namespace

std::string broadcast_string(Communicator& comm, const std::string& text, int root) {
  at::Tensor length = at::tensor({int64_t(text.size())}, at::kLong);
  comm.broadcast(length, root).wait();
  at::Tensor bytes = at::empty({length.item<int64_t>()}, at::kByte);
  if (comm.rank() == root && !text.empty()) std::memcpy(bytes.data_ptr(), text.data(), text.size());
  comm.broadcast(bytes, root).wait();
  return std::string(static_cast<const char*>(bytes.data_ptr()), size_t(bytes.numel()));
}

void all_or_nothing(Communicator& comm, const std::function<void()>& phase) {
  std::string error;
  try {
    phase();
  } catch (const std::exception& e) {
    error = *e.what() ? e.what() : "unknown error";
  }
  if (comm.size() == 1) {
    if (!error.empty()) throw Error(error);
    return;
  }
  at::Tensor all = at::empty({comm.size()}, at::kLong);
  at::Tensor own = at::tensor({int64_t(error.size())}, at::kLong);
  comm.all_gather(all, own).wait();
  for (int r = 0; r < comm.size(); ++r) {
    if (all[r].item<int64_t>() == 0) continue;
    const std::string message = broadcast_string(comm, error, r);
    throw Error(ds::str("rank ", r, ": ", message.substr(0, message.find('\n'))));
  }
}

bool same_on_every_rank(Communicator& comm, uint64_t value) {
  if (comm.size() == 1) return true;
  const int64_t h = int64_t(value >> 1);  // so that -h cannot overflow
  at::Tensor t = at::tensor({h, -h}, at::kLong);  // max(h) and -min(h)
  comm.all_reduce(t, ReduceOp::Max).wait();
  return t[0].item<int64_t>() == -t[1].item<int64_t>();
}

void check_ranks_agree(Communicator& comm, const std::string& what, const std::string& text) {
  if (comm.size() == 1) return;
  const int64_t hash = int64_t(std::hash<std::string>{}(text));
  at::Tensor all = at::empty({comm.size()}, at::kLong);
  at::Tensor own = at::tensor({hash}, at::kLong);
  comm.all_gather(all, own).wait();
  int differs = -1;
  for (int r = 1; r < comm.size() && differs < 0; ++r)
    if (all[r].item<int64_t>() != all[0].item<int64_t>()) differs = r;
  if (differs < 0) return;
  const std::string reference = broadcast_string(comm, comm.rank() == 0 ? text : "", 0);
  const std::string difference =
      broadcast_string(comm, comm.rank() == differs ? first_difference(text, reference, differs) : "", differs);
  throw Error(ds::str("the ranks disagree on ", what, ": ", difference,
                      "; start every rank with the same program, arguments and config"));
}

std::vector<uint64_t> host_keys(Communicator& comm) {
  char host[256] = {};
  ::gethostname(host, sizeof(host) - 1);
  char netns[128] = {};
  if (::readlink("/proc/self/ns/net", netns, sizeof(netns) - 1) < 0) netns[0] = 0;
  std::string boot;  // machines cloned with one host name still boot apart
  std::ifstream("/proc/sys/kernel/random/boot_id") >> boot;
  const uint64_t mine = uint64_t(std::hash<std::string>{}(std::string(host) + " " + netns + " " + boot));
  at::Tensor all = at::empty({comm.size()}, at::kLong);
  at::Tensor one = at::full({1}, int64_t(mine), at::kLong);
  if (comm.size() == 1) all.copy_(one);
  else comm.all_gather(all, one).wait();
  std::vector<uint64_t> keys;
  for (int r = 0; r < comm.size(); ++r) keys.push_back(uint64_t(all[r].item<int64_t>()));
  return keys;
}

}  // namespace ds::comm
