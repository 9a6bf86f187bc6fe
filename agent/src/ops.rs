//! What the agent does: stage a bundle (receive, verify against the node's trust root,
//! unpack, then move into place), switch `current` (after checking the installed tree against
//! its manifest), roll back, report status. Every step that writes is ordered so that a crash
//! between any two leaves a node that still rolls back and a replay floor that never dropped.
//! Every operation that changes the node holds the node's agent lock, so two controllers never
//! interleave on one node; `status` only reads. Not the wire: the outcomes are `fleet-proto`'s types, and
//! turning a request into an answer is `serve`'s.

use std::fs;
use std::io::{Read, Write};
use std::time::{Duration, SystemTime};

use fleet_proto::{Staged, Status, Switched};
use fleet_release::{Manifest, Root, Timestamp};

use crate::idle::Deadline;
use crate::installed::check_tree;
use crate::layout::{Layout, sync_dir};
use crate::{AgentError, VERSION, io};

/// Receives the bundle for `version` from `input` into the staging area, verifies it against
/// `trust/root.json` (signatures, expiry, every byte and hash, as written to disk), checks it
/// is that version, for this platform and this agent, not expired before the newest release
/// this node accepted, and only then moves the unpacked tree to `releases/<version>`. The whole bundle must arrive within the layout's receive deadline
/// ([`crate::RECEIVE_DEADLINE`]).
///
/// Crash-safe: the steps that change the node come after verification, in this order, so a
/// crash between any two leaves a node that works as before: the created-time floor is raised
/// (never lowered); the verified tree takes the
/// place of `releases/<version>` in one rename (an exchange when a tree without a manifest is
/// there: the old tree is deleted only after the new one is in place); the sha256 of the exact
/// signed manifest bytes (`state/manifests/<version>.sha256`, the digest rollout orders name)
/// is written next, and the manifest last: only then does the release count as staged, and a
/// staged release always has its digest. On a refusal nothing changes outside
/// staging, which is cleared.
pub fn stage(
    layout: &Layout,
    wanted: &semver::Version,
    input: &mut impl Read,
    now: SystemTime,
) -> Result<Staged, AgentError> {
    let version = wanted.to_string();
    let version = version.as_str();
    let _lock = layout.lock()?;
    finish_switch(layout)?;
    // A staged release whose tree still matches its manifest is kept; one changed since is
    // staged again.
    // One staged before its digest was kept (an older agent) is staged again, so that rollout
    // orders can name it.
    if staged_manifest(layout, version)?
        .is_some_and(|manifest| check_tree(&layout.release(version), &manifest).is_ok())
        && layout.manifest_digest(version).is_file()
    {
        return Ok(Staged {
            version: version.into(),
            changed: false,
            files: 0,
            bytes: 0,
        });
    }
    // Whatever an interrupted run left in staging is garbage.
    clear_staging(layout)?;
    let bundle = layout.staging().join(format!("{version}.bundle"));
    let tree = layout.staging().join(format!("{version}.tree"));
    let mut input = Deadline::new(input, layout.receive_deadline());
    let outcome = receive_and_unpack(layout, wanted, &mut input, &bundle, &tree, now)
        .and_then(|(manifest, digest)| install(layout, version, &tree, &manifest, &digest));
    // Staging is cleared again by the next stage; a failure here must not hide the outcome.
    let _ = clear_staging(layout);
    outcome
}

/// Puts a verified tree in place as `releases/<version>`; the steps are ordered for a crash
/// between any two (see [`stage`]).
fn install(
    layout: &Layout,
    version: &str,
    tree: &std::path::Path,
    manifest: &Manifest,
    digest: &str,
) -> Result<Staged, AgentError> {
    raise_created_floor(layout, manifest.created)?;
    let release = layout.release(version);
    if release.symlink_metadata().is_ok() {
        // Not staged (no manifest) or altered: swapped for the verified tree in one step, so
        // `releases/<version>` is never missing (`current` may point at it); the old tree
        // lands in staging and goes with it.
        rustix::fs::renameat_with(
            rustix::fs::CWD,
            tree,
            rustix::fs::CWD,
            &release,
            rustix::fs::RenameFlags::EXCHANGE,
        )
        .map_err(|e| AgentError::Io {
            path: release.clone(),
            error: e.into(),
        })?;
    } else {
        fs::rename(tree, &release).map_err(io(&release))?;
    }
    sync_dir(&layout.releases())?;
    layout.write_atomic(
        &layout.manifest_digest(version),
        format!("{digest}\n").as_bytes(),
    )?;
    let bytes =
        serde_json::to_vec_pretty(manifest).map_err(|e| AgentError::Layout(e.to_string()))?;
    layout.write_atomic(&layout.manifest(version), &bytes)?;
    Ok(Staged {
        version: version.into(),
        changed: true,
        files: manifest.file_count(),
        bytes: manifest.total_size(),
    })
}

fn receive_and_unpack(
    layout: &Layout,
    wanted: &semver::Version,
    input: &mut impl Read,
    bundle: &std::path::Path,
    tree: &std::path::Path,
    now: SystemTime,
) -> Result<(Manifest, String), AgentError> {
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
    let (manifest, digest) = (verified.manifest, verified.manifest_sha256);
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
    if let Some(newest) = created_floor(layout)?
        && manifest.expires.0 <= newest.0
    {
        return Err(AgentError::ExpiredForNode {
            version: wanted.to_string(),
            expires: manifest.expires,
            newest,
        });
    }
    let agent: semver::Version = VERSION.parse().expect("the crate version is semver");
    if manifest.min_agent_version > agent {
        return Err(AgentError::AgentTooOld {
            version: wanted.to_string(),
            needed: manifest.min_agent_version.to_string(),
        });
    }
    Ok((manifest, digest))
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
/// release that is not staged, one whose tree no longer matches its manifest, and one older
/// than the active release unless `allow_downgrade`.
pub fn activate(
    layout: &Layout,
    wanted: &semver::Version,
    allow_downgrade: bool,
) -> Result<Switched, AgentError> {
    let version = wanted.to_string();
    let version = version.as_str();
    let _lock = layout.lock()?;
    finish_switch(layout)?;
    let active = check_activation(layout, wanted, allow_downgrade)?;
    if active.as_deref() == Some(version) {
        let previous = layout.link_version(&layout.previous())?;
        return Ok(Switched {
            active: version.into(),
            previous,
            changed: false,
            server: fleet_proto::SwitchOutcome::NotRestarted,
        });
    }
    // Read and check everything that can fail before anything is switched.
    let manifest =
        staged_manifest(layout, version)?.ok_or_else(|| AgentError::NotStaged(version.into()))?;
    check_tree(&layout.release(version), &manifest)?;
    let counter = manifest.counter.max(installed_counter(layout)?);
    // The replay floor first: a crash after it leaves the old release running under a floor
    // that only rose. Then the journal of the switch, `current`, and `previous` from the
    // journal: a crash before `current` leaves the node as it was (`previous` untouched), one
    // after it is finished by the next operation, which points `previous` at the release left.
    layout.write_atomic(&layout.counter(), format!("{counter}\n").as_bytes())?;
    if let Some(active) = &active {
        let journal = format!("{active} {version}\n");
        layout.write_atomic(&layout.switch_journal(), journal.as_bytes())?;
    }
    layout.point(&layout.current(), version)?;
    finish_switch(layout)?;
    Ok(Switched {
        active: version.into(),
        previous: active,
        changed: true,
        server: fleet_proto::SwitchOutcome::NotRestarted,
    })
}

/// Whether `wanted` may become current: staged, and not older than the active release unless
/// `allow_downgrade`. Answers the active release. Only reads; the daemon asks it before it
/// drains the server for a switch, and `activate` asks it again under the node's lock.
pub fn check_activation(
    layout: &Layout,
    wanted: &semver::Version,
    allow_downgrade: bool,
) -> Result<Option<String>, AgentError> {
    let version = wanted.to_string();
    if !is_staged(layout, &version) {
        return Err(AgentError::NotStaged(version));
    }
    let active = layout.link_version(&layout.current())?;
    if let Some(active) = &active {
        let older = active
            .parse::<semver::Version>()
            .is_ok_and(|active| *wanted < active);
        if older && !allow_downgrade {
            return Err(AgentError::Downgrade {
                wanted: version,
                active: active.clone(),
            });
        }
    }
    Ok(active)
}

/// Finishes a switch `state/switch` records (see [`Layout::switch_journal`]): once `current`
/// names the release it went to, `previous` names the one it left. The journal goes either
/// way; one that does not read as two versions of releases on this node changes nothing.
fn finish_switch(layout: &Layout) -> Result<(), AgentError> {
    let path = layout.switch_journal();
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(&path)(e)),
    };
    let words: Vec<&str> = text.split_whitespace().collect();
    if let [left, went] = words[..]
        && [left, went]
            .iter()
            .all(|v| semver::Version::parse(v).is_ok())
        && layout.release(left).is_dir()
        && layout.link_version(&layout.current())?.as_deref() == Some(went)
    {
        layout.point(&layout.previous(), left)?;
    }
    fs::remove_file(&path).map_err(io(&path))?;
    sync_dir(&layout.state())
}

/// Swaps `current` and `previous` in one step (an exchange of the two links), after checking
/// that the release it goes back to still matches its manifest.
pub fn rollback(layout: &Layout) -> Result<Switched, AgentError> {
    let _lock = layout.lock()?;
    finish_switch(layout)?;
    let previous = layout
        .link_version(&layout.previous())?
        .ok_or(AgentError::NoPrevious)?;
    let manifest = staged_manifest(layout, &previous)?
        .ok_or_else(|| AgentError::NotStaged(previous.clone()))?;
    check_tree(&layout.release(&previous), &manifest)?;
    let active = layout.link_version(&layout.current())?;
    layout.swap(&layout.previous(), &layout.current())?;
    Ok(Switched {
        active: previous,
        previous: active,
        changed: true,
        server: fleet_proto::SwitchOutcome::NotRestarted,
    })
}

/// The node's release state; only reads.
pub fn status(layout: &Layout) -> Result<Status, AgentError> {
    layout.ensure()?;
    let mut staged: Vec<String> = fs::read_dir(layout.releases())
        .map_err(io(layout.releases()))?
        .filter_map(|e| e.ok().and_then(|e| e.file_name().into_string().ok()))
        .filter(|v| is_staged(layout, v))
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
        daemon: None,
    })
}

/// The highest counter of any release this node activated (0 before the first).
fn installed_counter(layout: &Layout) -> Result<u64, AgentError> {
    Ok(read_number(&layout.counter())?.unwrap_or(0))
}

/// A number the agent keeps in a file of `state/`; `None` when the file is not there yet.
pub(crate) fn read_number(path: &std::path::Path) -> Result<Option<u64>, AgentError> {
    match fs::read_to_string(path) {
        Ok(text) => {
            text.trim().parse().map(Some).map_err(|_| {
                AgentError::Layout(format!("{} does not hold a number", path.display()))
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(path)(e)),
    }
}

/// Whether `releases/<version>` is a staged release: its tree and its manifest are there.
pub(crate) fn is_staged(layout: &Layout, version: &str) -> bool {
    layout.release(version).is_dir() && layout.manifest(version).is_file()
}

/// The verified manifest a staged release was staged with; `None` when it is not staged.
fn staged_manifest(layout: &Layout, version: &str) -> Result<Option<Manifest>, AgentError> {
    if !is_staged(layout, version) {
        return Ok(None);
    }
    let path = layout.manifest(version);
    let text = fs::read(&path).map_err(io(&path))?;
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| AgentError::Layout(format!("{}: {e}", path.display())))
}

/// The newest `created` time of any release this node accepted (`state/created`, unix
/// seconds); `None` before the first.
fn created_floor(layout: &Layout) -> Result<Option<Timestamp>, AgentError> {
    Ok(read_number(&layout.created_floor())?
        .map(|secs| Timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))))
}

/// Raises the created-time floor to `created`; never lowers it.
fn raise_created_floor(layout: &Layout, created: Timestamp) -> Result<(), AgentError> {
    if created_floor(layout)?.is_some_and(|floor| floor >= created) {
        return Ok(());
    }
    let secs = created
        .0
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    layout.write_atomic(&layout.created_floor(), format!("{secs}\n").as_bytes())
}
