//! SSH transport to nodes, over russh: the host key is checked against the inventory's
//! known_hosts before authentication, then key authentication, then commands on channels of
//! one connection, with streamed input and timeouts. Not what to run: callers build commands.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_inventory::Node;
use russh::ChannelMsg;
use russh::client;
use russh::keys::ssh_key::PublicKey;
use russh::keys::{PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::known_hosts::{self, KnownHosts, KnownHostsError, Verdict};

/// Environment variable holding the passphrase of an encrypted identity file.
pub const PASSPHRASE_ENV: &str = "FLEET_SSH_PASSPHRASE";
/// Size of each write on a channel: large writes keep russh near OpenSSH's speed.
const CHUNK: usize = 1 << 20;

/// Where and as whom to connect, resolved from an inventory node.
#[derive(Debug, Clone)]
pub struct Target {
    pub node: String,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub identity: Option<PathBuf>,
    pub known_hosts: PathBuf,
    /// The jump host to connect through (a TCP channel from it to this target), if any.
    pub jump: Option<Box<Target>>,
    /// The ssh-agent socket used when no identity file is set (from `SSH_AUTH_SOCK`).
    pub agent_socket: Option<PathBuf>,
    /// Why this node must never be connected to (an airgapped customer's): the transport
    /// refuses it before opening any socket, whatever path led here.
    pub never_contacted: Option<String>,
}

impl Target {
    pub fn of(node: &Node) -> Self {
        Self {
            node: node.name.clone(),
            host: node.host.clone(),
            port: node.ssh.port,
            user: node.ssh.user.clone(),
            identity: node.ssh.identity_file.as_deref().map(expand_home),
            known_hosts: expand_home(&node.ssh.known_hosts),
            jump: node.ssh.jump.as_ref().map(|j| {
                Box::new(Target {
                    node: format!("{} (jump host {j})", node.name),
                    host: j.host.clone(),
                    port: j.port,
                    user: j.user.clone().unwrap_or_else(|| node.ssh.user.clone()),
                    identity: node.ssh.identity_file.as_deref().map(expand_home),
                    known_hosts: expand_home(&node.ssh.known_hosts),
                    jump: None,
                    agent_socket: agent_socket(),
                    never_contacted: None,
                })
            }),
            agent_socket: agent_socket(),
            never_contacted: node.never_contacted(),
        }
    }

    /// A local path with a leading `~/` expanded from `$HOME`.
    pub fn expand(path: &Path) -> PathBuf {
        expand_home(path)
    }

    fn addr(&self) -> String {
        known_hosts::host_port(&self.host, self.port)
    }
}

fn agent_socket() -> Option<PathBuf> {
    std::env::var_os("SSH_AUTH_SOCK")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
}

/// How a session proves who it is.
enum Credential {
    Key(PathBuf, Box<russh::keys::PrivateKey>),
    Agent(PathBuf),
}

fn expand_home(path: &Path) -> PathBuf {
    match (path.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => path.to_owned(),
    }
}

/// How long to wait for a connection (TCP, key exchange and authentication) and for a
/// command to finish.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub command: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(10),
            command: Duration::from_secs(600),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("{node}: skipped: {why}")]
    NeverContacted { node: String, why: String },
    #[error("{node} ({addr}): cannot connect: {error}")]
    Connect {
        node: String,
        addr: String,
        error: String,
    },
    #[error("{node} ({addr}): no answer within {after:?}")]
    ConnectTimeout {
        node: String,
        addr: String,
        after: Duration,
    },
    #[error(
        "{node} ({addr}): unknown host key {fingerprint}; not connecting. Check the fingerprint with the node's owner, then enrol it with `fleet hosts trust -i INVENTORY --limit {node}`"
    )]
    UnknownHost {
        node: String,
        addr: String,
        fingerprint: String,
    },
    #[error(
        "{node} ({addr}): HOST KEY CHANGED: it offered {fingerprint}, which differs from {} line {}; not connecting (this may be an attack). If the node was really reinstalled, run `fleet hosts trust -i INVENTORY --limit {node} --replace`",
        known_hosts.display(), lines.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
    )]
    HostKeyChanged {
        node: String,
        addr: String,
        fingerprint: String,
        known_hosts: PathBuf,
        lines: Vec<usize>,
    },
    #[error("{node} ({addr}): host key {fingerprint} is revoked ({} line {line}); not connecting", known_hosts.display())]
    HostKeyRevoked {
        node: String,
        addr: String,
        fingerprint: String,
        known_hosts: PathBuf,
        line: usize,
    },
    #[error("{node} ({addr}): the host offered a certificate; host certificates are not accepted")]
    HostCertificate { node: String, addr: String },
    #[error("{node}: known_hosts: {error}")]
    KnownHosts {
        node: String,
        error: KnownHostsError,
    },
    #[error("{node}: identity file {}: {reason}", path.display())]
    Identity {
        node: String,
        path: PathBuf,
        reason: String,
    },
    #[error(
        "{node}: no identity file is set for it (ssh.identity_file in the inventory) and no ssh-agent is reachable (SSH_AUTH_SOCK)"
    )]
    NoIdentity { node: String },
    #[error("{node} ({addr}): authentication as {user} with {identity} was refused")]
    AuthRefused {
        node: String,
        addr: String,
        user: String,
        identity: String,
    },
    #[error("{node}: {what}: {error}")]
    Protocol {
        node: String,
        what: &'static str,
        error: String,
    },
    #[error("{node}: `{command}` did not finish within {after:?}")]
    CommandTimeout {
        node: String,
        command: String,
        after: Duration,
    },
    #[error("{node}: reading input for `{command}`: {error}")]
    Input {
        node: String,
        command: String,
        error: std::io::Error,
    },
}

/// What the server's host key check found, kept by the handler for the error message.
#[derive(Debug, Clone)]
enum Seen {
    Key {
        key: PublicKey,
        verdict: Option<Verdict>,
    },
    Certificate,
}

/// The russh client handler: it decides on the host key, and does nothing else.
struct HostKeyCheck {
    /// `None` when only fetching the key (enrolment): every key is then refused, so the
    /// connection stops before authentication.
    known: Option<Arc<KnownHosts>>,
    host: String,
    port: u16,
    seen: Arc<Mutex<Option<Seen>>>,
}

impl client::Handler for HostKeyCheck {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        offered: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let seen = match offered {
            PublicKeyOrCertificate::Certificate(_) => Seen::Certificate,
            PublicKeyOrCertificate::PublicKey { key, .. } => Seen::Key {
                key: key.clone(),
                verdict: self
                    .known
                    .as_ref()
                    .map(|k| k.check(&self.host, self.port, key)),
            },
        };
        let accept = matches!(
            seen,
            Seen::Key {
                verdict: Some(Verdict::Known),
                ..
            }
        );
        if let Ok(mut slot) = self.seen.lock() {
            *slot = Some(seen);
        }
        Ok(accept)
    }
}

fn config() -> Arc<client::Config> {
    // AES-GCM costs less CPU than chacha20-poly1305 here; russh offers chacha20 first.
    let preferred = russh::Preferred {
        cipher: std::borrow::Cow::Borrowed(&[
            russh::cipher::AES_256_GCM,
            russh::cipher::AES_128_GCM,
            russh::cipher::CHACHA20_POLY1305,
        ]),
        ..Default::default()
    };
    Arc::new(client::Config {
        nodelay: true,
        preferred,
        inactivity_timeout: None,
        ..Default::default()
    })
}

/// An authenticated connection to one node; commands run on channels of it.
pub struct Session {
    node: String,
    handle: client::Handle<HostKeyCheck>,
    host_key: PublicKey,
    /// The connection to the jump host this one runs through; it must outlive this one.
    _jump: Option<Box<Session>>,
}

/// What a command printed and how it ended.
#[derive(Debug, Clone)]
pub struct Output {
    pub status: Option<u32>,
    pub signal: Option<String>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Output past [`OUTPUT_CAP`] per stream was dropped.
    pub truncated: bool,
}

/// Most output kept per stream of a command: a node cannot exhaust the controller's memory.
pub const OUTPUT_CAP: usize = 16 << 20;

fn keep(buf: &mut Vec<u8>, data: &[u8], truncated: &mut bool) {
    let room = OUTPUT_CAP.saturating_sub(buf.len());
    buf.extend_from_slice(&data[..data.len().min(room)]);
    *truncated |= data.len() > room;
}

impl Output {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Input for a command's stdin.
pub enum Input<'a> {
    None,
    Bytes(&'a [u8]),
    Reader(&'a mut (dyn AsyncRead + Unpin + Send)),
}

impl Session {
    /// Connects, checks the host key against the target's known_hosts (stopping before
    /// authentication unless it is known), then authenticates with the identity file.
    pub async fn connect(target: &Target, timeouts: Timeouts) -> Result<Self, SshError> {
        let node = target.node.clone();
        let known =
            KnownHosts::load_shared(&target.known_hosts).map_err(|error| SshError::KnownHosts {
                node: node.clone(),
                error,
            })?;
        let credential = match &target.identity {
            Some(path) => Credential::Key(path.clone(), Box::new(load_identity(&node, path)?)),
            None => match &target.agent_socket {
                Some(socket) => Credential::Agent(socket.clone()),
                None => return Err(SshError::NoIdentity { node }),
            },
        };
        let work = async {
            let (mut handle, host_key, jump) = open(target, known, timeouts).await?;
            let protocol = |e: String| SshError::Protocol {
                node: node.clone(),
                what: "authentication",
                error: e,
            };
            let (accepted, used) = match credential {
                Credential::Key(path, key) => {
                    let hash = rsa_hash(&handle, key.algorithm()).await;
                    let auth = handle
                        .authenticate_publickey(
                            &target.user,
                            PrivateKeyWithHashAlg::new(Arc::new(*key), hash),
                        )
                        .await
                        .map_err(|e| protocol(e.to_string()))?;
                    (auth.success(), path.display().to_string())
                }
                Credential::Agent(socket) => {
                    let mut agent = russh::keys::agent::client::AgentClient::connect_uds(&socket)
                        .await
                        .map_err(|e| protocol(format!("ssh-agent at {}: {e}", socket.display())))?;
                    let identities = agent
                        .request_identities()
                        .await
                        .map_err(|e| protocol(format!("ssh-agent: {e}")))?;
                    let mut accepted = false;
                    for identity in identities {
                        let russh::keys::agent::AgentIdentity::PublicKey { key, .. } = identity
                        else {
                            continue;
                        };
                        let hash = rsa_hash(&handle, key.algorithm()).await;
                        let auth = handle
                            .authenticate_publickey_with(&target.user, key, hash, &mut agent)
                            .await
                            .map_err(|e| protocol(format!("ssh-agent: {e}")))?;
                        if auth.success() {
                            accepted = true;
                            break;
                        }
                    }
                    (
                        accepted,
                        format!("the keys of ssh-agent {}", socket.display()),
                    )
                }
            };
            if !accepted {
                return Err(SshError::AuthRefused {
                    node: node.clone(),
                    addr: target.addr(),
                    user: target.user.clone(),
                    identity: used,
                });
            }
            Ok(Session {
                node: node.clone(),
                handle,
                host_key,
                _jump: jump,
            })
        };
        tokio::time::timeout(timeouts.connect, work)
            .await
            .map_err(|_| SshError::ConnectTimeout {
                node: node.clone(),
                addr: target.addr(),
                after: timeouts.connect,
            })?
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn host_key(&self) -> &PublicKey {
        &self.host_key
    }

    /// Runs `command` on a new channel, feeding `input` to its stdin in large writes while
    /// reading its output, and waits for the channel to close (the exit status can arrive
    /// before the last output).
    pub async fn exec(
        &self,
        command: &str,
        input: Input<'_>,
        timeout: Duration,
    ) -> Result<Output, SshError> {
        let protocol = |what: &'static str| {
            let node = self.node.clone();
            move |e: russh::Error| SshError::Protocol {
                node,
                what,
                error: e.to_string(),
            }
        };
        let work = async {
            let channel = self
                .handle
                .channel_open_session()
                .await
                .map_err(protocol("opening a channel"))?;
            channel
                .exec(true, command)
                .await
                .map_err(protocol("starting the command"))?;
            let (mut read, write) = channel.split();
            let send = async {
                match input {
                    Input::None => {}
                    Input::Bytes(bytes) => {
                        for chunk in bytes.chunks(CHUNK) {
                            write
                                .data_bytes(chunk.to_vec())
                                .await
                                .map_err(protocol("sending input"))?;
                        }
                    }
                    Input::Reader(reader) => loop {
                        let mut buf = Vec::with_capacity(CHUNK);
                        let n = (&mut *reader)
                            .take(CHUNK as u64)
                            .read_to_end(&mut buf)
                            .await
                            .map_err(|error| SshError::Input {
                                node: self.node.clone(),
                                command: command.to_owned(),
                                error,
                            })?;
                        if n == 0 {
                            break;
                        }
                        write
                            .data_bytes(buf)
                            .await
                            .map_err(protocol("sending input"))?;
                    },
                }
                write.eof().await.map_err(protocol("closing input"))
            };
            let receive = async {
                let mut out = Output {
                    status: None,
                    signal: None,
                    stdout: Vec::new(),
                    stderr: Vec::new(),
                    truncated: false,
                };
                while let Some(msg) = read.wait().await {
                    match msg {
                        ChannelMsg::Data { data } => {
                            keep(&mut out.stdout, &data, &mut out.truncated)
                        }
                        ChannelMsg::ExtendedData { data, ext: 1 } => {
                            keep(&mut out.stderr, &data, &mut out.truncated)
                        }
                        ChannelMsg::ExitStatus { exit_status } => out.status = Some(exit_status),
                        ChannelMsg::ExitSignal { signal_name, .. } => {
                            out.signal = Some(format!("{signal_name:?}"))
                        }
                        ChannelMsg::Close => break,
                        _ => {}
                    }
                }
                out
            };
            tokio::pin!(receive);
            tokio::select! {
                // The command ended before taking all its input: its output is the answer.
                out = &mut receive => Ok(out),
                sent = send => match sent {
                    Ok(()) => Ok(receive.await),
                    // Our own input failed: give up on the command (dropping the channel).
                    Err(e @ SshError::Input { .. }) => Err(e),
                    // The channel refused more input, most likely because the command exited;
                    // its exit status and output say why, if they arrive promptly.
                    Err(e) => match tokio::time::timeout(Duration::from_secs(5), receive).await {
                        Ok(out) if out.status.is_some() || out.signal.is_some() => Ok(out),
                        _ => Err(e),
                    },
                },
            }
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| SshError::CommandTimeout {
                node: self.node.clone(),
                command: command.to_owned(),
                after: timeout,
            })?
    }

    pub async fn close(self) {
        let bye = self
            .handle
            .disconnect(russh::Disconnect::ByApplication, "", "en");
        let _ = tokio::time::timeout(Duration::from_secs(5), bye).await;
    }
}

/// Runs the key exchange with `known` deciding on the host key; returns russh's outcome and
/// what the host offered.
async fn key_exchange(
    target: &Target,
    known: Option<Arc<KnownHosts>>,
    timeouts: Timeouts,
) -> Result<
    (
        Result<client::Handle<HostKeyCheck>, russh::Error>,
        Option<Seen>,
        Option<Box<Session>>,
    ),
    SshError,
> {
    if let Some(why) = &target.never_contacted {
        return Err(SshError::NeverContacted {
            node: target.node.clone(),
            why: why.clone(),
        });
    }
    let seen = Arc::new(Mutex::new(None));
    let checker = HostKeyCheck {
        known,
        host: target.host.clone(),
        port: target.port,
        seen: seen.clone(),
    };
    let (result, jump) = match &target.jump {
        None => (
            client::connect(config(), (target.host.as_str(), target.port), checker).await,
            None,
        ),
        Some(jump_target) => {
            // An authenticated session to the jump host (its own host key checked the same
            // way), then a TCP channel from it to the target, then SSH over that channel.
            let jump = Box::pin(Session::connect(jump_target, timeouts)).await?;
            let channel = jump
                .handle
                .channel_open_direct_tcpip(
                    target.host.clone(),
                    u32::from(target.port),
                    "127.0.0.1",
                    0,
                )
                .await
                .map_err(|e| SshError::Connect {
                    node: target.node.clone(),
                    addr: target.addr(),
                    error: format!("through jump host {}: {e}", jump_target.addr()),
                })?;
            let result = client::connect_stream(config(), channel.into_stream(), checker).await;
            (result, Some(Box::new(jump)))
        }
    };
    let seen = seen.lock().ok().and_then(|s| s.clone());
    Ok((result, seen, jump))
}

/// Opens the transport; returns the handle once the host key was accepted, or the reason it
/// was not.
async fn open(
    target: &Target,
    known: Arc<KnownHosts>,
    timeouts: Timeouts,
) -> Result<
    (
        client::Handle<HostKeyCheck>,
        PublicKey,
        Option<Box<Session>>,
    ),
    SshError,
> {
    let (node, addr) = (target.node.clone(), target.addr());
    let (result, seen, jump) = key_exchange(target, Some(known), timeouts).await?;
    match (result, seen) {
        (Ok(handle), Some(Seen::Key { key, .. })) => Ok((handle, key, jump)),
        (_, Some(Seen::Certificate)) => Err(SshError::HostCertificate { node, addr }),
        (_, Some(Seen::Key { key, verdict })) => {
            let fingerprint = known_hosts::fingerprint(&key);
            let known_hosts = target.known_hosts.clone();
            Err(match verdict {
                Some(Verdict::Changed { lines }) => SshError::HostKeyChanged {
                    node,
                    addr,
                    fingerprint,
                    known_hosts,
                    lines,
                },
                Some(Verdict::Revoked { line }) => SshError::HostKeyRevoked {
                    node,
                    addr,
                    fingerprint,
                    known_hosts,
                    line,
                },
                _ => SshError::UnknownHost {
                    node,
                    addr,
                    fingerprint,
                },
            })
        }
        (result, None) => Err(no_key(&result, node, addr)),
    }
}

/// Fetches the host key a node offers without authenticating: the handler refuses every key
/// once it has seen it, so the connection ends before authentication. For enrolment only.
pub async fn fetch_host_key(target: &Target, timeout: Duration) -> Result<PublicKey, SshError> {
    let (node, addr) = (target.node.clone(), target.addr());
    let leg = Timeouts {
        connect: timeout,
        ..Timeouts::default()
    };
    let exchange = tokio::time::timeout(timeout, key_exchange(target, None, leg))
        .await
        .map_err(|_| SshError::ConnectTimeout {
            node: node.clone(),
            addr: addr.clone(),
            after: timeout,
        })?;
    let (result, seen, _jump) = exchange?;
    match (result, seen) {
        (_, Some(Seen::Key { key, .. })) => Ok(key),
        (_, Some(Seen::Certificate)) => Err(SshError::HostCertificate { node, addr }),
        (result, None) => Err(no_key(&result, node, addr)),
    }
}

/// The signature hash to use with a key: only RSA keys need the server's preferred one, and
/// asking costs a wait for the server's extension info.
async fn rsa_hash(
    handle: &client::Handle<HostKeyCheck>,
    algorithm: russh::keys::Algorithm,
) -> Option<russh::keys::HashAlg> {
    match algorithm.is_rsa() {
        true => handle
            .best_supported_rsa_hash()
            .await
            .ok()
            .flatten()
            .flatten(),
        false => None,
    }
}

/// The error for a key exchange that ended before the host offered a key.
fn no_key<T>(result: &Result<T, russh::Error>, node: String, addr: String) -> SshError {
    match result {
        Err(e) => SshError::Connect {
            node,
            addr,
            error: e.to_string(),
        },
        Ok(_) => SshError::Protocol {
            node,
            what: "key exchange",
            error: "no host key was offered".into(),
        },
    }
}

/// The SHA256 fingerprint of the key in `path` (from `path.pub` when it is there, else from
/// the private key, unlocked with the passphrase from the environment), or why it cannot be
/// read; for the audit log, which names the key a change was made with.
pub fn key_fingerprint(path: &Path) -> String {
    let mut public = path.as_os_str().to_owned();
    public.push(".pub");
    if let Ok(key) = russh::keys::load_public_key(std::path::PathBuf::from(public)) {
        return crate::ssh::fingerprint(&key);
    }
    match load_identity("", path) {
        Ok(key) => crate::ssh::fingerprint(key.public_key()),
        Err(_) => format!("unreadable key {}", path.display()),
    }
}

fn load_identity(node: &str, path: &Path) -> Result<russh::keys::PrivateKey, SshError> {
    let passphrase = std::env::var(PASSPHRASE_ENV).ok();
    russh::keys::load_secret_key(path, passphrase.as_deref()).map_err(|e| SshError::Identity {
        node: node.to_owned(),
        path: path.to_owned(),
        reason: match e {
            russh::keys::Error::KeyIsEncrypted => {
                format!("the key is encrypted; set {PASSPHRASE_ENV}")
            }
            other => other.to_string(),
        },
    })
}
