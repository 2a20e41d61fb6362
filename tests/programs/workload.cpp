// A translation unit for g++ to compile under the library: templates and the standard library
// keep the compiler's allocator busy. Only the object file's bytes matter.
#include <algorithm>
#include <map>
#include <memory>
#include <regex>
#include <string>
#include <unordered_map>
#include <vector>

template <int N>
struct Fib {
  static constexpr long value = Fib<N - 1>::value + Fib<N - 2>::value;
};
template <>
struct Fib<0> {
  static constexpr long value = 0;
};
template <>
struct Fib<1> {
  static constexpr long value = 1;
};

std::map<std::string, std::vector<int>> index_words(const std::vector<std::string>& words) {
  std::map<std::string, std::vector<int>> index;
  for (int i = 0; i < static_cast<int>(words.size()); ++i) index[words[i]].push_back(i);
  return index;
}

long count_matches(const std::string& text) {
  std::regex word("[a-z]+[0-9]*");
  return std::distance(std::sregex_iterator(text.begin(), text.end(), word), std::sregex_iterator());
}

std::unordered_map<int, std::unique_ptr<std::string>> build(int n) {
  std::unordered_map<int, std::unique_ptr<std::string>> m;
  for (int i = 0; i < n; ++i) m.emplace(i, std::make_unique<std::string>(std::to_string(i)));
  return m;
}

long fib80() { return Fib<80>::value; }
