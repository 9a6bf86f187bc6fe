//! What the agent does: stage a bundle (receive, verify against the node's trust root,
//! unpack, then move into place), switch `current`, roll back, report status. Every operation
//! that changes the node holds the node's agent lock, so two controllers never interleave on
//! one node; `status` only reads. Not the wire: the outcomes are `fleet-proto`'s types, and
//! turning a request into an answer is `serve`'s.

use std::fs;
use std::io::{Read, Write};
use std::time::SystemTime;

use fleet_proto::{Staged, Status, Switched};
use fleet_release::{Manifest, Root};

use crate::idle::Deadline;
use crate::layout::{Layout, sync_dir};
use crate::{AgentError, VERSION, io};

/// Receives the bundle for `version` from `input` into the staging area, verifies it against
/// `trust/root.json` (signatures, expiry, every byte and hash, as written to disk), checks it
/// is that version, for this platform and this agent, and only then moves the unpacked tree
/// to `releases/<version>`. On any failure nothing is left in staging or in `releases/`. The
/// whole bundle must arrive within the layout's receive deadline ([`crate::RECEIVE_DEADLINE`]).
pub fn stage(
    layout: &Layout,
    wanted: &semver::Version,
    input: &mut impl Read,
    now: SystemTime,
) -> Result<Staged, AgentError> {
    let version = wanted.to_string();
    let version = version.as_str();
    let _lock = layout.lock()?;
    let release = layout.release(version);
    if release.is_dir() && layout.manifest(version).is_file() {
        return Ok(Staged {
            version: version.into(),
            changed: false,
            files: 0,
            bytes: 0,
        });
    }
    // Whatever an interrupted run left behind is garbage: a release only counts once renamed
    // with its manifest beside it.
    clear_staging(layout)?;
    if release.exists() {
        remove_tree(&release)?;
    }
    let bundle = layout.staging().join(format!("{version}.bundle"));
    let tree = layout.staging().join(format!("{version}.tree"));
    let mut input = Deadline::new(input, layout.receive_deadline());
    let result = receive_and_unpack(layout, wanted, &mut input, &bundle, &tree, now);
    let outcome = result.and_then(|manifest| {
        let bytes =
            serde_json::to_vec_pretty(&manifest).map_err(|e| AgentError::Layout(e.to_string()))?;
        layout.write_atomic(&layout.manifest(version), &bytes)?;
        fs::rename(&tree, layout.release(version)).map_err(io(layout.release(version)))?;
        sync_dir(&layout.releases())?;
        Ok(Staged {
            version: version.into(),
            changed: true,
            files: manifest.file_count(),
            bytes: manifest.total_size(),
        })
    });
    if outcome.is_err() {
        let _ = fs::remove_file(layout.manifest(version));
        let _ = remove_tree(&release);
    }
    // Staging is cleared again by the next stage; a failure here must not hide the outcome.
    let _ = clear_staging(layout);
    outcome
}

fn receive_and_unpack(
    layout: &Layout,
    wanted: &semver::Version,
    input: &mut impl Read,
    bundle: &std::path::Path,
    tree: &std::path::Path,
    now: SystemTime,
) -> Result<Manifest, AgentError> {
    // The payload is hashed as it arrives (one write, no second read for the digest).
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(bundle)
        .map_err(io(bundle))?;
    let root = Root::load(&layout.trust_root())?;
    let measured = {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, &mut file);
        let measured = fleet_release::bundle::receive(input, &mut out, &root)?;
        out.flush().map_err(io(bundle))?;
        measured
    };
    file.sync_all().map_err(io(bundle))?;
    std::io::Seek::rewind(&mut file).map_err(io(bundle))?;
    let verified = fleet_release::bundle::unpack_measured(file, &measured, &root, now, tree)?;
    let manifest = verified.manifest;
    if manifest.version != *wanted {
        return Err(AgentError::WrongVersion {
            wanted: wanted.to_string(),
            found: manifest.version.to_string(),
        });
    }
    let platform = fleet_release::bundle::host_platform();
    if manifest.platform != platform {
        return Err(AgentError::WrongPlatform {
            version: wanted.to_string(),
            platform: manifest.platform,
            node: platform,
        });
    }
    let installed = installed_counter(layout)?;
    if manifest.counter < installed {
        return Err(AgentError::OldCounter {
            version: wanted.to_string(),
            counter: manifest.counter,
            installed,
        });
    }
    let agent: semver::Version = VERSION.parse().expect("the crate version is semver");
    if manifest.min_agent_version > agent {
        return Err(AgentError::AgentTooOld {
            version: wanted.to_string(),
            needed: manifest.min_agent_version.to_string(),
        });
    }
    Ok(manifest)
}

fn clear_staging(layout: &Layout) -> Result<(), AgentError> {
    let staging = layout.staging();
    for item in fs::read_dir(&staging).map_err(io(&staging))? {
        let path = item.map_err(io(&staging))?.path();
        remove_tree(&path)?;
    }
    Ok(())
}

/// Removes a file, a symlink, or a directory tree (even one with read-only directories).
fn remove_tree(path: &std::path::Path) -> Result<(), AgentError> {
    let removed = if path.is_dir() && !path.is_symlink() {
        make_writable(path);
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match removed {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(AgentError::Io {
            path: path.to_owned(),
            error: e,
        }),
        _ => Ok(()),
    }
}

/// A half-unpacked tree may hold read-only directories; open them up so they can be removed.
fn make_writable(dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    if let Ok(items) = fs::read_dir(dir) {
        for item in items.flatten() {
            let path = item.path();
            if path.is_dir() && !path.is_symlink() {
                make_writable(&path);
            }
        }
    }
}

/// Makes a staged release current, keeping the one it replaces as `previous`. Refuses a
/// release that is not staged, and one older than the active release unless
/// `allow_downgrade`.
pub fn activate(
    layout: &Layout,
    wanted: &semver::Version,
    allow_downgrade: bool,
) -> Result<Switched, AgentError> {
    let version = wanted.to_string();
    let version = version.as_str();
    let _lock = layout.lock()?;
    if !layout.release(version).is_dir() || !layout.manifest(version).is_file() {
        return Err(AgentError::NotStaged(version.into()));
    }
    let active = layout.link_version(&layout.current())?;
    if active.as_deref() == Some(version) {
        let previous = layout.link_version(&layout.previous())?;
        return Ok(Switched {
            active: version.into(),
            previous,
            changed: false,
        });
    }
    if let Some(active) = &active {
        let older = active
            .parse::<semver::Version>()
            .is_ok_and(|active| *wanted < active);
        if older && !allow_downgrade {
            return Err(AgentError::Downgrade {
                wanted: version.into(),
                active: active.clone(),
            });
        }
        layout.point(&layout.previous(), active)?;
    }
    // Read everything that can fail before anything is switched.
    let counter = release_counter(layout, version)?.max(installed_counter(layout)?);
    layout.point(&layout.current(), version)?;
    layout.write_atomic(&layout.counter(), format!("{counter}\n").as_bytes())?;
    Ok(Switched {
        active: version.into(),
        previous: active,
        changed: true,
    })
}

/// Swaps `current` and `previous`.
pub fn rollback(layout: &Layout) -> Result<Switched, AgentError> {
    let _lock = layout.lock()?;
    let previous = layout
        .link_version(&layout.previous())?
        .ok_or(AgentError::NoPrevious)?;
    if !layout.release(&previous).is_dir() {
        return Err(AgentError::NotStaged(previous));
    }
    let active = layout.link_version(&layout.current())?;
    layout.point(&layout.current(), &previous)?;
    if let Some(active) = &active {
        layout.point(&layout.previous(), active)?;
    }
    Ok(Switched {
        active: previous,
        previous: active,
        changed: true,
    })
}

/// The node's release state; only reads.
pub fn status(layout: &Layout) -> Result<Status, AgentError> {
    layout.ensure()?;
    let mut staged: Vec<String> = fs::read_dir(layout.releases())
        .map_err(io(layout.releases()))?
        .filter_map(|e| e.ok().and_then(|e| e.file_name().into_string().ok()))
        .filter(|v| layout.manifest(v).is_file())
        .collect();
    staged.sort_by(
        |a, b| match (a.parse::<semver::Version>(), b.parse::<semver::Version>()) {
            (Ok(x), Ok(y)) => x.cmp(&y),
            _ => a.cmp(b),
        },
    );
    let stat = rustix::fs::statvfs(layout.root()).map_err(|e| AgentError::Io {
        path: layout.root().to_owned(),
        error: e.into(),
    })?;
    Ok(Status {
        agent_version: VERSION.into(),
        active: layout.link_version(&layout.current())?,
        previous: layout.link_version(&layout.previous())?,
        staged,
        free_bytes: stat.f_bavail.saturating_mul(stat.f_frsize),
    })
}

/// The highest counter of any release this node activated (0 before the first).
fn installed_counter(layout: &Layout) -> Result<u64, AgentError> {
    match fs::read_to_string(layout.counter()) {
        Ok(text) => text.trim().parse().map_err(|_| {
            AgentError::Layout(format!(
                "{} does not hold a number",
                layout.counter().display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(AgentError::Io {
            path: layout.counter(),
            error: e,
        }),
    }
}

/// The counter of a staged release, from its verified manifest.
fn release_counter(layout: &Layout, version: &str) -> Result<u64, AgentError> {
    let path = layout.manifest(version);
    let text = fs::read(&path).map_err(io(&path))?;
    let manifest: Manifest = serde_json::from_slice(&text)
        .map_err(|e| AgentError::Layout(format!("{}: {e}", path.display())))?;
    Ok(manifest.counter)
}
