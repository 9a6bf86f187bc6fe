//! The server-rendered pages of `fleet serve` (minijinja; the templates are compiled into the
//! binary from `templates/`, every name ends in `.html`, so every value is HTML-escaped).

use axum::http::StatusCode;
use axum::response::Html;
use minijinja::{Environment, context};

use super::session::Caller;

fn environment() -> &'static Environment<'static> {
    static ENV: std::sync::OnceLock<Environment<'static>> = std::sync::OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        for (name, text) in [
            ("layout.html", include_str!("templates/layout.html")),
            ("login.html", include_str!("templates/login.html")),
            ("message.html", include_str!("templates/message.html")),
            ("home.html", include_str!("templates/home.html")),
        ] {
            env.add_template(name, text)
                .expect("the compiled-in templates parse");
        }
        env
    })
}

fn render(name: &str, ctx: minijinja::Value) -> Html<String> {
    match environment().get_template(name).and_then(|t| t.render(ctx)) {
        Ok(html) => Html(html),
        Err(e) => {
            tracing::error!(template = name, error = %e, "rendering a page");
            Html(
                "<!doctype html><title>Fleet</title><p>This page could not be rendered.</p>".into(),
            )
        }
    }
}

/// The caller as the layout shows it.
fn user(caller: Option<&Caller>) -> (minijinja::Value, Option<String>) {
    match caller {
        Some(c) => (
            context! { name => c.principal.name.clone(), role => c.principal.role.as_str() },
            c.session.as_ref().map(|(_, csrf)| csrf.clone()),
        ),
        None => (minijinja::Value::from(()), None),
    }
}

pub fn login(next: &str, error: Option<&str>) -> Html<String> {
    render("login.html", context! { next, error })
}

pub fn message(status: StatusCode, message: &str) -> Html<String> {
    render(
        "message.html",
        context! { status => status.to_string(), message },
    )
}

pub fn home(caller: &Caller) -> Html<String> {
    let (user, csrf) = user(Some(caller));
    render("home.html", context! { user, csrf })
}

/// Percent-encodes everything but unreserved characters (a value in a query string).
pub fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
