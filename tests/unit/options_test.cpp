// Option values: the boolean forms every option accepts, and what is refused.
#include <catch2/catch.hpp>

#include "options.h"

using fastmalloc::parse_bool;

TEST_CASE("booleans accept 1/0, true/false, yes/no, on/off in any case") {
  for (const char* t : {"1", "true", "TRUE", "yes", "Yes", "on", "ON"}) {
    bool v = false;
    INFO(t);
    REQUIRE(parse_bool(t, &v));
    REQUIRE(v);
  }
  for (const char* f : {"0", "false", "False", "no", "NO", "off", "Off"}) {
    bool v = true;
    INFO(f);
    REQUIRE(parse_bool(f, &v));
    REQUIRE_FALSE(v);
  }
}

TEST_CASE("booleans refuse anything else and leave the value alone") {
  for (const char* bad : {"", "2", "tru", "yess", "o", "enable", " 1", "1 "}) {
    bool v = true;
    INFO(bad);
    REQUIRE_FALSE(parse_bool(bad, &v));
    REQUIRE(v);
  }
}
