// Issue 12's settings: TLS to the database (DB_SSL_*) and secrets from files (DB_PASSWORD_FILE,
// systemd credentials). Files are real, in a scratch directory.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "gateway/errors.h"
#include "gateway/settings.h"

namespace gateway {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

namespace fs = std::filesystem;

class SettingsSecretsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("settings_secrets_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Writes `content` to dir_/name and returns the path.
  std::string file(const std::string& name, const std::string& content) {
    const fs::path path = dir_ / name;
    std::ofstream(path, std::ios::binary) << content;
    return path.string();
  }

  static EnvMap base() { return {{"DB_HOST", "db.example"}, {"DB_NAME", "gw"}, {"DB_USER", "gw"}}; }
  static EnvMap with(EnvMap env, const std::string& key, const std::string& value) {
    env[key] = value;
    return env;
  }
  // The ConfigError's message, or "" when load_settings() accepted env.
  static std::string error_of(const EnvMap& env) {
    try {
      load_settings(env);
    } catch (const ConfigError& e) {
      return e.what();
    }
    return "";
  }

  fs::path dir_;
};

// ---- DB_SSL_MODE and its files ----

TEST_F(SettingsSecretsTest, DbSslModeDefaultsToPreferredWithoutFiles) {
  const Settings s = load_settings(with(base(), "DB_PASSWORD", "pw"));
  EXPECT_EQ(s.db_ssl_mode, DbSslMode::kPreferred);
  EXPECT_EQ(s.db_ssl_ca, "");
  EXPECT_EQ(s.db_ssl_cert, "");
  EXPECT_EQ(s.db_ssl_key, "");
  EXPECT_THAT(describe_settings(s), ::testing::Contains("DB_SSL_MODE=preferred"));
}

TEST_F(SettingsSecretsTest, EveryModeParsesInEitherSpelling) {
  const std::string ca = file("ca.pem", "x");
  const std::pair<const char*, DbSslMode> cases[] = {
      {"disabled", DbSslMode::kDisabled},
      {"PREFERRED", DbSslMode::kPreferred},
      {"required", DbSslMode::kRequired},
      {"verify-ca", DbSslMode::kVerifyCa},
      {"VERIFY_CA", DbSslMode::kVerifyCa},
      {"verify-identity", DbSslMode::kVerifyIdentity},
      {"verify_identity", DbSslMode::kVerifyIdentity}};
  for (const auto& [text, mode] : cases) {
    EnvMap env = with(with(base(), "DB_PASSWORD", "pw"), "DB_SSL_MODE", text);
    if (mode == DbSslMode::kVerifyCa) env["DB_SSL_CA"] = ca;
    const Settings s = load_settings(env);
    EXPECT_EQ(s.db_ssl_mode, mode) << text;
    EXPECT_EQ(parse_db_ssl_mode(to_string(mode)), mode);
  }
}

TEST_F(SettingsSecretsTest, BadModeIsOneLineNamingTheVariable) {
  EXPECT_EQ(error_of(with(with(base(), "DB_PASSWORD", "pw"), "DB_SSL_MODE", "on")),
            "DB_SSL_MODE: expected one of disabled, preferred, required, verify-ca, "
            "verify-identity, got 'on'");
}

TEST_F(SettingsSecretsTest, MissingOrUnreadableFilesAreNamed) {
  const EnvMap env = with(with(base(), "DB_PASSWORD", "pw"), "DB_SSL_MODE", "verify-identity");
  for (const char* name : {"DB_SSL_CA", "DB_SSL_CERT", "DB_SSL_KEY"}) {
    EnvMap e = with(env, name, (dir_ / "missing.pem").string());
    if (std::string(name) == "DB_SSL_KEY") e["DB_SSL_CERT"] = file("cert.pem", "x");
    const std::string error = error_of(e);
    EXPECT_THAT(error, StartsWith(std::string(name) + ": cannot read the file (No such file"));
    EXPECT_THAT(error, HasSubstr("missing.pem"));
    EXPECT_EQ(error.find('\n'), std::string::npos);
  }
  EXPECT_THAT(error_of(with(env, "DB_SSL_CA", dir_.string())),
              StartsWith("DB_SSL_CA: not a regular file, got '"));
}

TEST_F(SettingsSecretsTest, FilesThatDoNotFitTheModeAreRefused) {
  const std::string pem = file("x.pem", "x");
  const EnvMap env = with(base(), "DB_PASSWORD", "pw");
  EXPECT_EQ(error_of(with(with(env, "DB_SSL_MODE", "verify-ca"), "DB_SSL_CA", "")),
            "DB_SSL_CA: required by DB_SSL_MODE=verify-ca");
  EXPECT_THAT(error_of(with(env, "DB_SSL_CA", pem)),
              StartsWith("DB_SSL_CA: is only used with DB_SSL_MODE=verify-ca or verify-identity, "
                         "not with DB_SSL_MODE=preferred"));
  EXPECT_THAT(error_of(with(with(env, "DB_SSL_MODE", "required"), "DB_SSL_CA", pem)),
              StartsWith("DB_SSL_CA: is only used with"));
  EXPECT_EQ(error_of(with(with(env, "DB_SSL_MODE", "disabled"), "DB_SSL_CERT", pem)),
            "DB_SSL_CERT: not used with DB_SSL_MODE=disabled");
  EXPECT_EQ(error_of(with(env, "DB_SSL_KEY", pem)),
            "DB_SSL_KEY: set without DB_SSL_CERT (the client certificate)");
  // verify-identity may use the system's trust store; a client certificate may hold its key.
  EXPECT_EQ(error_of(with(env, "DB_SSL_MODE", "verify-identity")), "");
  EXPECT_EQ(error_of(with(env, "DB_SSL_CERT", pem)), "");
}

// ---- DB_PASSWORD_FILE ----

TEST_F(SettingsSecretsTest, PasswordFileLosesOneTrailingNewlineOnly) {
  const std::pair<std::string, std::string> cases[] = {
      {"s3cret", "s3cret"},       {"s3cret\n", "s3cret"},       {"s3cret\r\n", "s3cret"},
      {"s3cret\n\n", "s3cret\n"}, {" s3 cret \n", " s3 cret "}, {"", ""}};
  for (const auto& [content, password] : cases) {
    const std::string path = file("password", content);
    const Settings s = load_settings(with(base(), "DB_PASSWORD_FILE", path));
    EXPECT_EQ(s.db_password.reveal(), password);
    EXPECT_EQ(s.db_password_from, "DB_PASSWORD_FILE " + path);
  }
}

TEST_F(SettingsSecretsTest, PasswordAndPasswordFileTogetherAreRefused) {
  const std::string path = file("password", "from-file\n");
  const std::string error =
      error_of(with(with(base(), "DB_PASSWORD", "from-env"), "DB_PASSWORD_FILE", path));
  EXPECT_EQ(error, "DB_PASSWORD_FILE: set only one of DB_PASSWORD and DB_PASSWORD_FILE");
  // An empty DB_PASSWORD counts as unset (the packaged settings file has "DB_PASSWORD=").
  const Settings s = load_settings(with(with(base(), "DB_PASSWORD", ""), "DB_PASSWORD_FILE", path));
  EXPECT_EQ(s.db_password.reveal(), "from-file");
}

TEST_F(SettingsSecretsTest, UnreadablePasswordFileNamesTheVariableAndPathOnly) {
  const std::string missing = (dir_ / "nope").string();
  EXPECT_EQ(
      error_of(with(base(), "DB_PASSWORD_FILE", missing)),
      "DB_PASSWORD_FILE: cannot read the file (No such file or directory), got '" + missing + "'");
  if (::geteuid() != 0) {  // root reads a 0000 file anyway
    const std::string locked = file("locked", "s3cret");
    ::chmod(locked.c_str(), 0);
    const std::string error = error_of(with(base(), "DB_PASSWORD_FILE", locked));
    EXPECT_THAT(error, StartsWith("DB_PASSWORD_FILE: cannot read the file (Permission denied"));
    EXPECT_THAT(error, Not(HasSubstr("s3cret")));
  }
}

// ---- systemd credentials ----

TEST_F(SettingsSecretsTest, CredentialIsUsedWhenNoPasswordIsSet) {
  const std::string path = file("db_password", "cred-pw\n");
  const Settings s = load_settings(with(base(), "CREDENTIALS_DIRECTORY", dir_.string()));
  EXPECT_EQ(s.db_password.reveal(), "cred-pw");
  EXPECT_EQ(s.db_password_from, "systemd credential " + path);
  for (const std::string& line : describe_settings(s)) {
    EXPECT_THAT(line, Not(HasSubstr("cred-pw")));
  }
  EXPECT_THAT(describe_settings(s),
              ::testing::Contains("DB_PASSWORD=*** (from systemd credential " + path + ")"));
}

TEST_F(SettingsSecretsTest, PasswordOrPasswordFileWinOverTheCredential) {
  file("db_password", "cred-pw");
  const std::string own = file("own", "file-pw");
  const EnvMap env = with(base(), "CREDENTIALS_DIRECTORY", dir_.string());
  EXPECT_EQ(load_settings(with(env, "DB_PASSWORD", "env-pw")).db_password.reveal(), "env-pw");
  EXPECT_EQ(load_settings(with(env, "DB_PASSWORD_FILE", own)).db_password.reveal(), "file-pw");
  // Present but empty: the credential.
  EXPECT_EQ(load_settings(with(env, "DB_PASSWORD", "")).db_password.reveal(), "cred-pw");
}

TEST_F(SettingsSecretsTest, CredentialsDirectoryWithoutThePasswordLeavesItRequired) {
  EXPECT_EQ(error_of(with(base(), "CREDENTIALS_DIRECTORY", dir_.string())),
            "DB_PASSWORD: required variable is not set");
  EXPECT_EQ(
      load_settings(with(with(base(), "CREDENTIALS_DIRECTORY", dir_.string()), "DB_PASSWORD", ""))
          .db_password.reveal(),
      "");
}

}  // namespace
}  // namespace gateway
