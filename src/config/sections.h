// Internal: each group of ds_config.json sections adds its keys to the top-level schema.
// The order of the add_* calls is the order in which sections are read (and warnings appear).
#pragma once

#include "ds/config/config.h"
#include "schema.h"

namespace ds::config_detail {

// train_batch_size, train_micro_batch_size_per_gpu, gradient_accumulation_steps ("auto" allowed).
void add_batch_keys(Schema<Config>& root);
// optimizer, scheduler (optimizer_section.cpp).
void add_optimizer_sections(Schema<Config>& root);
// zero_optimization, aio (zero_section.cpp).
void add_zero_sections(Schema<Config>& root);
// fp16, bf16, activation_checkpointing, monitors, profilers, checkpoint, data_types (misc_sections.cpp).
void add_misc_sections(Schema<Config>& root);
// pipeline, tensor_parallel and DeepSpeed features deepspeed.cpp rejects (parallel_sections.cpp).
void add_parallel_sections(Schema<Config>& root);
void add_unsupported_sections(Schema<Config>& root);
// sparse_attention (sparse_attention_section.cpp).
void add_sparse_attention(Schema<Config>& root);

// Checks that involve several sections, after everything was read.
void check_cross_section(const Config& config, ParseContext& ctx);
void check_sparse_attention(const SparseAttentionConfig& sparse, ParseContext& ctx);

}  // namespace ds::config_detail
