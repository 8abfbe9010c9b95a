// Routing by topic levels, the structure of mosquitto's subscription tree: every flow's filter is
// inserted once (per flow reload), and match() walks the topic's levels, following the exact
// level, the '+' branch and the '#' leaf of each node. The cost grows with the topic's levels and
// the wildcards on its path, not with the number of filters. Same semantics as topic_matches()
// (topic_filter.h), including '$' topics and "a/#" matching "a".
//
// Not thread-safe to build; after the last insert(), match() is safe from any number of threads
// (the tree is shared read-only through FlowSnapshot).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace gateway {

class TopicTree {
 public:
  TopicTree();
  ~TopicTree();
  TopicTree(TopicTree&&) noexcept;
  TopicTree& operator=(TopicTree&&) noexcept;

  // Adds `id` under the valid filter `filter` (validate_topic_filter() first).
  void insert(std::string_view filter, std::int64_t id);
  // The ids whose filter matches the topic name `topic`, ascending, each once, in `out` (cleared
  // first). An empty topic or one containing '+' or '#' matches nothing.
  void match(std::string_view topic, std::vector<std::int64_t>& out) const;

 private:
  struct Node;
  void walk(const Node& node, std::string_view topic, std::size_t begin, bool first,
            std::vector<std::int64_t>& out) const;
  std::unique_ptr<Node> root_;
};

}  // namespace gateway
