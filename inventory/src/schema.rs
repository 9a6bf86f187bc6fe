//! Checks the YAML tree against the inventory schema, reporting every problem with its
//! position, and resolves inherited settings into the model; not the YAML reading (see `yaml`),
//! the generic field readers (see `fields`) nor target selection (see `select`).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};

use crate::fields::{self, Fields, join, wrong_type};
use crate::model::{
    Canary, Cluster, Customer, Jump, LoadBalancing, Mode, Node, Rollout, Ssh, TenantSpec,
};
use crate::problem::{Pos, Problems, typo_hint};
use crate::secret::{self, Setting};
use crate::window::{MaintenanceWindow, Weekday};
use crate::yaml::{Entry, Value, Yaml};

const INHERITABLE: [&str; 4] = ["ssh", "node_root", "labels", "vars"];
const ROOT_KEYS: [&str; 2] = ["defaults", "customers"];
const CUSTOMER_KEYS: [&str; 3] = ["mode", "clusters", "maintenance_windows"];
const CLUSTER_KEYS: [&str; 8] = [
    "redis_url",
    "postgres_url",
    "shared_storage",
    "load_balancing",
    "rollout",
    "nodes",
    "maintenance_windows",
    "tenants",
];
const TENANT_KEYS: [&str; 2] = ["name", "max_running_flows"];
const TENANT_HINT: &str = "a tenant is a name (`acme`) or { name: acme, max_running_flows: 2 }; a name starts with a-z, then a-z, 0-9, '_' or '-', at most 48, and `default` is taken";
const WINDOW_KEYS: [&str; 4] = ["days", "start", "end", "utc_offset"];
const WINDOW_HINT: &str = "a maintenance window is { days: [sat, sun], start: \"02:00\", end: \"05:00\" }, with an optional utc_offset: \"+01:00\" (UTC when absent)";
const NODE_KEYS: [&str; 3] = ["name", "host", "weight"];
const SSH_KEYS: [&str; 7] = [
    "user",
    "port",
    "identity_file",
    "deploy_identity_file",
    "authorized_keys",
    "known_hosts",
    "jump",
];
const JUMP_KEYS: [&str; 3] = ["host", "port", "user"];
const ROLLOUT_KEYS: [&str; 5] = [
    "max_unavailable",
    "canary",
    "min_healthy_secs",
    "health_timeout_secs",
    "smoke_flow",
];
/// What the ETL server accepts as a flow name (`smoke_flow` names one).
pub const FLOW_NAME_HINT: &str =
    "a flow name is 1 to 63 bytes of letters, digits, `_`, `-` and `.`, as the ETL server accepts";

/// The rule every customer, cluster and node name follows (also checked by the ETL server for
/// its `node`).
pub const NAME_HINT: &str =
    "names match [a-z0-9][a-z0-9_.-]*: lowercase letters, digits, `_`, `.` and `-`";
const SECRET_HINT: &str = "a secret reference is `env:NAME` or `file:PATH`";

/// The resolved inventory, meaningful only when no problem was reported.
#[derive(Default)]
pub(crate) struct Resolved {
    pub customers: Vec<Customer>,
    pub clusters: Vec<Cluster>,
    pub nodes: Vec<Node>,
}

/// Resolves a path written in the inventory: absolute and `~/...` paths are kept as written,
/// relative ones are joined to the inventory's folder.
pub(crate) fn resolve_path(written: &str, base_dir: &Path) -> PathBuf {
    let path = Path::new(written);
    if written == "~" || written.starts_with("~/") || path.is_absolute() {
        return path.to_path_buf();
    }
    let mut out = base_dir.to_path_buf();
    for component in path.components() {
        if component != Component::CurDir {
            out.push(component);
        }
    }
    out
}

pub(crate) fn check(root: Option<&Yaml>, base_dir: &Path, problems: &mut Problems) -> Resolved {
    let mut checker = Checker {
        problems,
        base_dir: base_dir.to_path_buf(),
        node_names: HashMap::new(),
        out: Resolved::default(),
    };
    match root {
        None => checker.problems.add_hint(
            Pos::new(1, 1),
            "<root>",
            "the inventory is empty",
            Some("start with `customers:`"),
        ),
        Some(root) => checker.root(root),
    }
    checker.out
}

/// Whether `s` follows `NAME_HINT`'s rule.
pub fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.-".contains(c))
}

/// What a tenant's name may be, for messages.
pub const TENANT_NAME_HINT: &str = "a-z first, then a-z, 0-9, '_' or '-', at most 48";

/// Whether `s` is a tenant's name, as the ETL server takes it: what follows `tenants/` in its
/// paths and `tenant_` in its schema.
pub fn is_tenant_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && s.len() <= 48
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// Whether `s` is a name the ETL server accepts for a flow (its `pipeline::flow` rule).
pub fn is_flow_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn is_label_key(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-/".contains(c))
}

fn is_host(s: &str) -> bool {
    if s.parse::<IpAddr>().is_ok() {
        return true;
    }
    let s = s.strip_suffix('.').unwrap_or(s);
    if s.is_empty() || s.len() > 253 {
        return false;
    }
    let labels: Vec<&str> = s.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    // An all-digit last label means an IPv4 address was meant, and it did not parse.
    let looks_numeric = labels
        .last()
        .is_some_and(|l| l.chars().all(|c| c.is_ascii_digit()));
    labels.iter().all(label_ok) && !looks_numeric
}

/// Settings that every level may set; a nearer level wins.
#[derive(Clone, Default)]
struct Layer {
    user: Option<String>,
    port: Option<u16>,
    identity_file: Option<PathBuf>,
    deploy_identity_file: Option<PathBuf>,
    authorized_keys: Option<String>,
    known_hosts: Option<PathBuf>,
    jump: Option<Jump>,
    node_root: Option<PathBuf>,
    labels: BTreeMap<String, String>,
    vars: BTreeMap<String, serde_json::Value>,
}

impl Layer {
    /// `self` (the nearer level) over `parent`.
    fn over(self, parent: &Layer) -> Layer {
        let mut labels = parent.labels.clone();
        labels.extend(self.labels);
        let mut vars = parent.vars.clone();
        vars.extend(self.vars);
        Layer {
            user: self.user.or_else(|| parent.user.clone()),
            port: self.port.or(parent.port),
            identity_file: self.identity_file.or_else(|| parent.identity_file.clone()),
            deploy_identity_file: self
                .deploy_identity_file
                .or_else(|| parent.deploy_identity_file.clone()),
            authorized_keys: self
                .authorized_keys
                .or_else(|| parent.authorized_keys.clone()),
            known_hosts: self.known_hosts.or_else(|| parent.known_hosts.clone()),
            jump: self.jump.or_else(|| parent.jump.clone()),
            node_root: self.node_root.or_else(|| parent.node_root.clone()),
            labels,
            vars,
        }
    }
}

struct Cx<'a> {
    customer: &'a str,
    cluster: &'a str,
    path: &'a str,
    mode: Mode,
    /// The customer's maintenance windows, which its clusters inherit.
    windows: &'a [MaintenanceWindow],
}

struct Checker<'p> {
    problems: &'p mut Problems,
    base_dir: PathBuf,
    /// Node name → where it was first defined, across the whole file.
    node_names: HashMap<String, (Pos, String)>,
    out: Resolved,
}

impl Checker<'_> {
    /// Paths reach shell commands and `authorized_keys` lines on the nodes: a control
    /// character (a newline, say) would start a line of its own there.
    fn plain_text(&mut self, y: &Yaml, path: &str, text: &str) -> bool {
        if !text.chars().any(char::is_control) {
            return true;
        }
        self.problems.add_hint(
            y.pos,
            path,
            format!("{text:?} has a control character"),
            Some("paths are plain text: no newlines, tabs or other control characters"),
        );
        false
    }

    fn absolute_path(&mut self, y: &Yaml, path: &str) -> Option<PathBuf> {
        let text = fields::string(y, path, self.problems)?;
        if !self.plain_text(y, path, &text) {
            return None;
        }
        if Path::new(&text).is_absolute() {
            Some(PathBuf::from(text))
        } else {
            self.problems.add_hint(
                y.pos,
                path,
                format!("`{text}` is not an absolute path"),
                Some("write it from the root, e.g. /opt/etl"),
            );
            None
        }
    }

    fn file_path(&mut self, y: &Yaml, path: &str) -> Option<PathBuf> {
        let text = fields::string(y, path, self.problems)?;
        if text.trim().is_empty() {
            self.problems.add(y.pos, path, "the path is empty");
            return None;
        }
        if !self.plain_text(y, path, &text) {
            return None;
        }
        Some(resolve_path(&text, &self.base_dir))
    }

    fn name(&mut self, text: &str, pos: Pos, path: &str, what: &str) -> bool {
        if is_name(text) {
            return true;
        }
        self.problems.add_hint(
            pos,
            path,
            format!("invalid {what} name `{text}`"),
            Some(NAME_HINT),
        );
        false
    }

    fn user(&mut self, y: &Yaml, path: &str) -> Option<String> {
        let user = fields::string(y, path, self.problems)?;
        if user.is_empty()
            || user
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '@' || c == ':')
        {
            self.problems
                .add(y.pos, path, format!("invalid SSH user `{user}`"));
            return None;
        }
        Some(user)
    }

    fn host(&mut self, y: &Yaml, path: &str) -> Option<String> {
        let host = fields::string(y, path, self.problems)?;
        if is_host(&host) {
            Some(host)
        } else {
            self.problems.add_hint(
                y.pos,
                path,
                format!("`{host}` is not a valid hostname or IP address"),
                Some("write a DNS name such as node1.example.com or an IP address"),
            );
            None
        }
    }

    fn port(&mut self, y: &Yaml, path: &str) -> Option<u16> {
        fields::int(y, path, 1, 65535, self.problems).and_then(|p| u16::try_from(p).ok())
    }

    /// A URL setting: a secret reference, or a literal URL with one of `schemes`.
    fn url(&mut self, y: &Yaml, path: &str, schemes: &[&str], example: &str) -> Option<Setting> {
        let text = fields::string(y, path, self.problems)?;
        if let Some(reference) = secret::parse_ref(&text, &self.base_dir) {
            return match reference {
                Ok(reference) => Some(Setting::Secret(reference)),
                Err(message) => {
                    self.problems
                        .add_hint(y.pos, path, message, Some(SECRET_HINT));
                    None
                }
            };
        }
        let accepted = schemes
            .iter()
            .map(|s| format!("{s}://"))
            .collect::<Vec<_>>()
            .join(", ");
        let hint = format!(
            "write a {accepted} URL such as {example}, or a secret reference `env:NAME` / `file:PATH`"
        );
        // The message never repeats the URL: it may carry a password.
        match url::Url::parse(&text) {
            Err(err) => {
                self.problems
                    .add_hint(y.pos, path, format!("not a valid URL: {err}"), Some(hint));
                None
            }
            Ok(url) if !schemes.contains(&url.scheme()) => {
                self.problems.add_hint(
                    y.pos,
                    path,
                    format!("unsupported URL scheme `{}`", url.scheme()),
                    Some(hint),
                );
                None
            }
            Ok(url) if url.scheme() == "unix" && url.path().is_empty() => {
                self.problems
                    .add_hint(y.pos, path, "the unix socket path is empty", Some(hint));
                None
            }
            Ok(url)
                if url.scheme().starts_with("redis")
                    && url.host_str().is_none_or(str::is_empty) =>
            {
                self.problems
                    .add_hint(y.pos, path, "the URL has no host", Some(hint));
                None
            }
            Ok(_) => Some(Setting::Literal(text)),
        }
    }

    fn jump(&mut self, y: &Yaml, path: &str) -> Option<Jump> {
        if let Value::Map(_) = y.value {
            let f = Fields::read(y, path, &JUMP_KEYS, self.problems)?;
            let host = f
                .require("host", self.problems)
                .and_then(|h| self.host(h, &f.child("host")));
            let port = match f.opt("port") {
                Some(p) => self.port(p, &f.child("port")),
                None => Some(22),
            };
            let user = match f.opt("user") {
                Some(u) => Some(self.user(u, &f.child("user"))?),
                None => None,
            };
            return Some(Jump {
                user,
                host: host?,
                port: port?,
            });
        }
        let text = fields::string(y, path, self.problems)?;
        let (user, host_port) = match text.rsplit_once('@') {
            Some((user, rest)) => (Some(user), rest),
            None => (None, text.as_str()),
        };
        let (host, port) = if let Some(rest) = host_port.strip_prefix('[') {
            match rest.split_once(']') {
                Some((host, "")) => (host, None),
                Some((host, port)) => (host, Some(port.strip_prefix(':').unwrap_or(port))),
                None => (host_port, None),
            }
        } else {
            match host_port.split_once(':') {
                Some((host, port)) if !port.contains(':') => (host, Some(port)),
                _ => (host_port, None),
            }
        };
        let hint = Some("write `[user@]host[:port]` or a map { host, port, user }");
        if host.is_empty() || !is_host(host) {
            self.problems
                .add_hint(y.pos, path, format!("invalid jump host `{text}`"), hint);
            return None;
        }
        if let Some(user) = user
            && (user.is_empty() || user.chars().any(char::is_whitespace))
        {
            self.problems
                .add_hint(y.pos, path, format!("invalid jump user in `{text}`"), hint);
            return None;
        }
        let port = match port {
            None => 22,
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p >= 1 => p,
                _ => {
                    self.problems.add_hint(
                        y.pos,
                        path,
                        format!("invalid jump port `{p}`: must be within 1..=65535"),
                        hint,
                    );
                    return None;
                }
            },
        };
        Some(Jump {
            user: user.map(str::to_owned),
            host: host.to_owned(),
            port,
        })
    }

    fn ssh(&mut self, y: &Yaml, path: &str, layer: &mut Layer) {
        let Some(f) = Fields::read(y, path, &SSH_KEYS, self.problems) else {
            return;
        };
        if let Some(v) = f.opt("user") {
            layer.user = self.user(v, &f.child("user"));
        }
        if let Some(v) = f.opt("port") {
            layer.port = self.port(v, &f.child("port"));
        }
        if let Some(v) = f.opt("identity_file") {
            layer.identity_file = self.file_path(v, &f.child("identity_file"));
        }
        if let Some(v) = f.opt("deploy_identity_file") {
            layer.deploy_identity_file = self.file_path(v, &f.child("deploy_identity_file"));
        }
        if let Some(v) = f.opt("authorized_keys") {
            layer.authorized_keys = fields::string(v, &f.child("authorized_keys"), self.problems);
        }
        if let Some(v) = f.opt("known_hosts") {
            layer.known_hosts = self.file_path(v, &f.child("known_hosts"));
        }
        if let Some(v) = f.opt("jump") {
            layer.jump = self.jump(v, &f.child("jump"));
        }
    }

    fn labels(&mut self, y: &Yaml, path: &str) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::new();
        let Value::Map(entries) = &y.value else {
            wrong_type(y, path, "a map of labels", self.problems);
            return labels;
        };
        for e in entries {
            let key_path = join(path, &e.key);
            if !is_label_key(&e.key) {
                self.problems.add_hint(
                    e.key_pos,
                    &key_path,
                    format!("invalid label key `{}`", e.key),
                    Some("label keys match [A-Za-z0-9][A-Za-z0-9_.-/]*"),
                );
                continue;
            }
            match &e.value.value {
                Value::Str(s) => {
                    labels.insert(e.key.clone(), s.clone());
                }
                Value::Int(_) | Value::Float(_) | Value::Bool(_) => {
                    labels.insert(e.key.clone(), e.value.raw.clone());
                }
                Value::Null => {
                    self.problems.add_hint(
                        e.key_pos,
                        &key_path,
                        "label value is empty",
                        Some("write `\"\"` for an empty label"),
                    );
                }
                Value::Seq(_) | Value::Map(_) => {
                    wrong_type(&e.value, &key_path, "a string", self.problems);
                }
            }
        }
        labels
    }

    fn vars(&mut self, y: &Yaml, path: &str) -> BTreeMap<String, serde_json::Value> {
        let Value::Map(entries) = &y.value else {
            wrong_type(y, path, "a map of variables", self.problems);
            return BTreeMap::new();
        };
        entries
            .iter()
            .map(|e| (e.key.clone(), to_json(&e.value)))
            .collect()
    }

    /// The inheritable settings set at this level.
    fn layer(&mut self, f: &Fields<'_>) -> Layer {
        let mut layer = Layer::default();
        if let Some(y) = f.opt("ssh") {
            self.ssh(y, &f.child("ssh"), &mut layer);
        }
        if let Some(y) = f.opt("node_root") {
            layer.node_root = self.absolute_path(y, &f.child("node_root"));
        }
        if let Some(y) = f.opt("labels") {
            layer.labels = self.labels(y, &f.child("labels"));
        }
        if let Some(y) = f.opt("vars") {
            layer.vars = self.vars(y, &f.child("vars"));
        }
        layer
    }

    fn root(&mut self, root: &Yaml) {
        let Some(f) = Fields::read(root, "<root>", &ROOT_KEYS, self.problems) else {
            return;
        };
        let defaults = match f.opt("defaults") {
            Some(y) => match Fields::read(y, "defaults", &INHERITABLE, self.problems) {
                Some(d) => self.layer(&d),
                None => Layer::default(),
            },
            None => Layer::default(),
        };
        let Some(customers) = f.require("customers", self.problems) else {
            return;
        };
        let Value::Map(entries) = &customers.value else {
            wrong_type(customers, "customers", "a map of customers", self.problems);
            return;
        };
        if entries.is_empty() {
            self.problems
                .add(customers.pos, "customers", "no customers defined");
        }
        for e in entries {
            self.customer(e, &defaults);
        }
    }

    fn customer(&mut self, e: &Entry, defaults: &Layer) {
        let path = format!("customers.{}", e.key);
        self.name(&e.key, e.key_pos, &path, "customer");
        let allowed = [&CUSTOMER_KEYS[..], &INHERITABLE[..]].concat();
        let Some(f) = Fields::read(&e.value, &path, &allowed, self.problems) else {
            return;
        };
        let modes: Vec<(&str, Mode)> = Mode::ALL.iter().map(|m| (m.as_str(), *m)).collect();
        let mode = f
            .require("mode", self.problems)
            .and_then(|y| fields::enum_value(y, &f.child("mode"), "mode", &modes, self.problems))
            .unwrap_or(Mode::Shared);
        let windows = self.windows_of(&f, mode);
        let layer = self.layer(&f).over(defaults);
        let mut cluster_names = Vec::new();
        if let Some(clusters) = f.require("clusters", self.problems) {
            let clusters_path = f.child("clusters");
            match &clusters.value {
                Value::Map(entries) => {
                    if entries.is_empty() {
                        self.problems.add_hint(
                            clusters.pos,
                            &clusters_path,
                            "customer has no clusters",
                            Some("add a cluster, or remove the customer"),
                        );
                    }
                    for ce in entries {
                        cluster_names.push(ce.key.clone());
                        let cx = Cx {
                            customer: &e.key,
                            cluster: &ce.key,
                            path: &join(&clusters_path, &ce.key),
                            mode,
                            windows: &windows,
                        };
                        self.cluster(&cx, ce, &layer);
                    }
                }
                _ => wrong_type(clusters, &clusters_path, "a map of clusters", self.problems),
            }
        }
        self.out.customers.push(Customer {
            name: e.key.clone(),
            mode,
            clusters: cluster_names,
        });
    }

    /// The `maintenance_windows` of a customer or cluster (none when absent); reported when
    /// the customer is not `customer_managed`: only those wait for their windows.
    fn windows_of(&mut self, f: &Fields<'_>, mode: Mode) -> Vec<MaintenanceWindow> {
        let path = f.child("maintenance_windows");
        let Some(y) = f.opt("maintenance_windows") else {
            return Vec::new();
        };
        if mode != Mode::CustomerManaged {
            self.problems.add_hint(
                y.pos,
                &path,
                format!("maintenance windows apply only to customer_managed customers, and this one is {mode}"),
                Some("remove them, or set the customer's mode to customer_managed"),
            );
            return Vec::new();
        }
        let Value::Seq(items) = &y.value else {
            self.problems.add_hint(
                y.pos,
                &path,
                format!("expected a list of maintenance windows, found {}", y.kind()),
                Some(WINDOW_HINT),
            );
            return Vec::new();
        };
        items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| self.window(item, &format!("{path}[{i}]")))
            .collect()
    }

    fn window(&mut self, y: &Yaml, path: &str) -> Option<MaintenanceWindow> {
        let f = Fields::read(y, path, &WINDOW_KEYS, self.problems)?;
        let days = f
            .require("days", self.problems)
            .and_then(|d| self.days(d, &f.child("days")));
        let start = f
            .require("start", self.problems)
            .and_then(|t| self.clock(t, &f.child("start"), false));
        let end = f
            .require("end", self.problems)
            .and_then(|t| self.clock(t, &f.child("end"), true));
        let utc_offset = match f.opt("utc_offset") {
            Some(o) => self.utc_offset(o, &f.child("utc_offset")),
            None => Some(0),
        };
        let (days, start, end, utc_offset) = (days?, start?, end?, utc_offset?);
        if start == end % 1440 {
            let at = f.get("end").map_or(f.pos(), |e| e.pos);
            self.problems.add_hint(
                at,
                &f.child("end"),
                format!("the window starts and ends at {}: it never opens", crate::window::clock(start)),
                Some("a window across midnight ends on the next day's clock, e.g. start: \"22:00\", end: \"02:00\""),
            );
            return None;
        }
        Some(MaintenanceWindow {
            days,
            start,
            end,
            utc_offset,
        })
    }

    fn days(&mut self, y: &Yaml, path: &str) -> Option<Vec<Weekday>> {
        let Value::Seq(items) = &y.value else {
            self.problems.add_hint(
                y.pos,
                path,
                format!("expected a list of days, found {}", y.kind()),
                Some("write e.g. [sat, sun]"),
            );
            return None;
        };
        if items.is_empty() {
            self.problems
                .add_hint(y.pos, path, "no days", Some("write e.g. [sat, sun]"));
            return None;
        }
        let names: Vec<(&str, Weekday)> = Weekday::ALL.iter().map(|d| (d.as_str(), *d)).collect();
        let mut days = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let day_path = format!("{path}[{i}]");
            let Some(text) = fields::string(item, &day_path, self.problems) else {
                ok = false;
                continue;
            };
            match fields::one_of(
                &text.to_lowercase(),
                item.pos,
                &day_path,
                "day",
                &names,
                self.problems,
            ) {
                Some(day) if days.contains(&day) => {
                    self.problems
                        .add(item.pos, &day_path, format!("`{text}` is listed twice"));
                    ok = false;
                }
                Some(day) => days.push(day),
                None => ok = false,
            }
        }
        days.sort();
        ok.then_some(days)
    }

    /// `HH:MM` as minutes after midnight; `24:00` only as an end.
    fn clock(&mut self, y: &Yaml, path: &str, end: bool) -> Option<u16> {
        let text = fields::string(y, path, self.problems)?;
        let parsed = text.split_once(':').and_then(|(h, m)| {
            let digits =
                |s: &str| !s.is_empty() && s.len() <= 2 && s.bytes().all(|b| b.is_ascii_digit());
            if !digits(h) || m.len() != 2 || !digits(m) {
                return None;
            }
            let (h, m) = (h.parse::<u16>().ok()?, m.parse::<u16>().ok()?);
            let minutes = h * 60 + m;
            (m < 60 && (h < 24 || (end && minutes == 1440))).then_some(minutes)
        });
        if parsed.is_none() {
            self.problems.add_hint(
                y.pos,
                path,
                format!("`{text}` is not a time of day"),
                Some(if end {
                    "write HH:MM from 00:00 to 24:00, e.g. \"05:00\""
                } else {
                    "write HH:MM from 00:00 to 23:59, e.g. \"02:00\""
                }),
            );
        }
        parsed
    }

    /// `+HH:MM` / `-HH:MM` (or `Z`, `UTC`) as minutes east of UTC, within ±14:00.
    fn utc_offset(&mut self, y: &Yaml, path: &str) -> Option<i16> {
        let text = fields::string(y, path, self.problems)?;
        let parsed = match text.as_str() {
            "Z" | "UTC" | "utc" => Some(0),
            _ => {
                let (sign, rest) = match text.as_bytes().first() {
                    Some(b'+') => (1, &text[1..]),
                    Some(b'-') => (-1, &text[1..]),
                    _ => (0, ""),
                };
                rest.split_once(':').and_then(|(h, m)| {
                    let ok = h.len() == 2
                        && m.len() == 2
                        && rest.bytes().filter(u8::is_ascii_digit).count() == 4;
                    let (h, m) = (h.parse::<i16>().ok()?, m.parse::<i16>().ok()?);
                    (ok && sign != 0 && m < 60 && h * 60 + m <= 14 * 60)
                        .then_some(sign * (h * 60 + m))
                })
            }
        };
        if parsed.is_none() {
            self.problems.add_hint(
                y.pos,
                path,
                format!("`{text}` is not a UTC offset"),
                Some("write a fixed offset +HH:MM or -HH:MM within ±14:00, e.g. \"+01:00\" (no time-zone names: a window does not move with daylight saving)"),
            );
        }
        parsed
    }

    fn rollout(&mut self, y: &Yaml, path: &str) -> (Rollout, Option<(String, Pos, String)>) {
        let mut rollout = Rollout::default();
        let mut canary_node = None;
        let Some(f) = Fields::read(y, path, &ROLLOUT_KEYS, self.problems) else {
            return (rollout, None);
        };
        if let Some(v) = f.opt("max_unavailable")
            && let Some(n) = fields::int(
                v,
                &f.child("max_unavailable"),
                1,
                i64::from(u32::MAX),
                self.problems,
            )
        {
            rollout.max_unavailable = u32::try_from(n).unwrap_or(u32::MAX);
        }
        if let Some(v) = f.opt("canary") {
            let canary_path = f.child("canary");
            match &v.value {
                Value::Bool(false) => rollout.canary = Canary::Off,
                Value::Bool(true) => rollout.canary = Canary::Auto,
                Value::Str(name) => {
                    if self.name(name, v.pos, &canary_path, "node") {
                        rollout.canary = Canary::Node(name.clone());
                        canary_node = Some((name.clone(), v.pos, canary_path));
                    }
                }
                _ => wrong_type(
                    v,
                    &canary_path,
                    "`true`, `false` or a node name",
                    self.problems,
                ),
            }
        }
        let mut min_healthy_pos = None;
        if let Some(v) = f.opt("min_healthy_secs")
            && let Some(n) =
                fields::int(v, &f.child("min_healthy_secs"), 0, i64::MAX, self.problems)
        {
            rollout.min_healthy_secs = u64::try_from(n).unwrap_or(0);
            min_healthy_pos = Some(v.pos);
        }
        let mut timeout_pos = None;
        if let Some(v) = f.opt("health_timeout_secs")
            && let Some(n) = fields::int(
                v,
                &f.child("health_timeout_secs"),
                1,
                i64::MAX,
                self.problems,
            )
        {
            rollout.health_timeout_secs = u64::try_from(n).unwrap_or(1);
            timeout_pos = Some(v.pos);
        }
        if rollout.health_timeout_secs < rollout.min_healthy_secs {
            let (pos, key) = match (timeout_pos, min_healthy_pos) {
                (Some(pos), _) => (pos, "health_timeout_secs"),
                (None, Some(pos)) => (pos, "min_healthy_secs"),
                (None, None) => (f.pos(), "health_timeout_secs"),
            };
            self.problems.add_hint(
                pos,
                &f.child(key),
                format!(
                    "health_timeout_secs ({}) is shorter than min_healthy_secs ({})",
                    rollout.health_timeout_secs, rollout.min_healthy_secs
                ),
                Some("a node could never pass its health gate; raise health_timeout_secs"),
            );
        }
        if let Some(v) = f.opt("smoke_flow") {
            let path = f.child("smoke_flow");
            if let Some(flow) = fields::string(v, &path, self.problems) {
                if is_flow_name(&flow) {
                    rollout.smoke_flow = Some(flow);
                } else {
                    self.problems.add_hint(
                        v.pos,
                        &path,
                        format!("`{flow}` is not a flow name"),
                        Some(FLOW_NAME_HINT),
                    );
                }
            }
        }
        (rollout, canary_node)
    }

    fn cluster(&mut self, cx: &Cx<'_>, e: &Entry, parent: &Layer) {
        self.name(&e.key, e.key_pos, cx.path, "cluster");
        let allowed = [&CLUSTER_KEYS[..], &INHERITABLE[..]].concat();
        let Some(f) = Fields::read(&e.value, cx.path, &allowed, self.problems) else {
            return;
        };
        let redis_url = f.require("redis_url", self.problems).and_then(|y| {
            self.url(
                y,
                &f.child("redis_url"),
                &["redis", "rediss", "unix"],
                "redis://10.0.0.5:6379/0",
            )
        });
        let postgres_url = f.require("postgres_url", self.problems).and_then(|y| {
            self.url(
                y,
                &f.child("postgres_url"),
                &["postgres", "postgresql"],
                "postgres://etl@10.0.0.6:5432/etl",
            )
        });
        let shared_storage = f
            .require("shared_storage", self.problems)
            .and_then(|y| self.absolute_path(y, &f.child("shared_storage")));
        let algorithms: Vec<(&str, LoadBalancing)> = LoadBalancing::ALL
            .iter()
            .map(|a| (a.as_str(), *a))
            .collect();
        let load_balancing = f
            .opt("load_balancing")
            .and_then(|y| {
                fields::enum_value(
                    y,
                    &f.child("load_balancing"),
                    "load-balancing algorithm",
                    &algorithms,
                    self.problems,
                )
            })
            .unwrap_or_default();
        let (rollout, canary_node) = match f.opt("rollout") {
            Some(y) => self.rollout(y, &f.child("rollout")),
            None => (Rollout::default(), None),
        };
        let maintenance_windows = match f.get("maintenance_windows") {
            Some(_) => self.windows_of(&f, cx.mode),
            None => cx.windows.to_vec(),
        };
        let tenants = match f.opt("tenants") {
            Some(y) => self.tenants(y, &f.child("tenants"), cx.mode),
            None => Vec::new(),
        };
        let layer = self.layer(&f).over(parent);

        let mut node_names = Vec::new();
        if let Some(nodes) = f.require("nodes", self.problems) {
            let nodes_path = f.child("nodes");
            match &nodes.value {
                Value::Seq(items) => {
                    if items.is_empty() {
                        self.problems.add_hint(
                            nodes.pos,
                            &nodes_path,
                            "cluster has no nodes",
                            Some("a cluster needs at least one node"),
                        );
                    }
                    for (i, item) in items.iter().enumerate() {
                        let path = format!("{nodes_path}[{i}]");
                        if let Some(name) = self.node(cx, item, &path, &layer)
                            && !node_names.contains(&name)
                        {
                            node_names.push(name);
                        }
                    }
                }
                _ => wrong_type(nodes, &nodes_path, "a list of nodes", self.problems),
            }
        }
        if let Some((name, pos, path)) = canary_node
            && !node_names.contains(&name)
        {
            let names: Vec<&str> = node_names.iter().map(String::as_str).collect();
            let hint = typo_hint(&name, &names, "nodes of this cluster");
            self.problems.add_hint(
                pos,
                &path,
                format!("canary `{name}` is not a node of this cluster"),
                Some(hint),
            );
        }
        if let (Some(redis_url), Some(postgres_url), Some(shared_storage)) =
            (redis_url, postgres_url, shared_storage)
        {
            self.out.clusters.push(Cluster {
                customer: cx.customer.to_owned(),
                name: cx.cluster.to_owned(),
                redis_url,
                postgres_url,
                shared_storage,
                load_balancing,
                rollout,
                maintenance_windows,
                tenants,
                nodes: node_names,
            });
        }
    }

    /// A shared cluster's `tenants`: the customers on it, each its own tenant of the ETL
    /// servers (`[tenants.NAME]` in their config).
    fn tenants(&mut self, y: &Yaml, path: &str, mode: Mode) -> Vec<TenantSpec> {
        if mode != Mode::Shared {
            self.problems.add_hint(
                y.pos,
                path,
                format!("tenants apply only to shared customers' clusters, and this one is {mode}"),
                Some("remove them, or set the customer's mode to shared"),
            );
            return Vec::new();
        }
        let Value::Seq(items) = &y.value else {
            wrong_type(y, path, "a list of tenants", self.problems);
            return Vec::new();
        };
        let mut out: Vec<TenantSpec> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let at = format!("{path}[{i}]");
            let (name, max_running_flows, pos) = match &item.value {
                Value::Map(_) => {
                    let Some(f) = Fields::read(item, &at, &TENANT_KEYS, self.problems) else {
                        continue;
                    };
                    let Some(name) = f
                        .require("name", self.problems)
                        .and_then(|n| fields::string(n, &f.child("name"), self.problems))
                    else {
                        continue;
                    };
                    let max = match f.opt("max_running_flows") {
                        Some(v) => match fields::int(
                            v,
                            &f.child("max_running_flows"),
                            1,
                            10_000,
                            self.problems,
                        ) {
                            Some(n) => Some(n as u32),
                            None => continue,
                        },
                        None => None,
                    };
                    (name, max, f.get("name").map_or(item.pos, |n| n.pos))
                }
                _ => match fields::string(item, &at, self.problems) {
                    Some(name) => (name, None, item.pos),
                    None => continue,
                },
            };
            if !is_tenant_name(&name) || name == "default" {
                self.problems.add_hint(
                    pos,
                    &at,
                    format!("invalid tenant name `{name}`"),
                    Some(TENANT_HINT),
                );
                continue;
            }
            if out.iter().any(|t| t.name == name) {
                self.problems
                    .add(pos, &at, format!("tenant `{name}` is listed twice"));
                continue;
            }
            out.push(TenantSpec {
                name,
                max_running_flows,
            });
        }
        out
    }

    /// Checks one node; returns its name when it has a valid one (for the canary check).
    fn node(&mut self, cx: &Cx<'_>, y: &Yaml, path: &str, parent: &Layer) -> Option<String> {
        let allowed = [&NODE_KEYS[..], &INHERITABLE[..]].concat();
        let f = Fields::read(y, path, &allowed, self.problems)?;
        let name = f.require("name", self.problems).and_then(|v| {
            let name_path = f.child("name");
            let name = fields::string(v, &name_path, self.problems)?;
            if !self.name(&name, v.pos, &name_path, "node") {
                return None;
            }
            if let Some((first, first_path)) = self.node_names.get(&name) {
                self.problems.add_hint(
                    v.pos,
                    &name_path,
                    format!("duplicate node name `{name}`"),
                    Some(format!(
                        "`{name}` is already defined at line {} ({first_path}); node names are unique across the file",
                        first.line
                    )),
                );
            } else {
                self.node_names
                    .insert(name.clone(), (v.pos, name_path.clone()));
            }
            Some(name)
        });
        let host = f
            .require("host", self.problems)
            .and_then(|v| self.host(v, &f.child("host")));
        let weight = match f.opt("weight") {
            Some(v) => fields::int(v, &f.child("weight"), 1, i64::from(u32::MAX), self.problems)
                .and_then(|w| u32::try_from(w).ok()),
            None => Some(1),
        };
        let layer = self.layer(&f).over(parent);
        let user = layer.user.clone();
        if user.is_none() {
            self.problems.add_hint(
                f.pos(),
                &join(path, "ssh.user"),
                "no SSH user for this node",
                Some("set ssh.user on the node, its cluster, its customer or in defaults"),
            );
        }
        if let (Some(name), Some(host), Some(user), Some(weight)) =
            (name.clone(), host, user, weight)
        {
            self.out.nodes.push(Node {
                name,
                host,
                customer: cx.customer.to_owned(),
                cluster: cx.cluster.to_owned(),
                mode: cx.mode,
                ssh: Ssh {
                    user,
                    port: layer.port.unwrap_or(22),
                    identity_file: layer.identity_file,
                    deploy_identity_file: layer.deploy_identity_file,
                    authorized_keys: layer
                        .authorized_keys
                        .unwrap_or_else(|| DEFAULT_AUTHORIZED_KEYS.to_owned()),
                    known_hosts: layer
                        .known_hosts
                        .unwrap_or_else(|| self.base_dir.join("known_hosts")),
                    jump: layer.jump,
                },
                node_root: layer
                    .node_root
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_NODE_ROOT)),
                labels: layer.labels,
                vars: layer.vars,
                weight,
            });
        }
        name
    }
}

/// Where a node's files live when no level sets `node_root`.
pub const DEFAULT_NODE_ROOT: &str = "/opt/etl";
/// Where provisioning installs the deploy key when the inventory does not say.
pub const DEFAULT_AUTHORIZED_KEYS: &str = "~/.ssh/authorized_keys";

fn to_json(y: &Yaml) -> serde_json::Value {
    use serde_json::Value as J;
    match &y.value {
        Value::Null => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Int(i) => J::from(*i),
        Value::Float(f) => {
            serde_json::Number::from_f64(*f).map_or_else(|| J::String(y.raw.clone()), J::Number)
        }
        Value::Str(s) => J::String(s.clone()),
        Value::Seq(items) => J::Array(items.iter().map(to_json).collect()),
        Value::Map(entries) => J::Object(
            entries
                .iter()
                .map(|e| (e.key.clone(), to_json(&e.value)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_hosts() {
        assert!(is_name("acme-prod-1"));
        assert!(is_name("0a_b.c"));
        assert!(!is_name("Acme"));
        assert!(!is_name("-a"));
        assert!(!is_name("a/b"));
        assert!(!is_name(""));
        assert!(is_host("10.0.1.11"));
        assert!(is_host("::1"));
        assert!(is_host("node-1.example.com"));
        assert!(!is_host("10.0.1.300"));
        assert!(!is_host("bad host"));
        assert!(!is_host("-x.example.com"));
        assert!(is_label_key("app.kubernetes.io/name"));
        assert!(!is_label_key("_x"));
    }

    #[test]
    fn suggestions() {
        use crate::problem::suggest;
        assert_eq!(suggest("hots", &NODE_KEYS), Some("host"));
        assert_eq!(
            suggest("least_loded", &["round_robin", "least_loaded"]),
            Some("least_loaded")
        );
        assert_eq!(suggest("zzzzzz", &NODE_KEYS), None);
    }

    #[test]
    fn paths_resolve_against_the_inventory_folder() {
        let base = Path::new("/inv");
        assert_eq!(
            resolve_path("./known_hosts", base),
            Path::new("/inv/known_hosts")
        );
        assert_eq!(resolve_path("keys/id", base), Path::new("/inv/keys/id"));
        assert_eq!(resolve_path("~/.ssh/id", base), Path::new("~/.ssh/id"));
        assert_eq!(resolve_path("/etc/ssh/kh", base), Path::new("/etc/ssh/kh"));
    }
}
