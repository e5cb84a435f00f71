// A .pt file (torch.save's zip + pickle) as the checkpoint reader sees it: unpickled, then
// walked as our model-states and optimizer files are. The unpickler is LibTorch's; what
// matters here is that nothing malformed gets past our checks as anything but a ds::Error.
#include <cstdint>
#include <string>
#include <vector>

#include "../src/ckpt/pickle_io.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::vector<char> bytes(reinterpret_cast<const char*>(data), reinterpret_cast<const char*>(data) + size);
  ds::fuzz::expect_only_ds_errors([&] {
    ds::ckpt::detail::DictReader d(ds::ckpt::detail::unpickle(bytes, "fuzz.pt"), "fuzz.pt");
    if (d.has("module")) d.dict("module").tensors();
    if (d.has("fp32")) d.dict("fp32").tensors();
    if (d.has("format")) d.string("format");
    if (d.has("part")) d.integer("part");
  });
  return 0;
}
