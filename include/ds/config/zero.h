// The `zero_optimization` and `aio` sections of a ds_config.json, as typed structs.
//
// Member names are the JSON key names, defaults are those of DeepSpeed's code
// (deepspeed/runtime/zero/config.py, zero/offload_config.py, swap_tensor/constants.py).
//
//   const ds::ZeroConfig& z = config.zero_optimization;
//   if (z.stage == 3 && z.offload_param.device == ds::OffloadDevice::kNvme)
//   open_swap(*z.offload_param.nvme_path);
#pragma once

#include <cstdint>
#include <limits>
#include <optional>
#include <string>

namespace ds {

enum class OffloadDevice { kNone, kCpu, kNvme };
const char* offload_device_name(OffloadDevice device);  // "none", "cpu", "nvme"

// zero_optimization.offload_param (stage 3 only).
struct OffloadParamConfig {
  OffloadDevice device = OffloadDevice::kNone;
  std::optional<std::string> nvme_path;  // required for device nvme
  int64_t buffer_count = 5;
  int64_t buffer_size = 100000000;  // 1e8 elements
  int64_t max_in_cpu = 1000000000;  // 1e9 elements
  bool pin_memory = false;
};

// zero_optimization.offload_optimizer (stages 1-3).
struct OffloadOptimizerConfig {
  OffloadDevice device = OffloadDevice::kNone;
  std::optional<std::string> nvme_path;  // required for device nvme
  int64_t buffer_count = 4;
  bool pin_memory = false;
  bool pipeline_read = false;
  bool pipeline_write = false;
  bool fast_init = false;
  double ratio = 1.0;  // fraction of optimizer states offloaded; < 1 needs stage 3
};

struct ZeroConfig {
  int64_t stage = 0;
  bool contiguous_gradients = true;
  bool reduce_scatter = true;
  int64_t reduce_bucket_size = 500000000;  // 5e8 elements
  bool allgather_partitions = true;
  int64_t allgather_bucket_size = 500000000;  // 5e8 elements
  bool overlap_comm = false;  // when not given: true for stage 3, false otherwise (DeepSpeed's rule)
  bool load_from_fp32_weights = true;
  bool elastic_checkpoint = false;
  bool ignore_unused_parameters = true;
  bool round_robin_gradients = false;
  OffloadParamConfig offload_param;
  OffloadOptimizerConfig offload_optimizer;
  int64_t sub_group_size = 1000000000;                  // 1e9 elements
  int64_t stage3_prefetch_bucket_size = 50000000;       // 5e7 (alias: prefetch_bucket_size)
  int64_t stage3_param_persistence_threshold = 100000;  // 1e5 (alias: param_persistence_threshold)
  int64_t stage3_model_persistence_threshold = std::numeric_limits<int64_t>::max();  // sys.maxsize
  int64_t stage3_max_live_parameters = 1000000000;  // 1e9 (alias: max_live_parameters)
  int64_t stage3_max_reuse_distance = 1000000000;   // 1e9 (alias: max_reuse_distance)
  // Aliases: gather_16bit_weights_on_model_save; deprecated stage3_gather_fp16_weights_on_model_save.
  bool stage3_gather_16bit_weights_on_model_save = false;
  // ZeRO++: stage 3's weight gathers as int8 blocks (qwZ), a secondary copy of the weights
  // over this many data-parallel ranks (hpZ, the ranks of a node), gradients reduce-scattered
  // as int8 blocks (qgZ, stages 1-3).
  int64_t zero_hpz_partition_size = 1;
  bool zero_quantized_weights = false;
  bool zero_quantized_gradients = false;
};

// The `aio` section: asynchronous NVMe I/O used by ZeRO-Infinity swapping.
struct AioConfig {
  int64_t block_size = 1048576;
  int64_t queue_depth = 8;
  int64_t intra_op_parallelism = 1;  // older name: thread_count
  bool single_submit = false;
  bool overlap_events = true;
};

}  // namespace ds
