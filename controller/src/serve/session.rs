//! Who is asking, and whether they may: the guard every route of `fleet serve` goes through
//! (`guard`, with the route's [`Access`] from the route table), logins with their rate limit,
//! and logouts. A caller is a session (the `fleet_session` cookie: HttpOnly, SameSite=Lax,
//! Secure when configured; a new id at every login) or an API token (`Authorization: Bearer`).
//! A request that changes state must come from a trusted origin (`Origin`, else
//! `Sec-Fetch-Site`) and, from a session, carry the session's CSRF token (the `X-CSRF-Token`
//! header or a `csrf` form field), except the public login, which acts on no one's authority;
//! a token is not sent by browsers on their own, so it needs no CSRF token. Not the credentials themselves (`auth.rs`).

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::routes::Access;
use super::{App, auth, pages};
use crate::store::Principal;

/// The session cookie's name.
pub const COOKIE: &str = "fleet_session";
/// The most a form body may be (a CSRF check reads it).
const FORM_CAP: usize = 64 * 1024;
/// Failed logins allowed per client address and per user name within `LIMIT_WINDOW`.
const LIMIT_FAILURES: usize = 5;
const LIMIT_WINDOW: Duration = Duration::from_secs(60);

/// The caller of a request, as the guard found it (an extension of every guarded request).
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    /// With a session: the hash of its id and its CSRF token.
    pub session: Option<(String, String)>,
}

/// `Option<Caller>`: none for an anonymous caller of a public route.
#[derive(Debug, Clone)]
pub struct Who(pub Option<Caller>);

/// Failed logins per key (a client address or a user name), within the window.
#[derive(Default)]
pub struct Limiter {
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl Limiter {
    /// How long until `key` may try again, if it is over the limit now.
    fn wait(&self, key: &str) -> Option<Duration> {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let seen = map.get_mut(key)?;
        while seen
            .front()
            .is_some_and(|t| now.duration_since(*t) >= LIMIT_WINDOW)
        {
            seen.pop_front();
        }
        (seen.len() >= LIMIT_FAILURES)
            .then(|| LIMIT_WINDOW.saturating_sub(now.duration_since(seen[0])))
    }

    fn failed(&self, key: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded: a flood of distinct keys forgets the oldest ones' history.
        if map.len() > 10_000 {
            map.clear();
        }
        let seen = map.entry(key.to_owned()).or_default();
        seen.push_back(Instant::now());
        while seen.len() > LIMIT_FAILURES {
            seen.pop_front();
        }
    }

    fn forget(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

/// A state store that failed under a request: logged, and the caller told only that it is not
/// answering (the store's own words may name where it lives).
pub fn store_failed(e: &crate::store::StoreError) -> (StatusCode, String) {
    tracing::error!(error = %e, "the state store");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "the state store is not answering".to_owned(),
    )
}

/// `store_failed` as the answer to a request for `path`.
pub fn store_down(path: &str, e: &crate::store::StoreError) -> Response {
    let (status, message) = store_failed(e);
    refuse(path, status, &message)
}

/// An answer to a refused request: JSON under `/api/`, a small page elsewhere.
pub fn refuse(path: &str, status: StatusCode, message: &str) -> Response {
    if path.starts_with("/api/") {
        (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
    } else {
        (status, pages::message(status, message)).into_response()
    }
}

/// The session cookie's value, if the request carries one.
fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE && !value.is_empty()).then(|| value.to_owned())
        })
}

/// Who the request comes from: a bearer token, else a session cookie (none when neither is
/// valid). A bearer token that is not valid is refused outright, never taken for anonymous.
async fn caller(app: &App, headers: &HeaderMap) -> Result<Option<Caller>, (StatusCode, String)> {
    let store_error = |e: crate::store::StoreError| store_failed(&e);
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or((
                StatusCode::UNAUTHORIZED,
                "Authorization must be `Bearer <token>`".to_owned(),
            ))?;
        return match app
            .store
            .token(&auth::token_hash(token))
            .await
            .map_err(store_error)?
        {
            Some(principal) => Ok(Some(Caller {
                principal,
                session: None,
            })),
            None => Err((
                StatusCode::UNAUTHORIZED,
                "the token is not valid (revoked, expired or never made)".to_owned(),
            )),
        };
    }
    let Some(id) = session_cookie(headers) else {
        return Ok(None);
    };
    let hash = auth::session_hash(&id);
    Ok(app
        .store
        .session(&hash)
        .await
        .map_err(store_error)?
        .map(|principal| Caller {
            principal,
            session: Some((hash, auth::csrf_token(&id))),
        }))
}

/// Whether a state-changing request comes from a page of ours: its `Origin` is this server's
/// own or a trusted one; without `Origin`, `Sec-Fetch-Site` is `same-origin` or `none`;
/// without either (a script, curl) it is let through: CSRF needs a browser, and browsers
/// send one of them.
fn same_origin(app: &App, headers: &HeaderMap) -> bool {
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let own = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|host| {
                origin == format!("http://{host}") || origin == format!("https://{host}")
            });
        return own || app.options.trusted_origins.iter().any(|t| t == origin);
    }
    match headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        Some(site) => site == "same-origin" || site == "none",
        None => true,
    }
}

/// The `csrf` field of a form body, if any.
fn form_field(body: &[u8], name: &str) -> Option<String> {
    form_urlencoded_pairs(body).find_map(|(k, v)| (k == name).then_some(v))
}

fn form_urlencoded_pairs(body: &[u8]) -> impl Iterator<Item = (String, String)> + '_ {
    body.split(|b| *b == b'&').filter_map(|pair| {
        let mut it = pair.splitn(2, |b| *b == b'=');
        let k = decode(it.next()?)?;
        let v = decode(it.next().unwrap_or_default())?;
        Some((k, v))
    })
}

/// Percent-decoding with `+` as space (application/x-www-form-urlencoded).
fn decode(bytes: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Checks the session's CSRF token on a state-changing request (header, else form field);
/// hands the request back whole (its body read and put back) or refuses it.
async fn check_csrf(req: Request, expected: &str) -> Result<Request, Response> {
    let path = req.uri().path().to_owned();
    let refused = || {
        refuse(
            &path,
            StatusCode::FORBIDDEN,
            "the request lacks this session's CSRF token: reload the page and try again",
        )
    };
    if let Some(given) = req.headers().get("x-csrf-token") {
        return match given.to_str() {
            Ok(given) if auth::same(given, expected) => Ok(req),
            _ => Err(refused()),
        };
    }
    let is_form = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return Err(refused());
    }
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, FORM_CAP).await.map_err(|_| {
        refuse(
            &path,
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("a form is at most {FORM_CAP} bytes"),
        )
    })?;
    match form_field(&bytes, "csrf") {
        Some(given) if auth::same(&given, expected) => {
            Ok(Request::from_parts(parts, Body::from(bytes)))
        }
        _ => Err(refused()),
    }
}

/// The guard of every route: finds the caller, refuses what `access` does not allow (an
/// anonymous page request goes to the login page; an API request gets 401; too low a role
/// 403), checks origin and CSRF on state-changing requests, and hands the caller on.
pub async fn guard(
    State((app, access)): State<(Arc<App>, Access)>,
    mut req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path().to_owned();
    let who = match caller(&app, req.headers()).await {
        Ok(who) => who,
        Err((status, message)) => return refuse(&path, status, &message),
    };
    let changes = !matches!(*req.method(), Method::GET | Method::HEAD);
    if changes && !same_origin(&app, req.headers()) {
        return refuse(
            &path,
            StatusCode::FORBIDDEN,
            "the request comes from another site (Origin): refused",
        );
    }
    if let Access::At(role) = access {
        match &who {
            None if path.starts_with("/api/") => {
                return refuse(
                    &path,
                    StatusCode::UNAUTHORIZED,
                    "log in or send `Authorization: Bearer <token>`",
                );
            }
            None => {
                let wanted = req
                    .uri()
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_owned();
                return Redirect::to(&format!("/login?next={}", pages::url_encode(&wanted)))
                    .into_response();
            }
            Some(c) if c.principal.role < role => {
                return refuse(
                    &path,
                    StatusCode::FORBIDDEN,
                    &format!("this needs the {role} role; you are {}", c.principal.role),
                );
            }
            Some(_) => {}
        }
    }
    // A public route (the login) acts on no one's authority: the origin check covers it.
    if changes
        && access != Access::Public
        && let Some(Caller {
            session: Some((_, csrf)),
            ..
        }) = &who
    {
        req = match check_csrf(req, csrf).await {
            Ok(req) => req,
            Err(refused) => return refused,
        };
    }
    req.extensions_mut().insert(Who(who));
    next.run(req).await
}

/// The client's address, when the server knows it.
fn peer(req: &Request) -> Option<IpAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

#[derive(Deserialize)]
pub struct LoginForm {
    user: String,
    password: String,
    #[serde(default)]
    next: Option<String>,
}

/// Where a login goes next: a path of this server only (never `//host` or a URL).
fn next_path(next: Option<&str>) -> String {
    next.filter(|n| n.starts_with('/') && !n.starts_with("//") && !n.contains('\\'))
        .unwrap_or("/")
        .to_owned()
}

/// A hash that matches no password, verified when the user does not exist so that a login
/// takes as long whether or not the name is known.
fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| {
        auth::hash_password(&auth::new_session_id()).unwrap_or_else(|_| "$argon2id$".into())
    })
}

/// `POST /login`: checks the rate limit, the password (argon2, on the blocking pool), and
/// starts a new session (a new id, whatever cookie came with the request, which ends).
pub async fn login(State(app): State<Arc<App>>, req: Request) -> Response {
    let from = peer(&req).map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
    let old = session_cookie(req.headers());
    let form = match axum::Form::<LoginForm>::from_request(req, &app).await {
        Ok(axum::Form(form)) => form,
        Err(e) => return refuse("/login", StatusCode::BAD_REQUEST, &e.body_text()),
    };
    let next = next_path(form.next.as_deref());
    let keys = [format!("ip:{from}"), format!("user:{}", form.user)];
    if let Some(wait) = keys.iter().find_map(|k| app.limiter.wait(k)) {
        app.audit_web(&form.user, "login", &from, "failed: too many failed logins")
            .await;
        let mut page =
            pages::login(&next, Some("Too many failed logins: wait a minute.")).into_response();
        *page.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        if let Ok(v) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
            page.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return page;
    }
    let credentials = match app.store.user_credentials(&form.user).await {
        Ok(c) => c,
        Err(e) => return store_down("/login", &e),
    };
    let hash = credentials
        .as_ref()
        .map_or_else(|| decoy_hash().to_owned(), |(_, h)| h.clone());
    let password = form.password;
    let matched = tokio::task::spawn_blocking(move || auth::verify_password(&password, &hash))
        .await
        .unwrap_or(false);
    if !matched || credentials.is_none() {
        for k in &keys {
            app.limiter.failed(k);
        }
        app.audit_web(
            &form.user,
            "login",
            &from,
            "failed: wrong user name or password",
        )
        .await;
        let mut page = pages::login(&next, Some("Wrong user name or password.")).into_response();
        *page.status_mut() = StatusCode::UNAUTHORIZED;
        return page;
    }
    for k in &keys {
        app.limiter.forget(k);
    }
    if let Some(old) = old {
        let _ = app.store.end_session(&auth::session_hash(&old)).await;
    }
    let id = auth::new_session_id();
    let expires = crate::store::now_ms()
        + i64::try_from(app.options.session_ttl.as_millis()).unwrap_or(i64::MAX / 2);
    if let Err(e) = app
        .store
        .create_session(&auth::session_hash(&id), &form.user, expires)
        .await
    {
        return store_down("/login", &e);
    }
    app.audit_web(&form.user, "login", &from, "ok").await;
    let mut answer = Redirect::to(&next).into_response();
    if let Ok(v) = HeaderValue::from_str(&app.cookie(&id, app.options.session_ttl)) {
        answer.headers_mut().insert(header::SET_COOKIE, v);
    }
    answer
}

/// `POST /logout`: ends the session and clears the cookie.
pub async fn logout(State(app): State<Arc<App>>, req: Request) -> Response {
    let from = peer(&req).map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
    let who = req.extensions().get::<Who>().and_then(|w| w.0.clone());
    if let Some(Caller {
        principal,
        session: Some((hash, _)),
    }) = who
    {
        let _ = app.store.end_session(&hash).await;
        app.audit_web(&principal.name, "logout", &from, "ok").await;
    }
    let mut answer = Redirect::to("/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&app.cookie("", Duration::ZERO)) {
        answer.headers_mut().insert(header::SET_COOKIE, v);
    }
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_goes_on_to_a_local_path_only() {
        assert_eq!(next_path(Some("/clusters/acme?x=1")), "/clusters/acme?x=1");
        for bad in ["//evil.example", "https://evil.example/", "/\\evil", "evil"] {
            assert_eq!(next_path(Some(bad)), "/", "{bad}");
        }
        assert_eq!(next_path(None), "/");
    }

    #[test]
    fn form_fields_are_decoded() {
        let body = b"user=a+b&csrf=%41%42c&x";
        assert_eq!(form_field(body, "csrf").as_deref(), Some("ABc"));
        assert_eq!(form_field(body, "user").as_deref(), Some("a b"));
        assert_eq!(form_field(b"csrf=%4", "csrf"), None);
    }

    #[test]
    fn the_limiter_counts_failures_per_key() {
        let l = Limiter::default();
        for _ in 0..LIMIT_FAILURES {
            assert!(l.wait("k").is_none());
            l.failed("k");
        }
        assert!(l.wait("k").is_some());
        assert!(l.wait("other").is_none());
        l.forget("k");
        assert!(l.wait("k").is_none());
    }
}
