//! The authentication dance of every registry request: credentials sent up front once a host's scheme
//! is known, a 401 answered by learning its challenge and fetching a bearer token, a refused token
//! fetched again once, and the token request itself (GET, then the OAuth2 POST form).
//!
//! It must never put a password or token into an error message or a log line.

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use http::{Method, Response, StatusCode, Uri};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;

use crate::auth::{parse_www_authenticate, urlencode, Credentials, HostAuth};
use crate::client::{drain_small, RegistryClient, Req};
use crate::error::{RegistryError, Result};
use crate::hosts::Endpoint;
use crate::transport::TlsKey;

impl RegistryClient {
    /// The Authorization to send up front to `ep` for `scope`, and whether it is a token we fetched.
    async fn auth_header(&self, ep: &Endpoint, scope: &str) -> Result<(Option<String>, bool)> {
        if let Some(Credentials::Token(t)) = &ep.credentials {
            return Ok((Some(format!("Bearer {t}")), false));
        }
        match self.inner.auth.host(&ep.host) {
            Some(HostAuth::Basic) => Ok((
                ep.credentials.as_ref().and_then(Credentials::basic_header),
                false,
            )),
            Some(HostAuth::Bearer { realm, service }) => {
                if let Some(t) = self.inner.auth.token(&ep.host, scope) {
                    return Ok((Some(format!("Bearer {t}")), true));
                }
                let (t, ttl) = self.fetch_token(ep, &realm, &service, scope, &[]).await?;
                self.inner.auth.put_token(&ep.host, scope, t.clone(), ttl);
                Ok((Some(format!("Bearer {t}")), true))
            }
            None => Ok((None, false)),
        }
    }

    /// Send `req` to `ep` with authentication for `scope`: credentials up front when the host's scheme
    /// is known; on a 401 learn the challenge and retry; a refused token is fetched again once.
    pub(crate) async fn send_authed(
        &self,
        ep: &Endpoint,
        scope: &str,
        req: &Req,
    ) -> Result<Response<Incoming>> {
        let mut token_refusals = 0;
        let mut challenged = false;
        loop {
            let (auth, fetched_token) = self.auth_header(ep, scope).await?;
            let extra: Vec<(HeaderName, HeaderValue)> = auth
                .as_deref()
                .and_then(|a| HeaderValue::from_str(a).ok())
                .map(|v| vec![(AUTHORIZATION, v)])
                .unwrap_or_default();
            let resp = self.send_endpoint(ep, req, &extra).await?;
            if resp.status() != StatusCode::UNAUTHORIZED {
                return Ok(resp);
            }
            let challenges: Vec<_> = resp
                .headers()
                .get_all(WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(parse_www_authenticate)
                .collect();
            drain_small(resp).await;
            let unauthorized = |detail: String| RegistryError::Unauthorized {
                registry: ep.host.clone(),
                scope: scope.to_string(),
                detail,
            };
            let bearer = challenges.iter().find(|c| c.scheme == "bearer");
            let basic = challenges.iter().any(|c| c.scheme == "basic");
            if let Some(b) = bearer {
                let realm = b.param("realm").unwrap_or_default().to_string();
                if realm.is_empty() {
                    return Err(unauthorized("bearer challenge without a realm".into()));
                }
                self.inner.auth.set_host(
                    &ep.host,
                    HostAuth::Bearer {
                        realm: realm.clone(),
                        service: b.param("service").unwrap_or_default().to_string(),
                    },
                );
                if fetched_token {
                    token_refusals += 1;
                    self.inner.auth.forget_token(&ep.host, scope);
                    if token_refusals >= 2 {
                        return Err(unauthorized(
                            "the registry refused a freshly fetched token".into(),
                        ));
                    }
                } else if auth.is_some() || challenged {
                    return Err(unauthorized(match &ep.credentials {
                        Some(Credentials::Token(_)) => "the configured token was refused".into(),
                        _ => "access refused".into(),
                    }));
                } else {
                    // Fetch the first token with the challenge's own scope too.
                    let extra_scope: Vec<String> = b
                        .param("scope")
                        .map(|s| s.split(' ').map(str::to_string).collect())
                        .unwrap_or_default();
                    let service = b.param("service").unwrap_or_default().to_string();
                    let (t, ttl) = self
                        .fetch_token(ep, &realm, &service, scope, &extra_scope)
                        .await?;
                    self.inner.auth.put_token(&ep.host, scope, t, ttl);
                }
            } else if basic {
                self.inner.auth.set_host(&ep.host, HostAuth::Basic);
                match &ep.credentials {
                    Some(Credentials::Basic { .. }) if auth.is_none() && !challenged => {}
                    Some(Credentials::Basic { .. }) => {
                        return Err(unauthorized("username or password refused".into()))
                    }
                    _ => {
                        return Err(unauthorized(
                            "the registry wants a username and password and none is configured \
                             (hosts.toml [auth] or explicit credentials)"
                                .into(),
                        ))
                    }
                }
            } else {
                return Err(unauthorized(
                    "401 without a usable WWW-Authenticate challenge".into(),
                ));
            }
            challenged = true;
        }
    }

    /// A token for `scope` from `realm`: GET with `service`/`scope` (Basic credentials when configured),
    /// and when that fails with credentials, the OAuth2 password-grant POST.
    async fn fetch_token(
        &self,
        ep: &Endpoint,
        realm: &str,
        service: &str,
        scope: &str,
        extra_scopes: &[String],
    ) -> Result<(String, Duration)> {
        let unauthorized = |detail: String| RegistryError::Unauthorized {
            registry: ep.host.clone(),
            scope: scope.to_string(),
            detail,
        };
        let realm_uri: Uri = realm
            .parse()
            .map_err(|e| unauthorized(format!("bad token realm {realm:?}: {e}")))?;
        let (Some(rs), Some(ra)) = (realm_uri.scheme_str(), realm_uri.authority()) else {
            return Err(unauthorized(format!(
                "token realm {realm:?} is not an absolute URL"
            )));
        };
        let mut scopes: Vec<&str> = vec![scope];
        for s in extra_scopes {
            if !scopes.contains(&s.as_str()) {
                scopes.push(s);
            }
        }
        let key = TlsKey {
            ca: ep.ca.clone(),
            skip_verify: ep.skip_verify,
        };
        let mut query = Vec::new();
        if !service.is_empty() {
            query.push(format!("service={}", urlencode(service)));
        }
        for s in &scopes {
            query.push(format!("scope={}", urlencode(s)));
        }
        let base = realm_uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let sep = if base.contains('?') { '&' } else { '?' };
        let path = if query.is_empty() {
            base.to_string()
        } else {
            format!("{base}{sep}{}", query.join("&"))
        };
        let uri: Uri = format!("{rs}://{ra}{path}")
            .parse()
            .map_err(|e| unauthorized(format!("bad token URL: {e}")))?;
        let mut req = Req::new(Method::GET, path);
        if let Some(b) = ep.credentials.as_ref().and_then(Credentials::basic_header) {
            req = req.header(AUTHORIZATION, &b);
        }
        let resp = self.send_retrying(&key, &uri, &req, &[]).await?;
        let get_status = resp.status();
        if get_status.is_success() {
            return parse_token(resp).await.map_err(unauthorized);
        }
        drop(resp);
        if let Some(Credentials::Basic { username, password }) = &ep.credentials {
            let form = format!(
                "grant_type=password&client_id=berth&username={}&password={}&service={}&scope={}",
                urlencode(username),
                urlencode(password),
                urlencode(service),
                urlencode(&scopes.join(" "))
            );
            let post_uri: Uri = format!("{rs}://{ra}{base}")
                .parse()
                .map_err(|e| unauthorized(format!("bad token URL: {e}")))?;
            let req = Req::new(Method::POST, base)
                .header(
                    http::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .body(Bytes::from(form));
            let resp = self.send_retrying(&key, &post_uri, &req, &[]).await?;
            let post_status = resp.status();
            if post_status.is_success() {
                return parse_token(resp).await.map_err(unauthorized);
            }
            return Err(unauthorized(format!(
                "token server {rs}://{ra}{} refused: GET {get_status}, POST {post_status}",
                realm_uri.path()
            )));
        }
        Err(unauthorized(format!(
            "token server {rs}://{ra}{} refused an anonymous token: {get_status}",
            realm_uri.path()
        )))
    }
}

async fn parse_token(resp: Response<Incoming>) -> std::result::Result<(String, Duration), String> {
    let body = tokio::time::timeout(Duration::from_secs(60), resp.into_body().collect())
        .await
        .map_err(|_| "token response timed out".to_string())?
        .map_err(|e| format!("reading the token response: {e}"))?
        .to_bytes();
    let parsed: crate::auth::TokenResponse =
        serde_json::from_slice(&body).map_err(|e| format!("token response is not JSON: {e}"))?;
    parsed
        .into_token()
        .ok_or_else(|| "token response has neither token nor access_token".to_string())
}
