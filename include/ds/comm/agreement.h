// Start-up agreement between ranks. Ranks that disagree on the config or the model would
// issue different collectives and die deep inside the transport (or hang until a timeout);
// checking first turns that into one line naming the rank and the first difference.
//
//   ds::comm::check_ranks_agree(*world, "the config", text);   // every rank, its own text
//   // ds::Error on every rank when they differ, e.g.
//   //   the ranks disagree on the config: rank 1 has "/zero_optimization/stage = 3" where rank 0
//   //   has "/zero_optimization/stage = 2"
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "ds/comm/communicator.h"

namespace ds::comm {

// Collective. `text` is this rank's description, one item per line; costs one all-gather of
// a 64-bit hash when the ranks agree. Throws ds::Error (the same message on every rank)
// naming the lowest rank whose text differs from rank 0's and the first line where.
void check_ranks_agree(Communicator& comm, const std::string& what, const std::string& text);

// Runs `phase` on every rank, then every rank learns how it went everywhere: when it threw on
// any rank, it throws ds::Error on every rank with the lowest failing rank's message
// ("rank 2: ..."). For steps that can fail on one rank only (a full disk, a missing file), so
// the others do not fail later with an echo of it ("connection reset by peer").
void all_or_nothing(Communicator& comm, const std::function<void()>& phase);

// Whether every rank passed the same `value` (a hash of what they should agree on):
// collective, one all-reduce of two integers; true on every rank or false on every rank.
bool same_on_every_rank(Communicator& comm, uint64_t value);

// Which ranks share a machine: every rank's host key (a hash of its host name, boot id and
// network namespace, so namespaces on one machine count as hosts), indexed by rank. Collective.
std::vector<uint64_t> host_keys(Communicator& comm);

// Rank `root`'s `text`, on every rank (collective).
std::string broadcast_string(Communicator& comm, const std::string& text, int root);

}  // namespace ds::comm
