#include "gateway/topic_tree.h"

#include <algorithm>

namespace gateway {
namespace {

// Lets the children map be searched with a string_view level, without a string per lookup.
struct LevelHash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

}  // namespace

struct TopicTree::Node {
  std::unordered_map<std::string, std::unique_ptr<Node>, LevelHash, std::equal_to<>> children;
  std::unique_ptr<Node> plus;          // the '+' level
  std::vector<std::int64_t> ids;       // filters ending here
  std::vector<std::int64_t> hash_ids;  // filters ending here with "/#" (or "#" at the root)
};

TopicTree::TopicTree() : root_(std::make_unique<Node>()) {}
TopicTree::~TopicTree() = default;
TopicTree::TopicTree(TopicTree&&) noexcept = default;
TopicTree& TopicTree::operator=(TopicTree&&) noexcept = default;

void TopicTree::insert(std::string_view filter, std::int64_t id) {
  Node* node = root_.get();
  for (std::size_t begin = 0;;) {
    const std::size_t end = std::min(filter.find('/', begin), filter.size());
    const std::string_view level = filter.substr(begin, end - begin);
    if (level == "#") {
      node->hash_ids.push_back(id);
      return;
    }
    std::unique_ptr<Node>* next;
    if (level == "+") {
      next = &node->plus;
    } else {
      auto it = node->children.find(level);
      if (it == node->children.end()) it = node->children.emplace(level, nullptr).first;
      next = &it->second;
    }
    if (!*next) *next = std::make_unique<Node>();
    node = next->get();
    if (end == filter.size()) {
      node->ids.push_back(id);
      return;
    }
    begin = end + 1;
  }
}

void TopicTree::walk(const Node& node, std::string_view topic, std::size_t begin, bool first,
                     std::vector<std::int64_t>& out) const {
  // MQTT 4.7.2: a topic starting with '$' is not matched by a wildcard in the first level.
  const bool wildcards = !(first && topic.front() == '$');
  if (wildcards) out.insert(out.end(), node.hash_ids.begin(), node.hash_ids.end());
  const std::size_t end = std::min(topic.find('/', begin), topic.size());
  const std::string_view level = topic.substr(begin, end - begin);
  const bool last = end == topic.size();
  const auto descend = [&](const Node& child) {
    if (last) {
      out.insert(out.end(), child.ids.begin(), child.ids.end());
      // "a/#" matches its parent "a" too.
      out.insert(out.end(), child.hash_ids.begin(), child.hash_ids.end());
    } else {
      walk(child, topic, end + 1, false, out);
    }
  };
  if (auto it = node.children.find(level); it != node.children.end()) descend(*it->second);
  if (wildcards && node.plus) descend(*node.plus);
}

void TopicTree::match(std::string_view topic, std::vector<std::int64_t>& out) const {
  out.clear();
  if (topic.empty() || topic.find_first_of("+#") != std::string_view::npos) return;
  walk(*root_, topic, 0, true, out);
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
}

}  // namespace gateway
