// EXPECT_ERROR(statement, ErrorType, "needle", ...): the statement throws ErrorType and its message
// contains every needle (SCOPED_TRACE names the caller's statement when one is missing).
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <initializer_list>
#include <string>

namespace pipeswap::test_support {

template <typename E>
void expect_error(const std::function<void()>& f, std::initializer_list<std::string> needles) {
  try {
    f();
    ADD_FAILURE() << "no exception thrown; expected one containing '" << *needles.begin() << "'";
  } catch (const E& e) {
    for (const std::string& needle : needles) EXPECT_PRED_FORMAT2(::testing::IsSubstring, needle, e.what());
  }
}

}  // namespace pipeswap::test_support

#define EXPECT_ERROR(stmt, Type, ...)                                          \
  do {                                                                         \
    SCOPED_TRACE(#stmt);                                                       \
    ::pipeswap::test_support::expect_error<Type>([&] { stmt; }, {__VA_ARGS__}); \
  } while (0)
