// The small files next to the spool: replaced whole or not at all, and read whole.
#include "gateway/atomic_file.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "gateway/errors.h"

namespace gateway {
namespace {

namespace fs = std::filesystem;

class AtomicFileTest : public ::testing::Test {
 protected:
  AtomicFileTest() {
    std::string pattern = (fs::temp_directory_path() / "gw_atomic_file_XXXXXX").string();
    EXPECT_NE(::mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  ~AtomicFileTest() override { fs::remove_all(dir_); }
  fs::path dir_;
};

TEST_F(AtomicFileTest, ReplacesTheFileWithItsModeAndLeavesNoTemporaryFile) {
  const fs::path path = dir_ / "state.json";
  replace_file_atomically(path, "first\n", 0600, "state");
  replace_file_atomically(path, "second\n", 0600, "state");
  EXPECT_EQ(read_file_if_exists(path, "state"), "second\n");
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_FALSE(fs::exists(dir_ / "state.json.tmp"));
}

TEST_F(AtomicFileTest, AFailedReplaceLeavesTheOldCopyAndSaysWhy) {
  const fs::path path = dir_ / "state.json";
  replace_file_atomically(path, "old\n", 0644, "state");
  fs::create_directories(dir_ / "state.json.tmp" / "in-the-way");  // root ignores permissions
  try {
    replace_file_atomically(path, "new\n", 0644, "state");
    ADD_FAILURE() << "no exception";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("state " + path.string() + ": cannot create"),
              std::string::npos)
        << e.what();
  }
  EXPECT_EQ(read_file_if_exists(path, "state"), "old\n");
}

TEST_F(AtomicFileTest, ReadsAMissingFileAsNothingAndAnUnreadableOneAsAnError) {
  EXPECT_EQ(read_file_if_exists(dir_ / "missing.json", "state"), std::nullopt);
  const std::string big(200000, 'x');  // more than one read
  std::ofstream(dir_ / "big.json", std::ios::binary) << big;
  EXPECT_EQ(read_file_if_exists(dir_ / "big.json", "state"), big);
  fs::create_directories(dir_ / "dir.json");
  try {
    read_file_if_exists(dir_ / "dir.json", "state");
    ADD_FAILURE() << "no exception";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("state " + (dir_ / "dir.json").string() + ": cannot read"),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace gateway
