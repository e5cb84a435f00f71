// Gloo backend: c10d's TCPStore for the rendezvous and c10d's ProcessGroupGloo as the
// point-to-point transport under our own ring collectives (c10d's Gloo in LibTorch 1.13
// has no reduce-scatter and no bf16 all-reduce).
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/HashStore.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <atomic>
#include <future>
#include <map>
#include <thread>

#include "ds/common/error.h"
#include "queued.h"
#include "ring.h"

namespace ds::comm {
namespace {

// The local address whose route reaches `host` (no packet is sent: a UDP connect only
// picks the route). Loopback hosts give 127.0.0.1.
std::string local_address_towards(const std::string& host) {
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_DGRAM;
  addrinfo* res = nullptr;
  if (getaddrinfo(host.c_str(), "9", &hints, &res) != 0 || !res)
    throw CommError(ds::str("cannot resolve MASTER_ADDR '", host, "'"));
  int fd = ::socket(AF_INET, SOCK_DGRAM, 0);
  std::string out;
  if (fd >= 0 && ::connect(fd, res->ai_addr, res->ai_addrlen) == 0) {
    sockaddr_in local{};
    socklen_t len = sizeof local;
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) == 0) {
      char buf[INET_ADDRSTRLEN];
      if (inet_ntop(AF_INET, &local.sin_addr, buf, sizeof buf)) out = buf;
    }
  }
  if (fd >= 0) ::close(fd);
  freeaddrinfo(res);
  if (out.empty()) throw CommError(ds::str("no route from this host to MASTER_ADDR '", host, "'"));
  return out;
}

std::string rank_list(const std::vector<int>& ranks);

std::string first_line(const std::exception& e) {
  std::string s = e.what();
  return s.substr(0, s.find('\n'));
}

bool has(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

// A send's or receive's failure as a ds error. Gloo closes every connection of a rank whose
// wait timed out (or that exited), so its peers see a closed connection before their own
// timeout: name that rank (`peer`, its world rank), whose error names the cause.
[[noreturn]] void rethrow_p2p(const std::exception& e, int peer, Millis timeout) {
  std::string msg = first_line(e);
  if (has(msg, "imed out") || has(msg, "imeout"))
    throw TimeoutError(ds::str("timed out after ", timeout.count() / 1000.0, " s: ", msg));
  if (has(msg, "losed by peer") || has(msg, "reset by peer") || has(msg, "roken pipe"))
    throw CommError(ds::str(msg, " (rank ", peer,
                            " closed the connection: it failed, exited or timed out first, and its own error names why)"));
  throw CommError(msg);
}

// One send or receive with one peer.
class C10dPending : public PendingOp {
 public:
  C10dPending(c10::intrusive_ptr<c10d::Work> work, int peer) : work_(std::move(work)), peer_(peer) {}
  void wait(Millis timeout) override {
    try {
      work_->wait(timeout);
    } catch (const std::exception& e) {
      rethrow_p2p(e, peer_, timeout);
    }
  }

 private:
  c10::intrusive_ptr<c10d::Work> work_;
  int peer_;
};

class GlooTransport : public Transport {
 public:
  GlooTransport(c10::intrusive_ptr<c10d::ProcessGroupGloo> pg, std::vector<int> global_ranks)
      : pg_(std::move(pg)), global_ranks_(std::move(global_ranks)) {}
  int rank() const override { return pg_->getRank(); }
  int size() const override { return pg_->getSize(); }
  // Gloo may fail at issue already (the peer's connection is closed): the same errors as a wait's.
  std::unique_ptr<PendingOp> isend(const at::Tensor& buffer, int peer, uint32_t tag) override {
    std::vector<at::Tensor> v{buffer};
    try {
      return std::make_unique<C10dPending>(pg_->send(v, peer, static_cast<int>(tag)), global_ranks_[size_t(peer)]);
    } catch (const std::exception& e) {
      rethrow_p2p(e, global_ranks_[size_t(peer)], pg_->getOptions()->timeout);
    }
  }
  std::unique_ptr<PendingOp> irecv(const at::Tensor& buffer, int peer, uint32_t tag) override {
    std::vector<at::Tensor> v{buffer};
    try {
      return std::make_unique<C10dPending>(pg_->recv(v, peer, static_cast<int>(tag)), global_ranks_[size_t(peer)]);
    } catch (const std::exception& e) {
      rethrow_p2p(e, global_ranks_[size_t(peer)], pg_->getOptions()->timeout);
    }
  }

 private:
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg_;
  std::vector<int> global_ranks_;
};

// Tags below 2^24 belong to the user's send/recv; collectives use the space above.
constexpr uint32_t kCollectiveTagBase = 1u << 24;

class GlooCommunicator final : public QueuedCommunicator {
 public:
  // global_ranks[i]: the world rank of this communicator's rank i (for messages).
  GlooCommunicator(c10::intrusive_ptr<c10d::Store> store, std::shared_ptr<::gloo::transport::Device> device,
                   int rank, int size, CommOptions options, std::shared_ptr<CommsLogger> logger,
                   std::vector<int> global_ranks = {})
      : QueuedCommunicator(rank, size, options, std::move(logger)), store_(std::move(store)), device_(std::move(device)),
        global_ranks_(std::move(global_ranks)) {
    if (global_ranks_.empty())
      for (int r = 0; r < size; ++r) global_ranks_.push_back(r);
    auto pg_options = c10d::ProcessGroupGloo::Options::create(options.timeout);
    pg_options->devices.push_back(device_);
    pg_options->threads = 2;
    try {
      pg_ = c10::make_intrusive<c10d::ProcessGroupGloo>(store_, rank, size, pg_options);
    } catch (const std::exception& e) {
      throw CommError(ds::str("rank ", rank, " of ", size, ": could not connect to its peers: ", first_line(e)));
    }
    transport_ = std::make_unique<GlooTransport>(pg_, global_ranks_);
  }
  ~GlooCommunicator() override { stop_worker(); }

  std::string backend() const override { return "gloo"; }

  std::shared_ptr<Communicator> new_group(const std::vector<int>& ranks, const std::string& name) override {
    int group_rank = validate_group(ranks, name);
    std::vector<int> global;
    for (int r : ranks) global.push_back(global_ranks_[size_t(r)]);
    if (ranks.size() == 1)  // nothing to meet: a private store, no traffic
      return std::make_shared<GlooCommunicator>(c10::make_intrusive<c10d::HashStore>(), device_, 0, 1, options(),
                                                logger_ptr(), global);
    // The members of a group call this the same number of times with its name and members:
    // the count keeps a second group of the same name and members (a second engine) apart from
    // the first. The members are part of the key: groups of one name with other members (a
    // second layout in the same processes) are counted apart, so every member agrees.
    uint64_t members = 1469598103934665603ull;  // FNV-1a over the global ranks
    for (int r : global) members = (members ^ uint64_t(uint32_t(r))) * 1099511628211ull;
    const std::string key = ds::str(name, "/", ranks.size(), "-", members);
    const int seq = groups_made_[key]++;
    auto prefixed = c10::make_intrusive<c10d::PrefixStore>(ds::str("ds/group/", key, "/", seq), store_);
    return std::make_shared<GlooCommunicator>(prefixed, device_, group_rank, static_cast<int>(ranks.size()),
                                              options(), logger_ptr(), global);
  }

 protected:
  int64_t run_all_reduce(at::Tensor& buffer, ReduceOp op) override {
    return ring_all_reduce(*transport_, buffer, op, ring_options());
  }
  int64_t run_reduce_scatter(at::Tensor& output, const at::Tensor& input, ReduceOp op) override {
    return ring_reduce_scatter(*transport_, output, input, op, ring_options());
  }
  int64_t run_all_gather(at::Tensor& output, const at::Tensor& input) override {
    return ring_all_gather(*transport_, output, input, ring_options());
  }
  int64_t run_broadcast(at::Tensor& buffer, int root) override {
    return tree_broadcast(*transport_, buffer, root, ring_options());
  }
  int64_t run_all_to_all(at::Tensor& output, const at::Tensor& input, const std::vector<int64_t>& output_splits,
                         const std::vector<int64_t>& input_splits) override {
    return pairwise_all_to_all(*transport_, output, input, output_splits, input_splits, ring_options());
  }
  int64_t run_barrier() override {
    at::Tensor token = at::zeros({1}, at::kInt);
    return ring_all_reduce(*transport_, token, ReduceOp::Sum, ring_options());
  }
  Waiter start_send(const at::Tensor& buffer, int dst, int tag) override {
    auto op = transport_->isend(buffer.view(-1).view(at::kByte), dst, static_cast<uint32_t>(tag));
    return [op = std::shared_ptr<PendingOp>(std::move(op))](Millis t) { op->wait(t); };
  }
  Waiter start_recv(at::Tensor& buffer, int src, int tag) override {
    auto op = transport_->irecv(buffer.view(-1).view(at::kByte), src, static_cast<uint32_t>(tag));
    return [op = std::shared_ptr<PendingOp>(std::move(op))](Millis t) { op->wait(t); };
  }

 protected:
  // Every rank that times out in the same collective posts its rank in the store; a stopped or
  // hung rank posts nothing. On a detached thread: when the stopped rank is the one serving
  // the store, the store does not answer either, and the answer is that.
  std::string diagnose_timeout() override {
    if (size() == 1) return "";
    constexpr auto kWait = std::chrono::seconds(10);
    auto answer = std::make_shared<std::promise<std::string>>();
    std::future<std::string> future = answer->get_future();
    std::thread([store = store_, key = failure_key(), me = rank(), global = global_ranks_, answer, kWait] {
      try {
        store->set(key + std::to_string(me), std::vector<uint8_t>{1});
        const auto deadline = std::chrono::steady_clock::now() + kWait;
        std::vector<int> missing;
        do {
          missing.clear();
          for (size_t r = 0; r < global.size(); ++r)
            if (!store->check({key + std::to_string(r)})) missing.push_back(global[r]);
          if (missing.empty()) break;
          std::this_thread::sleep_for(std::chrono::milliseconds(100));
        } while (std::chrono::steady_clock::now() < deadline);
        answer->set_value(missing.empty()
                              ? std::string("every rank reached this collective and waited (a lost connection?)")
                              : ds::str(missing.size() > 1 ? "ranks " : "rank ", rank_list(missing),
                                        " did not answer (stopped, hung, or its host unreachable)"));
      } catch (const std::exception& e) {
        answer->set_value(ds::str("the rendezvous store on rank 0 does not answer either (", first_line(e),
                                  "): rank 0 is stopped or gone, or this host is cut off from it"));
      }
    }).detach();
    if (future.wait_for(kWait + std::chrono::seconds(5)) == std::future_status::ready) return future.get();
    return "the rendezvous store on rank 0 does not answer either: rank 0 is stopped or hung, or this host is cut off "
           "from it";
  }

  void announce_failure() override {
    if (size() == 1) return;
    auto posted = std::make_shared<std::promise<void>>();
    std::future<void> done = posted->get_future();
    std::thread([store = store_, key = failure_key() + std::to_string(rank()), posted] {
      try {
        store->set(key, std::vector<uint8_t>{1});
      } catch (const std::exception&) {  // the store is gone too: nobody is diagnosing
      }
      posted->set_value();
    }).detach();
    done.wait_for(std::chrono::seconds(1));
  }

 private:
  // Where the ranks that failed in the current collective post their rank (every rank's
  // collective_seq_ is the same there).
  std::string failure_key() const { return ds::str("ds/timeout/", collective_seq_, "/"); }

  // Each collective gets a fresh block of tags (it runs on the single worker thread).
  RingOptions ring_options() {
    RingOptions o;
    o.timeout = options().timeout;
    o.tag_base = kCollectiveTagBase + (collective_seq_++ % 64u) * (1u << 20);
    return o;
  }
  int validate_group(const std::vector<int>& ranks, const std::string& name) const {
    if (ranks.empty()) throw CommError(ds::str("new_group '", name, "': empty rank list"));
    int me = -1;
    for (size_t i = 0; i < ranks.size(); ++i) {
      if (ranks[i] < 0 || ranks[i] >= size()) throw CommError(ds::str("new_group '", name, "': rank ", ranks[i], " is not in a world of ", size()));
      if (i > 0 && ranks[i] <= ranks[i - 1]) throw CommError(ds::str("new_group '", name, "': ranks must be sorted and distinct"));
      if (ranks[i] == rank()) me = static_cast<int>(i);
    }
    if (me < 0) throw CommError(ds::str("new_group '", name, "': rank ", rank(), " called it but is not a member"));
    return me;
  }

  c10::intrusive_ptr<c10d::Store> store_;
  std::shared_ptr<::gloo::transport::Device> device_;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg_;
  std::unique_ptr<GlooTransport> transport_;
  uint32_t collective_seq_ = 0;
  std::map<std::string, int> groups_made_;
  std::vector<int> global_ranks_;
};

std::string rank_list(const std::vector<int>& ranks) {
  std::string list;
  for (size_t i = 0; i < ranks.size() && i < 16; ++i) list += (i ? ", " : "") + std::to_string(ranks[i]);
  if (ranks.size() > 16) list += ", ...";
  return list;
}

// Every rank announces itself in the store, then waits for all others; on a timeout the
// error names the ranks that never arrived. Rank 0 serves the store, so it waits a little
// longer than the others: they time out first, with the full list, instead of losing the
// store under their feet.
void wait_for_all_ranks(c10d::Store& store, int rank, int world, Millis timeout) {
  store.set("ds/arrived/" + std::to_string(rank), std::vector<uint8_t>{1});
  auto deadline = std::chrono::steady_clock::now() + timeout + (rank == 0 ? std::chrono::seconds(2) : std::chrono::seconds(0));
  std::vector<int> missing;
  while (true) {
    missing.clear();
    try {
      for (int r = 0; r < world; ++r)
        if (!store.check({"ds/arrived/" + std::to_string(r)})) missing.push_back(r);
    } catch (const std::exception& e) {
      throw CommError(ds::str("rank ", rank, " lost the rendezvous store served by rank 0 (", first_line(e),
                              "): did rank 0 exit? Ranks not yet seen: ", missing.empty() ? std::string("unknown") : rank_list(missing)));
    }
    if (missing.empty()) return;
    if (std::chrono::steady_clock::now() >= deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  throw TimeoutError(ds::str("rendezvous timed out after ", timeout.count() / 1000.0, " s on rank ", rank, ": ",
                             missing.size(), " of ", world, " ranks never arrived (rank", missing.size() > 1 ? "s " : " ",
                             rank_list(missing), "); were they started with the same MASTER_ADDR/MASTER_PORT?"));
}

}  // namespace

std::shared_ptr<Communicator> make_gloo(const GlooOptions& o) {
  if (o.world_size < 1) throw CommError(ds::str("WORLD_SIZE must be >= 1, got ", o.world_size));
  if (o.rank < 0 || o.rank >= o.world_size) throw CommError(ds::str("RANK ", o.rank, " is not in [0, ", o.world_size, ")"));
  if (o.master_port < 1 || o.master_port > 65535) throw CommError(ds::str("MASTER_PORT ", o.master_port, " is not a valid port"));
  if (o.world_size == 1) {  // nothing to meet: no port, no store server
    auto device = c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1");
    return std::make_shared<GlooCommunicator>(c10::make_intrusive<c10d::HashStore>(), device, 0, 1, o,
                                              std::make_shared<CommsLogger>());
  }
  c10d::TCPStoreOptions so;
  so.port = static_cast<uint16_t>(o.master_port);
  so.isServer = (o.rank == 0);
  so.numWorkers = o.world_size;
  so.waitWorkers = false;  // we wait ourselves, to name who is missing
  so.timeout = o.timeout;
  c10::intrusive_ptr<c10d::Store> store;
  try {
    store = c10::make_intrusive<c10d::TCPStore>(o.master_addr, so);
  } catch (const std::exception& e) {
    if (o.rank == 0)
      throw CommError(ds::str("rank 0 could not serve the rendezvous on ", o.master_addr, ":", o.master_port, ": ",
                          first_line(e), " (port in use? pick another MASTER_PORT)"));
    throw CommError(ds::str("rank ", o.rank, " could not reach the rendezvous at ", o.master_addr, ":", o.master_port,
                        " within ", o.timeout.count() / 1000.0, " s: ", first_line(e), " (is rank 0 running?)"));
  }
  wait_for_all_ranks(*store, o.rank, o.world_size, o.timeout);
  std::shared_ptr<::gloo::transport::Device> device;
  try {
    device = o.interface.empty()
                 ? c10d::ProcessGroupGloo::createDeviceForHostname(local_address_towards(o.master_addr))
                 : c10d::ProcessGroupGloo::createDeviceForInterface(o.interface);
  } catch (const CommError&) {
    throw;
  } catch (const std::exception& e) {
    throw CommError(ds::str("cannot open a Gloo device", o.interface.empty() ? "" : " on interface " + o.interface, ": ", first_line(e)));
  }
  return std::make_shared<GlooCommunicator>(store, device, o.rank, o.world_size, o, std::make_shared<CommsLogger>());
}

}  // namespace ds::comm
