//! The install script and the offline bundle for nodes we cannot reach (`fleet installer`):
//! `install.sh` rendered from `templates/install.sh.j2` for one release, with the sha256 of
//! the agent it starts from, the trust root a first install pins, and the agent's service
//! definitions (the systemd unit with its version marks, the SysV script, the upstart job);
//! the release server's folder it is served from (`latest`, bundles, agents, `SHA256SUMS`);
//! and the offline tar. Not the node side: the script hands every bundle to the node's agent,
//! which verifies it against its pinned root as for a push.

mod script;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result, bail};
use fleet_release::Root;
use sha2::{Digest, Sha256};

pub use script::{Script, render_script};

/// What `fleet installer build` is asked for.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    pub version: semver::Version,
    pub store: PathBuf,
    pub trust: PathBuf,
    pub out: PathBuf,
    /// The address `out` is served at: the script downloads from there. `None`: no online
    /// script.
    pub url: Option<String>,
    pub offline: bool,
}

/// What it wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Built {
    pub version: String,
    pub platform: String,
    pub agent_sha256: String,
    /// Files written into `out`, by name.
    pub files: Vec<String>,
    /// `latest` after this build (not raised by an older release).
    pub latest: String,
    pub offline: Option<PathBuf>,
}

/// The folder's list of checksums, as `sha256sum -c` reads it.
pub const SUMS: &str = "SHA256SUMS";
/// The file naming the newest release in the folder.
pub const LATEST: &str = "latest";
/// The script's name.
pub const SCRIPT: &str = "install.sh";

/// The names a release's files have in a release server's folder and an offline bundle.
pub fn bundle_name(version: &str) -> String {
    format!("fleet-{version}.bundle")
}

pub fn agent_name(version: &str, arch: &str) -> String {
    format!("fleet-agent-{version}-{arch}")
}

pub fn offline_name(version: &str, arch: &str) -> String {
    format!("fleet-offline-{version}-{arch}")
}

/// Builds the install script (and with `offline`, the offline bundle) for one release of the
/// store: the bundle is verified against the trust root first, and the agent the script
/// installs is the one the signed release carries.
pub fn build(req: &BuildRequest) -> Result<Built> {
    if req.url.is_none() && !req.offline {
        bail!(
            "give --url URL (where --out will be served) for the online script, --offline for the offline bundle, or both"
        );
    }
    if let Some(url) = &req.url {
        check_url(url)?;
    }
    let root = Root::load(&req.trust).context("trust root")?;
    let root_text =
        fs::read_to_string(&req.trust).with_context(|| format!("{}", req.trust.display()))?;
    let version = req.version.to_string();
    let bundle = req.store.join(format!("{version}.bundle"));
    let scratch = tempfile::Builder::new()
        .prefix(".fleet-installer-")
        .tempdir_in(existing_dir(&req.out)?)
        .context("a scratch folder beside --out")?;
    let tree = scratch.path().join("tree");
    let file = fs::File::open(&bundle)
        .with_context(|| format!("release {version}: {}", bundle.display()))?;
    let verified = fleet_release::unpack(file, &root, SystemTime::now(), &tree)
        .with_context(|| format!("{}: refused by {}", bundle.display(), req.trust.display()))?;
    let platform = verified.manifest.platform.clone();
    let arch = platform
        .strip_prefix("linux-")
        .with_context(|| format!("release {version} is for {platform}, not a Linux platform"))?
        .to_owned();
    let agent_path = tree.join(fleet_release::tree::AGENT_BIN);
    let agent = fs::read(&agent_path).with_context(|| {
        format!(
            "release {version} carries no {}: the script installs the release's own agent",
            fleet_release::tree::AGENT_BIN
        )
    })?;
    let agent_sha256 = hex::encode(Sha256::digest(&agent));
    let bundle_bytes = fs::read(&bundle).with_context(|| format!("{}", bundle.display()))?;
    let script = |url: &str| {
        render_script(&Script {
            version: &version,
            platform: &platform,
            agent_file: &agent_name(&version, &arch),
            agent_sha256: &agent_sha256,
            url,
            trust_root: root_text.trim_end(),
        })
    };

    let mut files = Vec::new();
    let mut latest = read_latest(&req.out)?;
    if let Some(url) = &req.url {
        write_file(&req.out.join(bundle_name(&version)), &bundle_bytes, 0o644)?;
        write_file(&req.out.join(agent_name(&version, &arch)), &agent, 0o755)?;
        files.extend([bundle_name(&version), agent_name(&version, &arch)]);
        // The folder's script and `latest` are the newest release's: an older build adds its
        // files without taking them back.
        if latest.as_ref().is_none_or(|l| *l <= req.version) {
            write_file(&req.out.join(SCRIPT), script(url)?.as_bytes(), 0o755)?;
            write_file(
                &req.out.join(LATEST),
                format!("{version}\n").as_bytes(),
                0o644,
            )?;
            files.extend([SCRIPT.to_owned(), LATEST.to_owned()]);
            latest = Some(req.version.clone());
        }
        write_sums(&req.out)?;
        files.push(SUMS.to_owned());
    }
    let offline = if req.offline {
        let name = offline_name(&version, &arch);
        let path = req.out.join(format!("{name}.tar"));
        let script = script("")?;
        let members: Vec<(String, &[u8], u32)> = vec![
            (SCRIPT.to_owned(), script.as_bytes(), 0o755),
            (agent_name(&version, &arch), &agent, 0o755),
            (bundle_name(&version), &bundle_bytes, 0o644),
        ];
        write_tar(&path, &name, &members)?;
        files.push(format!("{name}.tar"));
        Some(path)
    } else {
        None
    };
    Ok(Built {
        version,
        platform,
        agent_sha256,
        files,
        latest: latest.map(|l| l.to_string()).unwrap_or_default(),
        offline,
    })
}

/// An address the script may download from: http(s), nothing a shell or sed would read.
fn check_url(url: &str) -> Result<()> {
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        bail!("--url {url:?}: give an http:// or https:// address");
    }
    if let Some(c) = url
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-._~:/?#[]@!&()*+,;=%".contains(*c)))
    {
        bail!("--url {url:?}: {c:?} does not belong in an address");
    }
    Ok(())
}

fn existing_dir(dir: &Path) -> Result<&Path> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// The version `dir/latest` names, if any.
fn read_latest(dir: &Path) -> Result<Option<semver::Version>> {
    let path = dir.join(LATEST);
    match fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .parse()
            .map(Some)
            .with_context(|| format!("{}: not a release version", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("{}", path.display())),
    }
}

/// Writes `path` through a temporary name renamed over it.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    crate::files::replace(path, bytes, mode).with_context(|| format!("writing {}", path.display()))
}

/// `SHA256SUMS` of every release file in `dir` (not itself, not scratch folders).
fn write_sums(dir: &Path) -> Result<()> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("{}", dir.display()))? {
        let entry = entry.with_context(|| format!("{}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == SUMS || name.starts_with('.') || !entry.file_type()?.is_file() {
            continue;
        }
        names.push(name);
    }
    names.sort();
    let mut text = String::new();
    for name in names {
        let bytes = fs::read(dir.join(&name)).with_context(|| name.clone())?;
        text.push_str(&format!(
            "{}  {name}\n",
            hex::encode(Sha256::digest(&bytes))
        ));
    }
    write_file(&dir.join(SUMS), text.as_bytes(), 0o644)
}

/// A plain tar of `members` under the folder `top`, with their `SHA256SUMS`.
fn write_tar(path: &Path, top: &str, members: &[(String, &[u8], u32)]) -> Result<()> {
    let mut sums = String::new();
    for (name, bytes, _) in members {
        sums.push_str(&format!("{}  {name}\n", hex::encode(Sha256::digest(bytes))));
    }
    let tmp = path.with_extension("tar.tmp");
    let file = fs::File::create(&tmp).with_context(|| format!("{}", tmp.display()))?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
    let mtime = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut dir = tar::Header::new_ustar();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    dir.set_mtime(mtime);
    tar.append_data(&mut dir, format!("{top}/"), std::io::empty())
        .context("writing the offline bundle")?;
    let all = members
        .iter()
        .map(|(n, b, m)| (n.as_str(), *b, *m))
        .chain(std::iter::once((SUMS, sums.as_bytes(), 0o644)));
    for (name, bytes, mode) in all {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(mode);
        header.set_size(bytes.len() as u64);
        header.set_mtime(mtime);
        tar.append_data(&mut header, format!("{top}/{name}"), bytes)
            .with_context(|| format!("writing {name} into the offline bundle"))?;
    }
    let mut out = tar
        .into_inner()
        .context("finishing the offline bundle")?
        .into_inner()
        .map_err(|e| e.into_error())
        .context("finishing the offline bundle")?;
    out.flush()?;
    out.sync_all()?;
    fs::rename(&tmp, path).with_context(|| format!("{}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_with_shell_words_are_refused() {
        assert!(check_url("https://releases.example.com/fleet").is_ok());
        assert!(check_url("http://127.0.0.1:8080").is_ok());
        for bad in [
            "ftp://x",
            "https://x/$(reboot)",
            "https://x/`id`",
            "https://x/a b",
            "https://x/'",
            "https://x/\"",
            "https://x/|",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }
}
