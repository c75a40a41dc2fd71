//! Registry authentication state: credentials, `WWW-Authenticate` challenges, and the bearer tokens we
//! were given, cached per (host, scope) until they expire.
//!
//! The token fetch itself (an HTTP request to the realm) lives in the client; this module only parses and
//! remembers. It must never log or format a password or token: `Credentials`' Debug redacts them.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;

/// Credentials for a registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// Username and password: sent as Basic auth, or to a bearer realm to get a token.
    Basic {
        /// User name.
        username: String,
        /// Password (or personal access token).
        password: String,
    },
    /// A bearer token sent as is (`Authorization: Bearer <token>`), never exchanged.
    Token(String),
}

impl Credentials {
    /// `Basic base64(user:password)`, for Basic credentials.
    pub(crate) fn basic_header(&self) -> Option<String> {
        match self {
            Credentials::Basic { username, password } => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
            )),
            Credentials::Token(_) => None,
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            Credentials::Token(_) => f.write_str("Token(<redacted>)"),
        }
    }
}

/// One challenge of a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// The scheme, lower-cased (`basic`, `bearer`).
    pub scheme: String,
    /// Parameters, names lower-cased, in order.
    pub params: Vec<(String, String)>,
}

impl Challenge {
    /// The parameter `name` (lower-case).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parse a `WWW-Authenticate` value into its challenges (RFC 7235: `scheme k=v, k="quoted", Scheme2 ...`).
pub fn parse_www_authenticate(header: &str) -> Vec<Challenge> {
    let mut p = Parser {
        s: header.as_bytes(),
        i: 0,
    };
    let mut out: Vec<Challenge> = Vec::new();
    loop {
        p.skip(|c| c == b' ' || c == b'\t' || c == b',');
        let Some(scheme) = p.token() else { break };
        let mut ch = Challenge {
            scheme: scheme.to_ascii_lowercase(),
            params: Vec::new(),
        };
        loop {
            p.skip(|c| c == b' ' || c == b'\t' || c == b',');
            let save = p.i;
            let Some(name) = p.token() else { break };
            p.skip(|c| c == b' ' || c == b'\t');
            if !p.eat(b'=') {
                // The next challenge's scheme (or a token68): back up and end this challenge.
                p.i = save;
                break;
            }
            if p.peek() == Some(b'=') {
                // token68 such as `abc==`: not a parameter.
                p.skip(|c| c == b'=');
                continue;
            }
            p.skip(|c| c == b' ' || c == b'\t');
            let value = if p.peek() == Some(b'"') {
                p.quoted()
            } else {
                p.token().unwrap_or_default()
            };
            ch.params.push((name.to_ascii_lowercase(), value));
        }
        out.push(ch);
    }
    out
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn skip(&mut self, f: impl Fn(u8) -> bool) {
        while self.peek().is_some_and(&f) {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn token(&mut self) -> Option<String> {
        let start = self.i;
        self.skip(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/:".contains(&c));
        (self.i > start).then(|| String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }
    fn quoted(&mut self) -> String {
        self.i += 1; // opening quote
        let mut out = Vec::new();
        while let Some(c) = self.peek() {
            self.i += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    if let Some(n) = self.peek() {
                        out.push(n);
                        self.i += 1;
                    }
                }
                _ => out.push(c),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// How a host wants to be authenticated, learnt from its last challenge, so that later requests send
/// credentials up front instead of paying a 401 round trip each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostAuth {
    Basic,
    Bearer { realm: String, service: String },
}

#[derive(Debug, Clone)]
struct CachedToken {
    token: String,
    expires: Instant,
}

/// Tokens per (host, scope) and what each host asked for.
#[derive(Debug, Default)]
pub(crate) struct AuthCache {
    tokens: Mutex<HashMap<(String, String), CachedToken>>,
    hosts: Mutex<HashMap<String, HostAuth>>,
}

impl AuthCache {
    pub(crate) fn token(&self, host: &str, scope: &str) -> Option<String> {
        let tokens = self.tokens.lock().ok()?;
        let t = tokens.get(&(host.to_string(), scope.to_string()))?;
        (t.expires > Instant::now()).then(|| t.token.clone())
    }

    pub(crate) fn put_token(&self, host: &str, scope: &str, token: String, ttl: Duration) {
        // Renew a little early so a token never expires in flight.
        let ttl = ttl
            .saturating_sub(Duration::from_secs(5))
            .max(Duration::from_secs(1));
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.insert(
                (host.to_string(), scope.to_string()),
                CachedToken {
                    token,
                    expires: Instant::now() + ttl,
                },
            );
        }
    }

    pub(crate) fn forget_token(&self, host: &str, scope: &str) {
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.remove(&(host.to_string(), scope.to_string()));
        }
    }

    pub(crate) fn host(&self, host: &str) -> Option<HostAuth> {
        self.hosts.lock().ok()?.get(host).cloned()
    }

    pub(crate) fn set_host(&self, host: &str, auth: HostAuth) {
        if let Ok(mut hosts) = self.hosts.lock() {
            hosts.insert(host.to_string(), auth);
        }
    }
}

/// A token endpoint's answer (docker's token spec and OAuth2).
#[derive(Debug, serde::Deserialize)]
pub(crate) struct TokenResponse {
    #[serde(default)]
    pub token: String,
    #[serde(default)]
    pub access_token: String,
    #[serde(default)]
    pub expires_in: u64,
}

impl TokenResponse {
    /// The token (`token` or `access_token`) and its lifetime (60 s when not given, as the spec says).
    pub(crate) fn into_token(self) -> Option<(String, Duration)> {
        let t = if self.token.is_empty() {
            self.access_token
        } else {
            self.token
        };
        let ttl = if self.expires_in == 0 {
            60
        } else {
            self.expires_in
        };
        (!t.is_empty()).then(|| (t, Duration::from_secs(ttl)))
    }
}

/// Percent-encode `s` for a query string or form body (everything but unreserved characters).
pub(crate) fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_several_challenges() {
        let c = parse_www_authenticate(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push", Basic realm="x \"y\"""#,
        );
        assert_eq!(c.len(), 2, "{c:?}");
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].param("realm"), Some("https://auth.example/token"));
        assert_eq!(c[0].param("service"), Some("registry.example"));
        assert_eq!(c[0].param("scope"), Some("repository:a/b:pull,push"));
        assert_eq!(c[1].scheme, "basic");
        assert_eq!(c[1].param("realm"), Some(r#"x "y""#));
        let c = parse_www_authenticate("Basic realm=unquoted , charset=\"UTF-8\"");
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].param("realm"), Some("unquoted"));
        assert_eq!(c[0].param("charset"), Some("UTF-8"));
        let c = parse_www_authenticate("Negotiate abc==, Basic");
        assert_eq!(
            c.iter().map(|c| c.scheme.as_str()).collect::<Vec<_>>(),
            ["negotiate", "basic"]
        );
        assert!(parse_www_authenticate("").is_empty());
    }

    #[test]
    fn credentials_never_show_secrets() {
        let c = Credentials::Basic {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        assert_eq!(c.basic_header().as_deref(), Some("Basic dTpodW50ZXIy"));
        assert!(!format!("{:?}", Credentials::Token("sekrit".into())).contains("sekrit"));
    }

    #[test]
    fn token_response_and_cache() {
        let r: TokenResponse =
            serde_json::from_str(r#"{"access_token":"a","expires_in":300}"#).expect("json");
        assert_eq!(r.into_token(), Some(("a".into(), Duration::from_secs(300))));
        let r: TokenResponse = serde_json::from_str(r#"{"token":"t"}"#).expect("json");
        assert_eq!(r.into_token(), Some(("t".into(), Duration::from_secs(60))));
        let cache = AuthCache::default();
        cache.put_token("h", "s", "tok".into(), Duration::from_secs(60));
        assert_eq!(cache.token("h", "s").as_deref(), Some("tok"));
        assert_eq!(cache.token("h", "other"), None);
        cache.forget_token("h", "s");
        assert_eq!(cache.token("h", "s"), None);
        assert_eq!(
            urlencode("repository:a/b:pull"),
            "repository%3Aa%2Fb%3Apull"
        );
    }
}
