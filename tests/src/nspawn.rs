//! A node booted with real systemd as PID 1: `systemd-nspawn -b` on a throwaway overlay
//! (`--volatile=overlay`) of the cached Debian root filesystem `scripts/nspawn-rootfs.sh`
//! builds, sharing this machine's network (so the host's Postgres and Redis on 127.0.0.1
//! answer inside), its sshd on the first address of a locked loopback block, port 2222, taking
//! root logins with the key it was booted for; stopped by SIGTERM to the `systemd-nspawn` it
//! started (the container powers off); not the test fleet's plain sshd nodes (see `fleet`).

use std::fs::{self, File};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::block::{self, Block};
use crate::error::HarnessError;
use crate::node;
use crate::unique::unique_name;

/// Boots the containers.
pub const NSPAWN: &str = "/usr/bin/systemd-nspawn";
/// Where the cached root filesystem is, unless `FLEET_NSPAWN_ROOTFS` says otherwise.
pub const DEFAULT_NSPAWN_ROOTFS: &str = "/var/tmp/fleet-nspawn-bookworm";
/// Where the cached SysV root filesystem is, unless `FLEET_NSPAWN_SYSV_ROOTFS` says otherwise.
pub const DEFAULT_NSPAWN_SYSV_ROOTFS: &str = "/var/tmp/fleet-nspawn-bookworm-sysv";
/// The marker `scripts/nspawn-rootfs.sh` writes last into a complete root filesystem.
const ROOTFS_MARKER: &str = "etc/fleet-nspawn-rootfs";
/// How to build them.
const PREPARE: &str = "scripts/nspawn-rootfs.sh all (or scripts/setup.sh) as root";
/// The port the container's sshd listens on, on its own address.
pub const NSPAWN_SSH_PORT: u16 = 2222;
/// How long the container may take from `systemd-nspawn` to an sshd accepting connections
/// (under a second on an idle machine).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long it may take to power off after SIGTERM before `systemd-nspawn` is killed.
pub const POWEROFF_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);

/// Which init a container boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Init {
    /// systemd as PID 1.
    #[default]
    Systemd,
    /// SysV init (`sysvinit-core`) as PID 1.
    Sysv,
}

/// How to boot a container.
#[derive(Debug, Clone, Default)]
pub struct NspawnOptions {
    pub init: Init,
    /// `(host path, container path)` bound read-only.
    pub bind_ro: Vec<(PathBuf, String)>,
    /// `(host path, container path)` bound read-write.
    pub bind: Vec<(PathBuf, String)>,
    /// No network but the container's own loopback (`--private-network`); its sshd is then
    /// reached through [`NspawnNode::exec`] instead.
    pub private_network: bool,
}

/// A booted container; dropping it powers it off.
#[derive(Debug)]
pub struct NspawnNode {
    /// The machine name, unique to this boot (also the container's hostname).
    pub machine: String,
    /// Its sshd's address, the first of the block this node holds.
    pub addr: Ipv4Addr,
    pub port: u16,
    /// The container's console output (systemd's boot and shutdown messages).
    pub console_log: PathBuf,
    /// The init it booted.
    pub init: Init,
    /// Whether it has only its own loopback.
    pub private_network: bool,
    child: Option<Child>,
    /// Held while the container lives, so no fleet takes its address.
    _block: Block,
}

impl NspawnNode {
    /// The cached root filesystem: `$FLEET_NSPAWN_ROOTFS`, else [`DEFAULT_NSPAWN_ROOTFS`].
    pub fn rootfs() -> PathBuf {
        Self::rootfs_of(Init::Systemd)
    }

    /// The cached root filesystem of containers booting `init`.
    pub fn rootfs_of(init: Init) -> PathBuf {
        let (var, default) = match init {
            Init::Systemd => ("FLEET_NSPAWN_ROOTFS", DEFAULT_NSPAWN_ROOTFS),
            Init::Sysv => ("FLEET_NSPAWN_SYSV_ROOTFS", DEFAULT_NSPAWN_SYSV_ROOTFS),
        };
        std::env::var_os(var)
            .filter(|v| !v.is_empty())
            .map_or_else(|| PathBuf::from(default), PathBuf::from)
    }

    /// Boots a container with systemd whose root logs in with the key in `authorized_key` (a
    /// `.pub` file); its files (sshd drop-in, the key, the console log) go to `dir`, which is
    /// created. On return its sshd accepts connections.
    pub fn boot(dir: &Path, authorized_key: &Path) -> Result<NspawnNode, HarnessError> {
        Self::boot_with(dir, authorized_key, &NspawnOptions::default())
    }

    /// [`NspawnNode::boot`] with `options`: another init, bound folders, no network. On
    /// return its sshd accepts connections (with a private network: its init runs).
    pub fn boot_with(
        dir: &Path,
        authorized_key: &Path,
        options: &NspawnOptions,
    ) -> Result<NspawnNode, HarnessError> {
        check_ready_to_boot(options.init)?;
        let rootfs = Self::rootfs_of(options.init);
        let keys = dir.join("keys");
        fs::create_dir_all(&keys)
            .map_err(HarnessError::io(format!("create {}", keys.display())))?;
        let key = node::read_public_key(authorized_key)?;
        write(&keys.join("bootstrap_keys"), &format!("{key}\n"))?;

        let block = block::allocate(1, NSPAWN_SSH_PORT, dir)?;
        let addr = block.addr(0);
        // Read after the system's own config, which Debian includes first: the first value of
        // an option wins, so these do. Never port 22: only this address and port.
        let sshd_conf = dir.join("sshd-fleet-test.conf");
        write(
            &sshd_conf,
            &format!(
                "# Written by fleet-tests for one container.\nPort {NSPAWN_SSH_PORT}\nListenAddress {addr}:{NSPAWN_SSH_PORT}\n\
                 PermitRootLogin prohibit-password\n\
                 AuthorizedKeysFile .ssh/authorized_keys /etc/fleet-test/bootstrap_keys\n"
            ),
        )?;
        let machine = unique_name("fleet").replace('_', "-");
        let console_log = dir.join("console.log");
        let log = File::create(&console_log).map_err(HarnessError::io(format!(
            "create {}",
            console_log.display()
        )))?;
        let log2 = log
            .try_clone()
            .map_err(HarnessError::io("duplicate the console log"))?;
        let mut bind_conf = std::ffi::OsString::from("--bind-ro=");
        bind_conf.push(&sshd_conf);
        bind_conf.push(":/etc/ssh/sshd_config.d/fleet-test.conf");
        let mut bind_keys = std::ffi::OsString::from("--bind-ro=");
        bind_keys.push(&keys);
        bind_keys.push(":/etc/fleet-test");
        let mut cmd = Command::new(NSPAWN);
        for (flag, binds) in [("--bind-ro=", &options.bind_ro), ("--bind=", &options.bind)] {
            for (host, inside) in binds {
                let mut arg = std::ffi::OsString::from(flag);
                arg.push(host);
                arg.push(":");
                arg.push(inside);
                cmd.arg(arg);
            }
        }
        if options.private_network {
            cmd.arg("--private-network");
        }
        if options.init == Init::Sysv {
            // SysV init ignores systemd's SIGRTMIN+3; SIGINT runs inittab's ctrlaltdel line,
            // whose shutdown ends the container.
            cmd.arg("--kill-signal=SIGINT");
        }
        let child = cmd
            .arg("--directory")
            .arg(&rootfs)
            .arg(format!("--machine={machine}"))
            // No machined or host systemd here: nothing to register with, no scope to make.
            .args([
                "--register=no",
                "--keep-unit",
                "--settings=no",
                "--link-journal=no",
                "--volatile=overlay",
            ])
            .arg(bind_conf)
            .arg(bind_keys)
            .arg("--boot")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .spawn()
            .map_err(HarnessError::io(format!("start {NSPAWN}")))?;
        let mut node = NspawnNode {
            machine,
            addr,
            port: NSPAWN_SSH_PORT,
            console_log,
            init: options.init,
            private_network: options.private_network,
            child: Some(child),
            _block: block,
        };
        node.wait_ready()?;
        Ok(node)
    }

    /// `addr:port` of its sshd.
    pub fn socket_addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.addr, self.port)
    }

    /// An OpenSSH client logging in as root with `identity`, checking the host key strictly
    /// against `known_hosts` only; append the remote command.
    pub fn ssh_command(&self, identity: &Path, known_hosts: &Path) -> Command {
        let mut cmd = Command::new(node::SSH);
        cmd.args(["-F", "/dev/null", "-o", "BatchMode=yes", "-o"])
            .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
            .args(["-o", "StrictHostKeyChecking=yes", "-o", "LogLevel=error"])
            .arg("-i")
            .arg(identity)
            .arg("-p")
            .arg(self.port.to_string())
            .arg(format!("root@{}", self.addr))
            .stdin(Stdio::null());
        cmd
    }

    /// Powers the container off (SIGTERM to its `systemd-nspawn`, which asks systemd to shut
    /// down) and waits for it; past [`POWEROFF_TIMEOUT`], SIGKILL and an error.
    pub fn poweroff(&mut self) -> Result<(), HarnessError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // SIGTERM to `systemd-nspawn` asks systemd to shut down.
        if crate::agents::terminate_child(&mut child, POWEROFF_TIMEOUT, NSPAWN)? {
            Ok(())
        } else {
            Err(HarnessError::ContainerStuck {
                machine: self.machine.clone(),
                timeout: POWEROFF_TIMEOUT,
                log: self.console_log.clone(),
                tail: node::log_tail(&self.console_log),
            })
        }
    }

    /// The container's PID 1 as this machine sees it: the child of our `systemd-nspawn`
    /// whose innermost pid is 1.
    pub fn leader(&self) -> Option<u32> {
        let nspawn = self.child.as_ref()?.id();
        let tasks = fs::read_dir(format!("/proc/{nspawn}/task")).ok()?;
        for task in tasks.flatten() {
            let children = fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for pid in children
                .split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
            {
                let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                let inner = status
                    .lines()
                    .find_map(|l| l.strip_prefix("NSpid:"))
                    .and_then(|l| l.split_whitespace().last().map(str::to_owned));
                if inner.as_deref() == Some("1") {
                    return Some(pid);
                }
            }
        }
        None
    }

    /// Runs `script` with `/bin/sh -c` as root inside the container (`nsenter` into all its
    /// namespaces and its root), with a clean environment plus `env`: works with a private
    /// network too. Its output, whatever the exit status.
    pub fn exec(
        &self,
        script: &str,
        env: &[(&str, &str)],
    ) -> Result<std::process::Output, HarnessError> {
        let leader = self.leader().ok_or_else(|| {
            HarnessError::NspawnUnavailable(format!(
                "container {}: its PID 1 is not found (is it still running?)",
                self.machine
            ))
        })?;
        Command::new("nsenter")
            .args([
                "--target",
                &leader.to_string(),
                "--all",
                "--root",
                "--wd",
                "--",
            ])
            .args(["/usr/bin/env", "-i"])
            .args([
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "HOME=/root",
                "LANG=C.UTF-8",
            ])
            .args(env.iter().map(|(k, v)| format!("{k}={v}")))
            .args(["/bin/sh", "-c", script])
            .stdin(Stdio::null())
            .output()
            .map_err(HarnessError::io("run nsenter (package util-linux)"))
    }

    /// The console's last lines, for a failing test's message.
    pub fn console_tail(&self) -> String {
        node::log_tail(&self.console_log)
    }

    fn wait_ready(&mut self) -> Result<(), HarnessError> {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        let addr = SocketAddr::V4(self.socket_addr());
        loop {
            let child = self.child.as_mut().expect("booted");
            if let Some(status) = child
                .try_wait()
                .map_err(HarnessError::io(format!("check {NSPAWN}")))?
            {
                self.child = None;
                return Err(HarnessError::ContainerExited {
                    machine: self.machine.clone(),
                    status: status.to_string(),
                    log: self.console_log.clone(),
                    tail: node::log_tail(&self.console_log),
                });
            }
            let ready = if self.private_network {
                self.leader().is_some_and(|pid| listening(pid, self.port))
            } else {
                TcpStream::connect_timeout(&addr, POLL).is_ok()
            };
            if ready {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let error = HarnessError::ContainerNotReady {
                    machine: self.machine.clone(),
                    addr: self.socket_addr(),
                    timeout: BOOT_TIMEOUT,
                    log: self.console_log.clone(),
                    tail: node::log_tail(&self.console_log),
                };
                let _ = self.poweroff();
                return Err(error);
            }
            thread::sleep(POLL);
        }
    }
}

impl Drop for NspawnNode {
    fn drop(&mut self) {
        if let Err(e) = self.poweroff() {
            eprintln!("fleet-tests: {e}");
        }
    }
}

/// Root, `systemd-nspawn` and a complete cached root filesystem, or how to get them.
fn check_ready_to_boot(init: Init) -> Result<(), HarnessError> {
    if !rustix::process::geteuid().is_root() {
        return Err(HarnessError::NspawnUnavailable(
            "systemd-nspawn needs root: run the test as root".into(),
        ));
    }
    if !Path::new(NSPAWN).exists() {
        return Err(HarnessError::NspawnUnavailable(format!(
            "{NSPAWN} not found: apt-get install -y systemd-container (scripts/setup.sh does)"
        )));
    }
    let rootfs = NspawnNode::rootfs_of(init);
    match fs::metadata(rootfs.join(ROOTFS_MARKER)) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err(HarnessError::NspawnUnavailable(format!(
                "{} is not a complete root filesystem (no {ROOTFS_MARKER}): build it with {PREPARE}",
                rootfs.display()
            )))
        }
        Err(e) => Err(HarnessError::io(format!("read {}", rootfs.display()))(e)),
    }
}

/// Whether the network namespace of `pid` has a socket listening on TCP `port`
/// (`/proc/PID/net/tcp`, state 0A).
fn listening(pid: u32, port: u16) -> bool {
    let table = fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    let local = format!(":{port:04X}");
    table.lines().skip(1).any(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        cols.len() > 3 && cols[1].ends_with(&local) && cols[3] == "0A"
    })
}

fn write(path: &Path, text: &str) -> Result<(), HarnessError> {
    fs::write(path, text).map_err(HarnessError::io(format!("write {}", path.display())))
}
