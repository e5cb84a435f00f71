#include "ds/comm/work.h"

#include "ds/common/error.h"

namespace ds::comm {

Work::State::State(std::string description, Millis timeout)
    : description_(std::move(description)), timeout_(timeout) {}

Work::State::State(std::string description, Millis timeout, std::function<void(Millis)> waiter,
                   std::function<bool()> poller)
    : waiter_(std::move(waiter)), poller_(std::move(poller)), description_(std::move(description)), timeout_(timeout) {}

void Work::State::complete(std::exception_ptr error) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (done_) return;
    done_ = true;
    error_ = std::move(error);
  }
  cv_.notify_all();
}

bool Work::State::wait_for(Millis timeout) {
  if (waiter_) {
    std::lock_guard<std::mutex> once(waiter_mu_);
    if (!done()) {
      try {
        waiter_(timeout);
        complete();
      } catch (const TimeoutError&) {
        return false;
      } catch (...) {
        complete(std::current_exception());
      }
    }
  }
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_for(lock, timeout, [&] { return done_; });
}

bool Work::State::done() const {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (done_ || !poller_) return done_;
  }
  return poller_();
}

std::exception_ptr Work::State::error() const {
  std::lock_guard<std::mutex> lock(mu_);
  return error_;
}

void Work::wait() const {
  if (state_) wait(state_->timeout());
}

void Work::wait(Millis timeout) const {
  if (!state_) return;
  if (!state_->wait_for(timeout)) {
    throw TimeoutError(ds::str(state_->description(), " did not finish within ", timeout.count() / 1000.0,
                           " s (a peer may be stuck or gone; raise DS_COMM_TIMEOUT if it is just slow)"));
  }
  if (auto error = state_->error()) std::rethrow_exception(error);
}

bool Work::is_completed() const { return !state_ || state_->done(); }

std::exception_ptr Work::exception() const { return state_ ? state_->error() : nullptr; }

Work Work::failed(std::exception_ptr error, std::string description) {
  auto state = std::make_shared<State>(std::move(description), Millis(0));
  state->complete(std::move(error));
  return Work(std::move(state));
}

}  // namespace ds::comm
