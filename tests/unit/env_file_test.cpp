#include "gateway/env_file.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>

#include "gateway/errors.h"

namespace gateway {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// Returns the ConfigError message thrown by parse_env_file(text), or "" if none was thrown.
std::string parse_error(std::string_view text) {
  try {
    parse_env_file(text);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

TEST(EnvFileTest, ParsesPlainAssignmentsBlankLinesAndComments) {
  EnvMap env = parse_env_file(
      "# a comment\n"
      "\n"
      "A=1\n"
      "   # indented comment\n"
      "B=two words\n"
      "EMPTY=\n");
  EXPECT_EQ(env, (EnvMap{{"A", "1"}, {"B", "two words"}, {"EMPTY", ""}}));
}

TEST(EnvFileTest, TrimsWhitespaceAroundKeyAndValue) {
  EnvMap env = parse_env_file("  KEY \t=   value  \t\n");
  EXPECT_EQ(env, (EnvMap{{"KEY", "value"}}));
}

TEST(EnvFileTest, AcceptsExportPrefix) {
  EnvMap env = parse_env_file("export DB_HOST=db.local\nexport\tDB_PORT = 3307\n");
  EXPECT_EQ(env, (EnvMap{{"DB_HOST", "db.local"}, {"DB_PORT", "3307"}}));
}

TEST(EnvFileTest, KeyNamedExportIsAnOrdinaryKey) {
  EXPECT_EQ(parse_env_file("export=yes\n"), (EnvMap{{"export", "yes"}}));
}

TEST(EnvFileTest, UnquotedValueEndsAtBlankHash) {
  EnvMap env = parse_env_file(
      "A=value # comment\n"
      "B=pass#word\n"
      "C=x\t# tab comment\n"
      "D= # only a comment\n");
  EXPECT_EQ(env, (EnvMap{{"A", "value"}, {"B", "pass#word"}, {"C", "x"}, {"D", ""}}));
}

TEST(EnvFileTest, SingleQuotedValueIsLiteral) {
  EnvMap env = parse_env_file(R"(A='  spaced # not a comment \n "x" ' # comment)");
  EXPECT_EQ(env.at("A"), R"(  spaced # not a comment \n "x" )");
}

TEST(EnvFileTest, DoubleQuotedValueDecodesEscapes) {
  EnvMap env = parse_env_file(R"(A="line1\nline2\tTab \"q\" back\\slash \'s\' \d" # comment)");
  EXPECT_EQ(env.at("A"), "line1\nline2\tTab \"q\" back\\slash 's' \\d");
}

TEST(EnvFileTest, QuotedValuesMaySpanLinesAndLineNumbersStayRight) {
  EXPECT_EQ(parse_env_file("A=\"one\ntwo\"\nB='x\ny'\n"),
            (EnvMap{{"A", "one\ntwo"}, {"B", "x\ny"}}));
  EXPECT_THAT(parse_error("A=\"one\ntwo\"\nB='x\ny'\nbroken\n"), HasSubstr("line 5:"));
}

TEST(EnvFileTest, EmptyQuotedValues) {
  EXPECT_EQ(parse_env_file("A=''\nB=\"\"\n"), (EnvMap{{"A", ""}, {"B", ""}}));
}

TEST(EnvFileTest, LaterAssignmentWins) {
  EXPECT_EQ(parse_env_file("A=1\nA=2\n"), (EnvMap{{"A", "2"}}));
}

TEST(EnvFileTest, HandlesCrLfLineEndingsByteOrderMarkAndMissingFinalNewline) {
  EnvMap env = parse_env_file(
      "\xEF\xBB\xBF"
      "A=1\r\nB=\"2\"\r\nC=3");
  EXPECT_EQ(env, (EnvMap{{"A", "1"}, {"B", "2"}, {"C", "3"}}));
  EXPECT_THAT(parse_error("A=1\r\nB=2\r\nbad\r\n"), HasSubstr("line 3:"));
}

TEST(EnvFileTest, EmptyTextGivesEmptyMap) {
  EXPECT_TRUE(parse_env_file("").empty());
  EXPECT_TRUE(parse_env_file("\n\n# only comments\n").empty());
}

// A line without '=' may be a password pasted on its own line: named by number, never quoted.
TEST(EnvFileTest, LineWithoutEqualsIsAnErrorNamingTheLineNotItsText) {
  std::string error = parse_error("A=1\n\nS3cretPassw0rd\n");
  EXPECT_THAT(error, HasSubstr("line 3: expected KEY=VALUE, found no '='"));
  EXPECT_THAT(error, Not(HasSubstr("S3cretPassw0rd")));
}

// `DB_PASSWORD:secret` is an invalid key that holds the password: the error says where, not what.
TEST(EnvFileTest, InvalidKeysAreErrorsThatDoNotEchoTheLine) {
  EXPECT_THAT(parse_error("1ABC=x\n"), HasSubstr("line 1: invalid key: its character 1 "));
  EXPECT_THAT(parse_error("A=1\nMY-KEY=x\n"), HasSubstr("line 2: invalid key: its character 3 "));
  EXPECT_THAT(parse_error("=value\n"), HasSubstr("line 1:"));
  const std::string pasted = parse_error("A=1\nDB_PASSWORD:s3cret\n");
  EXPECT_THAT(pasted, HasSubstr("line 2: invalid key: its character 12 "));
  EXPECT_THAT(pasted, Not(HasSubstr("s3cret")));
}

TEST(EnvFileTest, UnterminatedQuotesAreErrorsThatDoNotEchoTheValue) {
  std::string single = parse_error("A=1\nDB_PASSWORD='s3cret\n");
  EXPECT_THAT(single, HasSubstr("line 2: unterminated single quote"));
  EXPECT_THAT(single, HasSubstr("DB_PASSWORD"));
  EXPECT_THAT(single, Not(HasSubstr("s3cret")));
  std::string dbl = parse_error("DB_PASSWORD=\"s3cret\\\"\n");
  EXPECT_THAT(dbl, HasSubstr("line 1: unterminated double quote"));
  EXPECT_THAT(dbl, Not(HasSubstr("s3cret")));
}

TEST(EnvFileTest, TextAfterClosingQuoteIsAnError) {
  EXPECT_THAT(parse_error("A=1\nB='x'y\n"), HasSubstr("line 2: unexpected text after the closing"));
  EXPECT_THAT(parse_error("B=\"x\" y\n"), HasSubstr("line 1:"));
}

TEST(EnvFileTest, EnvironmentMapSplitsAtFirstEqualsAndKeepsFirstDuplicate) {
  char a[] = "A=1=2";
  char b[] = "B=";
  char junk[] = "NOEQUALS";
  char dup[] = "A=later";
  char* envp[] = {a, b, junk, dup, nullptr};
  EXPECT_EQ(environment_map(envp), (EnvMap{{"A", "1=2"}, {"B", ""}}));
  EXPECT_TRUE(environment_map(nullptr).empty());
}

TEST(EnvFileTest, ProcessEnvironmentWinsOverFileEvenWhenEmpty) {
  EnvMap process{{"DB_HOST", "from-env"}, {"DB_PORT", ""}, {"PATH", "/bin"}};
  EnvMap file{{"DB_HOST", "from-file"}, {"DB_PORT", "3307"}, {"DB_NAME", "gw"}};
  EXPECT_EQ(
      merge_env(process, file),
      (EnvMap{{"DB_HOST", "from-env"}, {"DB_PORT", ""}, {"PATH", "/bin"}, {"DB_NAME", "gw"}}));
}

class EnvFileOnDiskTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("env_file_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::filesystem::path write(const std::string& name, const std::string& contents) {
    std::filesystem::path path = dir_ / name;
    std::ofstream(path) << contents;
    return path;
  }

  std::filesystem::path dir_;
};

TEST_F(EnvFileOnDiskTest, MissingFileIsNotAnError) {
  EXPECT_EQ(read_env_file(dir_ / "absent.env"), std::nullopt);
}

TEST_F(EnvFileOnDiskTest, ReadsAndParsesAFile) {
  auto env = read_env_file(write(".env", "DB_HOST=127.0.0.1\nDB_PORT='3307'\n"));
  ASSERT_TRUE(env.has_value());
  EXPECT_EQ(*env, (EnvMap{{"DB_HOST", "127.0.0.1"}, {"DB_PORT", "3307"}}));
}

TEST_F(EnvFileOnDiskTest, ParseErrorNamesFileAndLine) {
  std::filesystem::path path = write("bad.env", "A=1\nB\n");
  try {
    read_env_file(path);
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_THAT(e.what(), HasSubstr(path.string() + ": line 2:"));
  }
}

TEST_F(EnvFileOnDiskTest, DirectoryIsUnreadable) { EXPECT_THROW(read_env_file(dir_), ConfigError); }

}  // namespace
}  // namespace gateway
