//! One node's private sshd: its files (config, host key, authorized keys), starting it in the
//! foreground and waiting until it accepts connections; not address allocation (see `block`) nor
//! the fleet as a whole (see `fleet`).

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::HarnessError;

/// The OpenSSH server the nodes run.
pub const SSHD: &str = "/usr/sbin/sshd";
/// Makes host and client keys.
pub const SSH_KEYGEN: &str = "/usr/bin/ssh-keygen";
/// The OpenSSH client, for tests that log in to a node.
pub const SSH: &str = "/usr/bin/ssh";
/// sshd's privilege separation directory: it refuses to start without it.
const PRIVSEP_DIR: &str = "/run/sshd";

/// How long a fleet may take until every node accepts connections.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(20);
/// How long a stopped node may take to refuse connections (a few milliseconds in practice).
const REFUSED_TIMEOUT: Duration = Duration::from_secs(3);
/// ssh-keygen processes run at once while making host keys.
const KEYGEN_PARALLEL: usize = 32;

/// Fails with the install hint when the OpenSSH server or client tools are missing.
pub(crate) fn check_tools() -> Result<(), HarnessError> {
    if !Path::new(SSHD).is_file() {
        return Err(HarnessError::SshdMissing { path: SSHD.into() });
    }
    if !Path::new(SSH_KEYGEN).is_file() {
        return Err(HarnessError::ClientToolMissing {
            path: SSH_KEYGEN.into(),
        });
    }
    Ok(())
}

/// Creates sshd's privilege separation directory (mode 0755) when it is missing.
pub(crate) fn ensure_privsep_dir() -> Result<(), HarnessError> {
    match fs::DirBuilder::new().mode(0o755).create(PRIVSEP_DIR) {
        // Explicitly, whatever the umask: sshd refuses a group- or world-writable one.
        Ok(()) => fs::set_permissions(PRIVSEP_DIR, fs::Permissions::from_mode(0o755))
            .map_err(HarnessError::io(format!("chmod 0755 {PRIVSEP_DIR}"))),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(HarnessError::io(format!(
            "create {PRIVSEP_DIR} (sshd's privilege separation directory)"
        ))(e)),
    }
}

/// `true` when the installed sshd knows `PerSourcePenalties` (OpenSSH 9.8 and later), which
/// must be switched off: tests make failing connections on purpose and readiness probes
/// connect without authenticating, and penalties would then refuse the next test's logins.
pub(crate) fn sshd_has_penalties() -> Result<bool, HarnessError> {
    let out = Command::new(SSHD)
        .arg("-V")
        .stdin(Stdio::null())
        .output()
        .map_err(HarnessError::io(format!("run {SSHD} -V")))?;
    let text = String::from_utf8_lossy(&out.stderr);
    Ok(parse_version(&text).is_some_and(|v| v >= (9, 8)))
}

/// `(major, minor)` from `OpenSSH_9.2p1 Debian-2, OpenSSL ...`.
fn parse_version(text: &str) -> Option<(u32, u32)> {
    let rest = &text[text.find("OpenSSH_")? + "OpenSSH_".len()..];
    let (major, rest) = rest.split_once('.')?;
    let minor: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// Refuses paths sshd_config cannot carry verbatim inside double quotes (`%` would be expanded
/// as a token in `AuthorizedKeysFile`).
pub(crate) fn check_config_path(path: &Path) -> Result<(), HarnessError> {
    let unsuitable = |reason: &str| HarnessError::UnsuitablePath {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let text = path
        .to_str()
        .ok_or_else(|| unsuitable("not UTF-8, which sshd_config cannot name"))?;
    if let Some(c) = text
        .chars()
        .find(|c| matches!(c, '"' | '\\' | '%' | '\n' | '\r'))
    {
        return Err(unsuitable(&format!(
            "contains {c:?}, which sshd_config cannot name verbatim"
        )));
    }
    Ok(())
}

/// The files of one node, all under `dir`.
#[derive(Clone, Debug)]
pub(crate) struct NodeFiles {
    pub dir: PathBuf,
    pub host_key: PathBuf,
    pub config: PathBuf,
    pub authorized_keys: PathBuf,
    pub root: PathBuf,
    pub log: PathBuf,
}

impl NodeFiles {
    pub fn new(dir: PathBuf) -> NodeFiles {
        NodeFiles {
            host_key: dir.join("ssh_host_ed25519_key"),
            config: dir.join("sshd_config"),
            authorized_keys: dir.join("authorized_keys"),
            root: dir.join("root"),
            log: dir.join("sshd.log"),
            dir,
        }
    }

    pub fn host_key_pub(&self) -> PathBuf {
        pub_path(&self.host_key)
    }
}

/// `key` + `.pub`, where ssh-keygen writes the public half.
pub(crate) fn pub_path(key: &Path) -> PathBuf {
    let mut name = key.as_os_str().to_os_string();
    name.push(".pub");
    PathBuf::from(name)
}

/// The sshd_config of a node listening on `listen`.
pub(crate) fn render_config(listen: SocketAddrV4, files: &NodeFiles, no_penalties: bool) -> String {
    let mut text = String::new();
    let mut line = |s: &str| {
        text.push_str(s);
        text.push('\n');
    };
    line("# Private sshd of a fleet-tests node; started with `sshd -D -e -f` this file.");
    line(&format!("ListenAddress {listen}"));
    line(&format!("HostKey \"{}\"", files.host_key.display()));
    line(&format!(
        "AuthorizedKeysFile \"{}\"",
        files.authorized_keys.display()
    ));
    for fixed in [
        "PidFile none",
        "StrictModes no",
        "UsePAM no",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PubkeyAuthentication yes",
        "PermitRootLogin prohibit-password",
        "LogLevel VERBOSE",
        "MaxStartups 200:30:400",
        "MaxSessions 64",
        "UseDNS no",
        "PrintMotd no",
        "Subsystem sftp internal-sftp",
        // As in Debian's stock sshd_config: agent and TCP forwarding are on by default, X11
        // is turned on here, so only the deploy key's own options keep them from it.
        "X11Forwarding yes",
        // Nodes share the test machine's home folders, whose rc files are not a node's: a
        // `pyenv init` in ~/.bashrc takes a lock and serialised 200 parallel logins for over a
        // minute. bash run by sshd skips ~/.bashrc when it inherits SHLVL (Debian's
        // SSH_SOURCE_BASHRC rule), so a remote command costs ~0.15 s instead of ~0.3 s.
        "SetEnv SHLVL=1",
    ] {
        line(fixed);
    }
    if no_penalties {
        line("PerSourcePenalties no");
    }
    text
}

/// Makes ed25519 keys without a passphrase, `KEYGEN_PARALLEL` ssh-keygen at a time.
pub fn keygen_all(keys: &[PathBuf], comment: &str) -> Result<(), HarnessError> {
    for chunk in keys.chunks(KEYGEN_PARALLEL) {
        let mut running = Vec::with_capacity(chunk.len());
        for key in chunk {
            let child = Command::new(SSH_KEYGEN)
                .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
                .arg(key)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(HarnessError::io(format!("run {SSH_KEYGEN}")))?;
            running.push((key, child));
        }
        // Wait for all of them before reporting, so no ssh-keygen outlives the call.
        let mut first_error = None;
        for (key, child) in running {
            let result = child.wait_with_output();
            let error = match result {
                Ok(out) if out.status.success() => None,
                Ok(out) => Some(HarnessError::Tool {
                    command: format!("{SSH_KEYGEN} -t ed25519 -f {}", key.display()),
                    status: out.status,
                    stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                }),
                Err(e) => Some(HarnessError::io(format!("wait for {SSH_KEYGEN}"))(e)),
            };
            if first_error.is_none() {
                first_error = error;
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
    }
    Ok(())
}

/// The `ssh-ed25519 AAAA...` part of a `.pub` file, without its comment.
pub(crate) fn read_public_key(path: &Path) -> Result<String, HarnessError> {
    let text =
        fs::read_to_string(path).map_err(HarnessError::io(format!("read {}", path.display())))?;
    let mut fields = text.split_whitespace();
    match (fields.next(), fields.next()) {
        (Some(kind), Some(key)) => Ok(format!("{kind} {key}")),
        _ => Err(HarnessError::UnsuitablePath {
            path: path.to_path_buf(),
            reason: "not an OpenSSH public key line".into(),
        }),
    }
}

/// Runs `sshd -t` on a config so a bad one fails with sshd's own words, not a timeout.
pub(crate) fn test_config(config: &Path) -> Result<(), HarnessError> {
    let out = Command::new(SSHD)
        .arg("-t")
        .arg("-f")
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .map_err(HarnessError::io(format!("run {SSHD} -t")))?;
    if out.status.success() {
        return Ok(());
    }
    let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if stderr.is_empty() {
        stderr = String::from_utf8_lossy(&out.stdout).trim().to_string();
    }
    Err(HarnessError::ConfigRejected {
        config: config.to_path_buf(),
        status: out.status,
        stderr,
    })
}

/// Starts sshd in the foreground for one node, stderr appended to the node's log and the
/// block's lock file as stdin (see `block`: the block stays taken while sshd lives).
pub(crate) fn spawn(files: &NodeFiles, lock: &File) -> Result<Child, HarnessError> {
    let log = File::options()
        .create(true)
        .append(true)
        .open(&files.log)
        .map_err(HarnessError::io(format!("open {}", files.log.display())))?;
    let stdin = lock
        .try_clone()
        .map_err(HarnessError::io("duplicate the block's lock file"))?;
    Command::new(SSHD)
        .args(["-D", "-e", "-f"])
        .arg(&files.config)
        .stdin(Stdio::from(stdin))
        // Never inherit the caller's stdout: `$(fleet-testfleet start ...)` would wait for it.
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .map_err(HarnessError::io(format!("start {SSHD}")))
}

/// Waits until `addr` accepts a TCP connection, polling every 20 ms until `deadline`; fails early
/// with the log's last lines when sshd exits.
pub(crate) fn wait_ready(
    name: &str,
    addr: SocketAddrV4,
    child: &mut Child,
    log: &Path,
    deadline: Instant,
) -> Result<(), HarnessError> {
    loop {
        if let Some(status) = child
            .try_wait()
            .map_err(HarnessError::io(format!("{name}: check sshd")))?
        {
            return Err(HarnessError::NodeExited {
                node: name.to_string(),
                status,
                log: log.to_path_buf(),
                tail: log_tail(log),
            });
        }
        let now = Instant::now();
        let left = deadline.saturating_duration_since(now);
        if TcpStream::connect_timeout(&SocketAddr::V4(addr), left.clamp(POLL, 10 * POLL)).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(HarnessError::NotReady {
                node: name.to_string(),
                addr,
                timeout: READY_TIMEOUT,
                log: log.to_path_buf(),
                tail: log_tail(log),
            });
        }
        thread::sleep(POLL);
    }
}

/// Waits until `addr` refuses connections. Right after its sshd exits a node may still accept
/// one: a child sshd forked for a last connection holds the listening socket until it execs.
pub(crate) fn wait_refused(name: &str, addr: SocketAddrV4) -> Result<(), HarnessError> {
    let deadline = Instant::now() + REFUSED_TIMEOUT;
    loop {
        match TcpStream::connect_timeout(&SocketAddr::V4(addr), 10 * POLL) {
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Ok(()),
            _ if Instant::now() >= deadline => {
                return Err(HarnessError::StillAccepting {
                    node: name.to_string(),
                    addr,
                    timeout: REFUSED_TIMEOUT,
                });
            }
            _ => thread::sleep(POLL / 2),
        }
    }
}

/// The address a node's config listens on (`ListenAddress a.b.c.d:port`).
pub(crate) fn listen_addr(config: &Path) -> Option<SocketAddrV4> {
    let text = fs::read_to_string(config).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("ListenAddress "))
        .and_then(|a| a.trim().parse().ok())
}

/// Kills a node's sshd (SIGKILL) and reaps it.
pub(crate) fn kill(name: &str, child: &mut Child) -> Result<(), HarnessError> {
    // `kill` fails only when the process was already reaped, which `wait` then reports.
    let _ = child.kill();
    child
        .wait()
        .map(drop)
        .map_err(HarnessError::io(format!("{name}: wait for sshd")))
}

/// The last `max` bytes of a file, as text (invalid UTF-8 replaced).
pub(crate) fn last_bytes(path: &Path, max: u64) -> io::Result<String> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(max)))?;
    let mut bytes = Vec::new();
    file.take(max).read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The last lines of a log, joined with ` | ` so an error stays on one line.
pub(crate) fn log_tail(log: &Path) -> String {
    const TAIL_BYTES: u64 = 4096;
    const TAIL_LINES: usize = 8;
    match last_bytes(log, TAIL_BYTES) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            let start = lines.len().saturating_sub(TAIL_LINES);
            let mut out = String::new();
            for (i, l) in lines[start..].iter().enumerate() {
                if i > 0 {
                    out.push_str(" | ");
                }
                let _ = write!(out, "{}", l.trim_end());
            }
            if out.is_empty() {
                "(log is empty)".to_string()
            } else {
                out
            }
        }
        Err(e) => format!("(log unreadable: {e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn versions_parse() {
        assert_eq!(
            parse_version("OpenSSH_9.2p1 Debian-2+deb12u3, OpenSSL 3.0.15"),
            Some((9, 2))
        );
        assert_eq!(parse_version("OpenSSH_10.0p2, OpenSSL"), Some((10, 0)));
        assert_eq!(parse_version("unknown option -- V"), None);
    }

    #[test]
    fn config_has_the_essentials() {
        let files = NodeFiles::new(PathBuf::from("/f/node-1"));
        let listen = SocketAddrV4::new(Ipv4Addr::new(127, 100, 7, 1), 2222);
        let text = render_config(listen, &files, false);
        for expected in [
            "ListenAddress 127.100.7.1:2222\n",
            "HostKey \"/f/node-1/ssh_host_ed25519_key\"\n",
            "AuthorizedKeysFile \"/f/node-1/authorized_keys\"\n",
            "PidFile none\n",
            "PermitRootLogin prohibit-password\n",
            "MaxStartups 200:30:400\n",
            "Subsystem sftp internal-sftp\n",
            "SetEnv SHLVL=1\n",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
        assert!(!text.contains("PerSourcePenalties"));
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("sshd_config");
        fs::write(&config, &text).expect("write config");
        assert_eq!(listen_addr(&config), Some(listen));
        assert!(render_config(listen, &files, true).contains("PerSourcePenalties no\n"));
    }

    #[test]
    fn config_paths_must_be_plain() {
        assert!(check_config_path(Path::new("/tmp/a b/c")).is_ok());
        for bad in ["/tmp/a\"b", "/tmp/100%", "/tmp/a\\b", "/tmp/a\nb"] {
            let err = check_config_path(Path::new(bad)).expect_err("refused");
            assert!(
                matches!(&err, HarnessError::UnsuitablePath { reason, .. } if reason.contains("cannot name")),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn log_tail_keeps_the_last_lines_on_one_line() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("sshd.log");
        let text: String = (1..=20).map(|i| format!("line {i}\n")).collect();
        fs::write(&log, text).expect("write log");
        assert_eq!(
            log_tail(&log),
            "line 13 | line 14 | line 15 | line 16 | line 17 | line 18 | line 19 | line 20"
        );
        assert!(log_tail(&dir.path().join("none")).starts_with("(log unreadable"));
    }
}
