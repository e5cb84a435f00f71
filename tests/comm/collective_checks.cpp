#include "collective_checks.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

namespace ds::test {
namespace {

using comm::ReduceOp;

// Rank r's value at element i: small integers, exact in every dtype even after summing.
at::Tensor pattern(int64_t n, int rank, at::ScalarType dtype) {
  auto i = at::arange(n, at::kLong);
  return ((i % 7) + 1).mul(rank + 1).to(dtype);
}

at::Tensor expected_reduction(int64_t n, int world, ReduceOp op, at::ScalarType dtype) {
  at::Tensor k = (at::arange(n, at::kLong) % 7) + 1;
  switch (op) {
    case ReduceOp::Sum: return k.mul(world * (world + 1) / 2).to(dtype);
    case ReduceOp::Avg: return k.to(at::kDouble).mul((world + 1) / 2.0).to(dtype);
    case ReduceOp::Max: return k.mul(world).to(dtype);
    case ReduceOp::Min: return k.to(dtype);
  }
  return {};
}

std::vector<ReduceOp> ops_for(at::ScalarType dtype) {
  if (at::isFloatingType(dtype)) return {ReduceOp::Sum, ReduceOp::Avg, ReduceOp::Max, ReduceOp::Min};
  return {ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min};
}

std::string what(const comm::Communicator& c, const char* op, at::ScalarType dtype, int64_t n) {
  return std::string(op) + " " + c10::toString(dtype) + " n=" + std::to_string(n) + " rank " +
         std::to_string(c.rank()) + "/" + std::to_string(c.size());
}

}  // namespace

std::vector<int64_t> sweep_sizes(int world) { return {0, 1, 7, 1000 * world + 3}; }
std::vector<at::ScalarType> sweep_dtypes() { return {at::kFloat, at::kBFloat16, at::kHalf, at::kInt}; }

void check_all_reduce(comm::Communicator& c, at::ScalarType dtype, int64_t n) {
  for (ReduceOp op : ops_for(dtype)) {
    at::Tensor t = pattern(n, c.rank(), dtype);
    c.all_reduce(t, op).wait();
    EXPECT_TRUE(at::equal(t, expected_reduction(n, c.size(), op, dtype)))
        << what(c, "all_reduce", dtype, n) << " op " << comm::to_string(op);
  }
}

void check_reduce_scatter(comm::Communicator& c, at::ScalarType dtype, int64_t n) {
  comm::Chunk mine = comm::chunk_of(n, c.size(), c.rank());
  for (ReduceOp op : ops_for(dtype)) {
    at::Tensor in = pattern(n, c.rank(), dtype), before = in.clone();
    at::Tensor out = at::full({mine.length}, 99, dtype);
    c.reduce_scatter(out, in, op).wait();
    at::Tensor want = expected_reduction(n, c.size(), op, dtype).slice(0, mine.offset, mine.offset + mine.length);
    EXPECT_TRUE(at::equal(out, want)) << what(c, "reduce_scatter", dtype, n) << " op " << comm::to_string(op);
    EXPECT_TRUE(at::equal(in, before)) << what(c, "reduce_scatter modified its input", dtype, n);
  }
}

void check_all_gather(comm::Communicator& c, at::ScalarType dtype, int64_t n) {
  // Element i of the result comes from the rank owning chunk i: pattern(owner)[i].
  at::Tensor want = at::empty({n}, dtype);
  for (int r = 0; r < c.size(); ++r) {
    comm::Chunk ch = comm::chunk_of(n, c.size(), r);
    want.slice(0, ch.offset, ch.offset + ch.length).copy_(pattern(n, r, dtype).slice(0, ch.offset, ch.offset + ch.length));
  }
  comm::Chunk mine = comm::chunk_of(n, c.size(), c.rank());
  at::Tensor in = want.slice(0, mine.offset, mine.offset + mine.length).clone();
  at::Tensor out = at::full({n}, -1, dtype);
  c.all_gather(out, in).wait();
  EXPECT_TRUE(at::equal(out, want)) << what(c, "all_gather", dtype, n);
}

void check_broadcast(comm::Communicator& c, at::ScalarType dtype, int64_t n) {
  for (int root : {0, c.size() - 1}) {
    at::Tensor t = pattern(n, c.rank(), dtype);
    c.broadcast(t, root).wait();
    EXPECT_TRUE(at::equal(t, pattern(n, root, dtype))) << what(c, "broadcast", dtype, n) << " root " << root;
  }
}

void check_all_to_all(comm::Communicator& c, at::ScalarType dtype) {
  const int n = c.size(), r = c.rank();
  auto split = [](int from, int to) -> int64_t { return (from + 2 * to) % 3; };  // uneven, some empty
  std::vector<int64_t> in_splits(n), out_splits(n);
  for (int j = 0; j < n; ++j) in_splits[j] = split(r, j), out_splits[j] = split(j, r);
  int64_t in_n = 0, out_n = 0;
  for (int j = 0; j < n; ++j) in_n += in_splits[j], out_n += out_splits[j];
  // The value rank `from` sends to rank `to`: from * 10 + to.
  std::vector<at::Tensor> parts_in, parts_want;
  for (int j = 0; j < n; ++j) {
    parts_in.push_back(at::full({in_splits[j]}, r * 10 + j, dtype));
    parts_want.push_back(at::full({out_splits[j]}, j * 10 + r, dtype));
  }
  at::Tensor in = at::cat(parts_in), want = at::cat(parts_want), out = at::full({out_n}, -1, dtype);
  c.all_to_all(out, in, out_splits, in_splits).wait();
  EXPECT_TRUE(at::equal(out, want)) << what(c, "all_to_all (uneven splits)", dtype, in_n);
  // Equal splits: element k of split j is r*100 + j*10 + k.
  at::Tensor eq_in = at::empty({2 * n}, dtype), eq_out = at::empty({2 * n}, dtype), eq_want = at::empty({2 * n}, dtype);
  for (int j = 0; j < n; ++j)
    for (int k = 0; k < 2; ++k) {
      eq_in[2 * j + k] = r * 10 + j + k * 50;
      eq_want[2 * j + k] = j * 10 + r + k * 50;
    }
  c.all_to_all(eq_out, eq_in).wait();
  EXPECT_TRUE(at::equal(eq_out, eq_want)) << what(c, "all_to_all (equal splits)", dtype, 2 * n);
}

void check_send_recv(comm::Communicator& c, at::ScalarType dtype, int64_t n) {
  if (c.size() < 2) return;
  // A ring exchange: everyone sends to the next rank and receives from the previous one.
  int next = (c.rank() + 1) % c.size(), prev = (c.rank() + c.size() - 1) % c.size();
  at::Tensor out = pattern(n, c.rank(), dtype), in = at::full({n}, -1, dtype);
  auto r = c.recv(in, prev, 5);
  auto s = c.send(out, next, 5);
  s.wait();
  r.wait();
  EXPECT_TRUE(at::equal(in, pattern(n, prev, dtype))) << what(c, "send/recv", dtype, n);
}

void check_logged_volume(comm::Communicator& c, int64_t n) {
  const int N = c.size(), r = c.rank();
  auto len = [&](int rank) { return comm::chunk_of(n, N, rank % N).length; };
  const int64_t esize = 4;
  c.logger().reset();
  at::Tensor buf = pattern(n, r, at::kFloat), out = at::empty({len(r)}, at::kFloat), full = at::empty({n}, at::kFloat);
  c.reduce_scatter(out, buf).wait();
  c.all_gather(full, out).wait();
  c.all_reduce(buf).wait();
  // Ring volumes: reduce-scatter sends every chunk but this rank's own, all-gather every chunk
  // but the next rank's; all-reduce is one of each. On one rank nothing is sent.
  int64_t rs = N > 1 ? (n - len(r)) * esize : 0, ag = N > 1 ? (n - len(r + 1)) * esize : 0;
  EXPECT_EQ(c.logger().total("reduce_scatter").sent_bytes, rs) << "rank " << r << " n=" << n;
  EXPECT_EQ(c.logger().total("all_gather").sent_bytes, ag) << "rank " << r << " n=" << n;
  EXPECT_EQ(c.logger().total("all_reduce").sent_bytes, rs + ag) << "rank " << r << " n=" << n;
  EXPECT_EQ(c.logger().total("reduce_scatter").calls, 1);
  EXPECT_EQ(c.logger().total("all_reduce").message_bytes, n * esize);
  // A true reduce-scatter moves about half of what an all-reduce moves.
  if (N > 1 && n >= 1000) {
    EXPECT_LT(c.logger().total("reduce_scatter").sent_bytes, 0.55 * c.logger().total("all_reduce").sent_bytes);
  }
}

void check_everything(comm::Communicator& c) {
  for (at::ScalarType dtype : sweep_dtypes()) {
    for (int64_t n : sweep_sizes(c.size())) {
      check_all_reduce(c, dtype, n);
      check_reduce_scatter(c, dtype, n);
      check_all_gather(c, dtype, n);
      check_broadcast(c, dtype, n);
      check_send_recv(c, dtype, n);
    }
    check_all_to_all(c, dtype);
  }
  for (int64_t n : sweep_sizes(c.size())) check_logged_volume(c, n);
  c.barrier().wait();
}

}  // namespace ds::test
