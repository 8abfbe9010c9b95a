// Credentials in URLs, kept out of logs, dead-letter reasons, /metrics and --check: a flow's
// endpoint_url may carry them (https://user:password@host/path), and libcurl's error texts and our
// own "POST <url> failed" reasons repeat the URL. Pure functions; thread-safe.
#pragma once

#include <string>
#include <string_view>

namespace gateway {

// `text` with the password of every URL in it replaced by ***: "https://u:pw@h/x" becomes
// "https://u:***@h/x", and a user part without a password (often a token: "https://tok@h/")
// becomes "https://***@h/". URLs are found anywhere in the text (scheme "://" userinfo "@"): a
// whole URL, or one inside an error message. The userinfo is everything up to the last '@'
// before the first '/', '?', '#', blank or character that cannot be part of a URL, so a password
// with ',', ';' or ')' is still hidden whole. Text without such a URL is returned unchanged.
std::string redact_url_credentials(std::string_view text);

// True when redact_url_credentials(text) would change something (cheap: no allocation).
bool has_url_credentials(std::string_view text);

}  // namespace gateway
