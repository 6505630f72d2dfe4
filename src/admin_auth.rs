//! Who may use the admin endpoints that change state or ask the core (`POST /reload`,
//! `POST /invalidate/{id}`, `GET /debug/...`): loopback callers, and remote callers only with
//! `admin.allow_remote_changes` and the bearer token from `admin.token_file` (with
//! `admin.require_token`, loopback callers need the token too). The decision is a pure function of the
//! peer, the config and the token, so every case is testable without sockets; `admin` applies it in one
//! middleware.
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use subtle::ConstantTimeEq;

use crate::config::AdminConfig;

/// Why the admin token could not be loaded (at start, by `check-config`, or by a reload, which then
/// changes nothing).
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read admin.token_file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("admin.token_file {path} holds no token (it is empty or only whitespace); write the bearer token into it")]
    Empty { path: PathBuf },
}

/// A bearer token. Its Debug output is redacted, so it cannot reach a log or an error by accident.
pub struct Token(Box<[u8]>);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(redacted)")
    }
}

impl Token {
    /// Reads a token file; surrounding whitespace (the newline `echo` adds) is not part of the token.
    pub fn read(path: &Path) -> Result<Self, TokenError> {
        let bytes = std::fs::read(path).map_err(|source| TokenError::Read { path: path.to_owned(), source })?;
        Self::from_bytes(&bytes).ok_or_else(|| TokenError::Empty { path: path.to_owned() })
    }

    /// A token from its text, surrounding whitespace trimmed; `None` when nothing is left.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let token = bytes.trim_ascii();
        (!token.is_empty()).then(|| Self(token.into()))
    }

    /// Compares in constant time (for tokens of the same length), so response timing does not reveal
    /// how much of a guessed token was right.
    pub fn matches(&self, presented: &[u8]) -> bool {
        self.0.as_ref().ct_eq(presented).into()
    }
}

/// The token of `admin.token_file`, if one is configured.
pub fn read_token(config: &AdminConfig) -> Result<Option<Token>, TokenError> {
    config.token_file.as_deref().map(Token::read).transpose()
}

/// The token in force, replaced by every reload (which re-reads the file, so a rotated token applies
/// without a restart).
#[derive(Debug, Default)]
pub struct AdminToken(ArcSwapOption<Token>);

impl AdminToken {
    pub fn replace(&self, token: Option<Token>) {
        self.0.store(token.map(Arc::new));
    }

    pub fn current(&self) -> Option<Arc<Token>> {
        self.0.load_full()
    }
}

/// Whether a peer is this machine's loopback (an IPv4-mapped IPv6 loopback address counts).
pub fn is_loopback(peer: IpAddr) -> bool {
    peer.is_loopback() || peer.to_canonical().is_loopback()
}

/// The token of an `Authorization: Bearer <token>` header value (the scheme is case-insensitive,
/// RFC 7235); `None` for any other scheme.
pub fn bearer(header: &[u8]) -> Option<&[u8]> {
    let space = header.iter().position(|&byte| byte == b' ')?;
    let (scheme, token) = header.split_at(space);
    scheme.eq_ignore_ascii_case(b"bearer").then(|| token.trim_ascii())
}

/// What to do with one request to a guarded endpoint. Each refusal says what to configure or send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Granted,
    /// 403: this caller may not use the endpoint whatever it sends.
    Forbidden(&'static str),
    /// 401 with `WWW-Authenticate: Bearer`: the right token would be accepted.
    Unauthorized(&'static str),
}

pub const REMOTE_NOT_ALLOWED: &str = "this endpoint answers loopback clients only; to allow remote callers set \
     admin.allow_remote_changes = true and admin.token_file (a file holding the bearer token they must send)";
pub const NO_TOKEN_FILE: &str = "remote callers need a bearer token and none is configured: set admin.token_file \
     to a file holding it (admin.allow_remote_changes alone is not enough)";
pub const TOKEN_MISSING: &str =
    "this endpoint needs `Authorization: Bearer <token>` with the token in admin.token_file";
pub const TOKEN_WRONG: &str = "the bearer token does not match the one in admin.token_file";

/// Decides one request: `presented` is the bearer token the caller sent, if any; `token` the one in
/// force. Loopback callers need no token unless `require_token`; remote callers need
/// `allow_remote_changes` and a token.
pub fn decide(peer: IpAddr, config: &AdminConfig, token: Option<&Token>, presented: Option<&[u8]>) -> Access {
    let loopback = is_loopback(peer);
    if !loopback && !config.allow_remote_changes {
        return Access::Forbidden(REMOTE_NOT_ALLOWED);
    }
    if loopback && !config.require_token {
        return Access::Granted;
    }
    // Config validation rejects require_token without a token file; a token missing here (a remote
    // caller with no file configured) refuses rather than lets anyone in.
    let Some(token) = token else { return Access::Forbidden(NO_TOKEN_FILE) };
    match presented {
        None => Access::Unauthorized(TOKEN_MISSING),
        Some(presented) if token.matches(presented) => Access::Granted,
        Some(_) => Access::Unauthorized(TOKEN_WRONG),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(allow_remote_changes: bool, require_token: bool) -> AdminConfig {
        AdminConfig { allow_remote_changes, require_token, ..AdminConfig::default() }
    }

    fn token(text: &str) -> Token {
        Token::from_bytes(text.as_bytes()).unwrap()
    }

    const LOOPBACK: [&str; 4] = ["127.0.0.1", "127.3.2.1", "::1", "::ffff:127.0.0.1"];
    const REMOTE: [&str; 4] = ["10.0.0.7", "192.168.1.20", "2001:db8::1", "::ffff:10.0.0.7"];

    #[test]
    fn loopback_is_told_apart_from_remote_including_mapped_addresses() {
        for loopback in LOOPBACK {
            assert!(is_loopback(loopback.parse().unwrap()), "{loopback}");
        }
        for remote in REMOTE {
            assert!(!is_loopback(remote.parse().unwrap()), "{remote}");
        }
    }

    #[test]
    fn loopback_needs_no_token_unless_required() {
        let secret = token("s3cret");
        for peer in LOOPBACK.map(|peer| peer.parse().unwrap()) {
            assert_eq!(decide(peer, &config(false, false), None, None), Access::Granted);
            assert_eq!(decide(peer, &config(false, false), Some(&secret), None), Access::Granted);
            let required = config(false, true);
            assert_eq!(decide(peer, &required, Some(&secret), Some(b"s3cret")), Access::Granted);
            assert_eq!(decide(peer, &required, Some(&secret), Some(b"s3cres")), Access::Unauthorized(TOKEN_WRONG));
            assert_eq!(decide(peer, &required, Some(&secret), None), Access::Unauthorized(TOKEN_MISSING));
        }
    }

    #[test]
    fn remote_callers_need_permission_a_token_file_and_the_token() {
        let secret = token("s3cret");
        for peer in REMOTE.map(|peer| peer.parse().unwrap()) {
            let refused = decide(peer, &config(false, false), Some(&secret), Some(b"s3cret"));
            assert_eq!(refused, Access::Forbidden(REMOTE_NOT_ALLOWED), "the token alone is not enough");
            let allowed = config(true, false);
            assert_eq!(decide(peer, &allowed, None, Some(b"anything")), Access::Forbidden(NO_TOKEN_FILE));
            assert_eq!(decide(peer, &allowed, Some(&secret), Some(b"s3cret")), Access::Granted);
            assert_eq!(decide(peer, &allowed, Some(&secret), Some(b"s3cret ")), Access::Unauthorized(TOKEN_WRONG));
            assert_eq!(decide(peer, &allowed, Some(&secret), Some(b"")), Access::Unauthorized(TOKEN_WRONG));
            assert_eq!(decide(peer, &allowed, Some(&secret), None), Access::Unauthorized(TOKEN_MISSING));
        }
    }

    #[test]
    fn the_bearer_scheme_is_parsed_case_insensitively() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic YWJj"), None);
        assert_eq!(bearer(b"Bearer"), None);
    }

    #[test]
    fn a_token_file_is_trimmed_must_not_be_empty_and_never_shows_in_debug() {
        let dir = std::env::temp_dir().join(format!("merchant-edge-admin-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "s3cret\n").unwrap();
        let read = Token::read(&path).unwrap();
        assert!(read.matches(b"s3cret"));
        assert_eq!(format!("{read:?}"), "Token(redacted)");
        std::fs::write(&path, " \n").unwrap();
        let empty = Token::read(&path).unwrap_err().to_string();
        assert!(empty.contains("holds no token"), "{empty}");
        let missing = Token::read(&dir.join("absent")).unwrap_err().to_string();
        assert!(missing.starts_with("cannot read admin.token_file"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
