//! Registry credentials asked from the client over its auth stream, as containerd 2.x's Transfer service does:
//! berthd sends an `AuthRequest{host, reference}` and the client answers an `AuthResponse` — `CREDENTIALS`
//! (username and secret), `REFRESH` (a refresh token, no username), or `HEADER` (an Authorization value).
//! Requests are asked one at a time; an empty answer means the client has no credentials for that host.
//!
//! This module must never log a secret.

use base64::Engine as _;
use berth_registry::Credentials;
use containerd_client::types::transfer::{AuthRequest, AuthResponse, AuthType};
use tokio::sync::Mutex;
use tonic::Status;

use super::streams::{decode_any, StreamHandle};
use crate::pull::CredentialSource;

/// Credentials from one client's auth stream.
#[derive(Debug)]
pub struct AuthStream {
    stream: Mutex<StreamHandle>,
}

impl AuthStream {
    /// Over a stream the client registered for auth callbacks.
    pub fn new(stream: StreamHandle) -> AuthStream {
        AuthStream {
            stream: Mutex::new(stream),
        }
    }
}

/// An AuthResponse as credentials (`None`: nothing given).
pub fn credentials_of(r: &AuthResponse) -> Option<Credentials> {
    let t = AuthType::try_from(r.auth_type).unwrap_or(AuthType::None);
    match t {
        AuthType::Credentials if !r.username.is_empty() || !r.secret.is_empty() => {
            Some(Credentials::Basic {
                username: r.username.clone(),
                password: r.secret.clone(),
            })
        }
        // A refresh (identity) token goes to the token realm like a password with no user name.
        AuthType::Refresh if !r.secret.is_empty() => Some(Credentials::Basic {
            username: String::new(),
            password: r.secret.clone(),
        }),
        AuthType::Header => {
            let v = r.secret.trim();
            if let Some(token) = v.strip_prefix("Bearer ") {
                Some(Credentials::Token(token.trim().to_string()))
            } else if let Some(b64) = v.strip_prefix("Basic ") {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(b64.trim())
                    .ok()?;
                let text = String::from_utf8(raw).ok()?;
                let (u, p) = text.split_once(':')?;
                Some(Credentials::Basic {
                    username: u.to_string(),
                    password: p.to_string(),
                })
            } else if v.is_empty() {
                None
            } else {
                Some(Credentials::Token(v.to_string()))
            }
        }
        _ => None,
    }
}

#[tonic::async_trait]
impl CredentialSource for AuthStream {
    async fn credentials(
        &self,
        host: &str,
        reference: &str,
    ) -> Result<Option<Credentials>, Status> {
        let mut s = self.stream.lock().await;
        let req = AuthRequest {
            host: host.to_string(),
            reference: reference.to_string(),
            wwwauthenticate: Vec::new(),
        };
        s.send(berth_proto::to_any(&req)).await?;
        let answer = tokio::time::timeout(std::time::Duration::from_secs(60), s.recv())
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!(
                    "no answer on auth stream {:?} within 60 s",
                    s.id()
                ))
            })??
            .ok_or_else(|| {
                Status::unauthenticated(format!("auth stream {:?} closed by the client", s.id()))
            })?;
        let resp: AuthResponse = decode_any(&answer)?;
        Ok(credentials_of(&resp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_map_to_credentials() {
        let r = |t: AuthType, u: &str, s: &str| AuthResponse {
            auth_type: t as i32,
            username: u.into(),
            secret: s.into(),
            expire_at: None,
        };
        assert_eq!(
            credentials_of(&r(AuthType::Credentials, "u", "p")),
            Some(Credentials::Basic {
                username: "u".into(),
                password: "p".into()
            })
        );
        // ctr 2.x answers REFRESH with an empty secret when it has no credentials.
        assert_eq!(credentials_of(&r(AuthType::Refresh, "", "")), None);
        assert_eq!(
            credentials_of(&r(AuthType::Header, "", "Bearer abc")),
            Some(Credentials::Token("abc".into()))
        );
        assert_eq!(
            credentials_of(&r(AuthType::Header, "", "Basic dTpw")),
            Some(Credentials::Basic {
                username: "u".into(),
                password: "p".into()
            })
        );
    }
}
