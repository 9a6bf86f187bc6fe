//! Shell text for commands on a node: POSIX quoting, and node paths that may start with `~/`.
//! Not the commands themselves (`provision` builds them) and not their execution (`ssh`).

/// Quotes a value for the POSIX shell.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A word as a person would type it: bare when the shell reads it as it is, else quoted.
pub fn sh_word(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+:=@,%".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.to_owned()
    } else {
        sh_quote(s)
    }
}

/// A node path that may start with `~/` (the remote user's home), as shell text.
pub fn remote_path(path: &str) -> String {
    match path.strip_prefix("~/") {
        Some(rest) => format!("\"$HOME\"/{}", sh_quote(rest)),
        None => sh_quote(path),
    }
}
