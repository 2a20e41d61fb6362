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

using fastmalloc::Bytes;
using fastmalloc::Millis;
using fastmalloc::parse_bytes;
using fastmalloc::parse_millis;

TEST_CASE("sizes take digits and an optional K, M or G") {
  struct Case {
    const char* text;
    uint64_t value;
  } cases[] = {{"0", 0},          {"4096", 4096},          {"64k", 64 << 10},
               {"64K", 64 << 10}, {"3M", uint64_t{3} << 20}, {"2g", uint64_t{2} << 30},
               {"17179869183G", uint64_t{17179869183} << 30}};
  for (const Case& c : cases) {
    Bytes v{1};
    INFO(c.text);
    REQUIRE(parse_bytes(c.text, &v));
    REQUIRE(v.value == c.value);
  }
}

TEST_CASE("sizes refuse other suffixes, signs, spaces and overflow, leaving the value alone") {
  for (const char* bad : {"", "K", "-1", "1.5M", "1 M", "1MB", "1T", "12Q", "17179869184G",
                          "99999999999999999999"}) {
    Bytes v{7};
    INFO(bad);
    REQUIRE_FALSE(parse_bytes(bad, &v));
    REQUIRE(v.value == 7);
  }
}

TEST_CASE("durations are milliseconds unless they say s") {
  Millis v{1};
  REQUIRE(parse_millis("250", &v));
  REQUIRE(v.value == 250);
  REQUIRE(parse_millis("250ms", &v));
  REQUIRE(v.value == 250);
  REQUIRE(parse_millis("3s", &v));
  REQUIRE(v.value == 3000);
  REQUIRE(parse_millis("0", &v));
  REQUIRE(v.value == 0);
  for (const char* bad : {"", "s", "1m", "1.5s", "-3", "2 s", "1sec"}) {
    Millis w{9};
    INFO(bad);
    REQUIRE_FALSE(parse_millis(bad, &w));
    REQUIRE(w.value == 9);
  }
}
