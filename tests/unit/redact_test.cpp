// redact_url_credentials(): passwords in endpoint URLs never reach logs, reasons or /metrics.
#include "gateway/redact.h"

#include <gtest/gtest.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "gateway/logging.h"
#include "gateway/settings.h"

namespace gateway {
namespace {

TEST(RedactTest, PasswordOfAUrlIsMaskedAndTheUserKept) {
  EXPECT_EQ(redact_url_credentials("https://alice:s3cret@example.com/hook?x=1"),
            "https://alice:***@example.com/hook?x=1");
  EXPECT_EQ(redact_url_credentials("http://alice:s3cret@127.0.0.1:8080"),
            "http://alice:***@127.0.0.1:8080");
}

TEST(RedactTest, UserPartWithoutPasswordIsMaskedWhole) {
  // A lone user part is often a token.
  EXPECT_EQ(redact_url_credentials("https://tok3n@example.com/"), "https://***@example.com/");
  EXPECT_EQ(redact_url_credentials("https://:pw@example.com/"), "https://:***@example.com/");
}

TEST(RedactTest, TextWithoutCredentialsIsUnchanged) {
  for (const std::string text :
       {"", "https://example.com/a@b", "https://example.com/?mail=a@b.c", "mail me at a@b.c",
        "no url at all", "://x@y", "POST https://example.com/hook failed: HTTP 503",
        "mysql://gw:***@db:3306/gw"}) {
    EXPECT_EQ(redact_url_credentials(text), text) << text;
    EXPECT_EQ(has_url_credentials(text), text == "mysql://gw:***@db:3306/gw") << text;
  }
}

TEST(RedactTest, UrlsInsideALongerTextAreAllRedacted) {
  EXPECT_EQ(redact_url_credentials("POST https://u:p1@a.example/x failed: Could not resolve "
                                   "host (curl 6); then http://v:p2@b.example:81 refused"),
            "POST https://u:***@a.example/x failed: Could not resolve host (curl 6); then "
            "http://v:***@b.example:81 refused");
  EXPECT_EQ(redact_url_credentials("'https://u:pw@h/'"), "'https://u:***@h/'");
  EXPECT_EQ(redact_url_credentials("(https://u:pw@h)"), "(https://u:***@h)");
  EXPECT_EQ(redact_url_credentials("url=\"https://u:pw@h\""), "url=\"https://u:***@h\"");
}

TEST(RedactTest, PasswordWithDelimitersOrAtSignsIsHiddenWhole) {
  // The last '@' of the authority ends the userinfo, as in curl.
  EXPECT_EQ(redact_url_credentials("https://u:p@ss@h/x"), "https://u:***@h/x");
  EXPECT_EQ(redact_url_credentials("https://u:a,b;c)d'e@h/x"), "https://u:***@h/x");
  EXPECT_EQ(redact_url_credentials("https://u:p%40w@h"), "https://u:***@h");
}

TEST(RedactTest, SchemeIsWhateverPrecedesTheSeparator) {
  EXPECT_EQ(redact_url_credentials("HTTPS://u:pw@h"), "HTTPS://u:***@h");
  EXPECT_EQ(redact_url_credentials("x-git+ssh://u:pw@h"), "x-git+ssh://u:***@h");
  EXPECT_EQ(redact_url_credentials("err:https://u:pw@h"), "err:https://u:***@h");
}

TEST(RedactTest, RedactingTwiceChangesNothingMore) {
  const std::string once = redact_url_credentials("https://u:pw@h/x https://t@h2");
  EXPECT_EQ(once, "https://u:***@h/x https://***@h2");
  EXPECT_EQ(redact_url_credentials(once), once);
}

// The net under every log line: a component that logs a URL with a password as it is still
// writes no password to the log file.
TEST(RedactTest, LogLinesNeverCarryUrlPasswords) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("redact_log_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  Settings settings;
  settings.log_dir = dir.string();
  {
    Logging logging(settings);
    auto log = logging.get("test");
    log->warn("POST https://alice:hunter2@example.com/hook failed: {}",
              "Failed to connect to https://bob:swordfish@10.0.0.1:8443/x");
    log->info("plain line to https://example.com/");
    logging.flush();
  }
  std::ifstream in(dir / "mqtt-gateway.log");
  std::stringstream text;
  text << in.rdbuf();
  std::filesystem::remove_all(dir);
  EXPECT_EQ(text.str().find("hunter2"), std::string::npos) << text.str();
  EXPECT_EQ(text.str().find("swordfish"), std::string::npos) << text.str();
  EXPECT_NE(text.str().find("POST https://alice:***@example.com/hook failed: Failed to connect "
                            "to https://bob:***@10.0.0.1:8443/x"),
            std::string::npos)
      << text.str();
  EXPECT_NE(text.str().find("plain line to https://example.com/"), std::string::npos);
}

}  // namespace
}  // namespace gateway
