// Argument errors. std::invalid_argument becomes a Python ValueError through
// pybind11, so a message thrown here reaches the user as-is.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace wsss {

template <class... Parts>
std::string concat(const Parts&... parts) {
  std::ostringstream out;
  (out << ... << parts);
  return out.str();
}

}  // namespace wsss

// WSSS_CHECK(cond, "scores must be 2-D, got ", ndim, "-D")
#define WSSS_CHECK(cond, ...)                                    \
  do {                                                           \
    if (!(cond)) throw std::invalid_argument(::wsss::concat(__VA_ARGS__)); \
  } while (0)
