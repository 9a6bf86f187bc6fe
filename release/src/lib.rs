//! Signed releases: key files, trust roots, the release tree's layout and its assembly from
//! built binaries, the bundle format, building a bundle and verifying one in a single
//! streaming pass. Not transport or installation: the controller
//! moves bundles and the agent installs them, both through this crate's checks.

pub mod bundle;
pub mod keys;
pub mod manifest;
pub mod order;
pub mod signatures;
pub mod tree;
pub mod trust;

use std::path::PathBuf;

pub use bundle::{BuildOptions, StoredRelease, Verified, build, list_store, unpack, verify};
pub use keys::{PublicKey, SecretKey, write_key_pair};
pub use manifest::{Entry, Manifest, Payload, Timestamp};
pub use order::{Action, Control, Order, SignedControl, SignedOrder};
pub use tree::{AssembledTree, assemble};
pub use trust::{Root, RootBody};

/// Everything that can go wrong with keys, roots and bundles. Each refusal has its own
/// variant so callers and tests can tell them apart. Fields holding an underlying error are
/// named `error`, not `source`: the message already includes it, and a `source` would print
/// it twice in an error chain.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("reading bundle: {0}")]
    Read(std::io::Error),
    #[error("writing bundle: {0}")]
    Write(std::io::Error),
    #[error("{}: {reason}", path.display())]
    BadKeyFile { path: PathBuf, reason: String },
    #[error("key name `{0}` must be letters, digits, `-`, `_` or `.` (not starting with `.`)")]
    BadKeyName(String),
    #[error("{} already exists; refusing to overwrite it", .0.display())]
    Exists(PathBuf),
    #[error("no randomness from the operating system: {0}")]
    Random(String),

    #[error("bad root document: {0}")]
    BadRoot(String),
    #[error("new root has version {offered}, but the current root is version {current}: a rotation must go to version {}", current + 1)]
    RootVersion { current: u64, offered: u64 },

    #[error("not a fleet bundle (bad magic bytes at the start)")]
    NotABundle,
    #[error("bundle is truncated")]
    Truncated,
    #[error("bundle is corrupt: {0}")]
    Corrupt(String),
    #[error("{what} is larger than its cap of {cap} bytes")]
    TooLarge {
        what: &'static str,
        size: u64,
        cap: u64,
    },
    #[error("{what} is not signed")]
    MissingSignature { what: &'static str },
    #[error(
        "{what}: signature by key {key} does not verify (the document was altered or the signature is damaged)"
    )]
    BadSignature { what: &'static str, key: PublicKey },
    #[error("{what}: signed by unknown key {key}, which the trust root does not name")]
    UnknownKey { what: &'static str, key: PublicKey },
    #[error("{what}: key {key} signed more than once (a repeated signature never counts twice)")]
    RepeatedSignature { what: &'static str, key: PublicKey },
    #[error("{what}: {valid} valid signature(s) from trusted keys, {needed} needed")]
    ThresholdNotMet {
        what: &'static str,
        valid: usize,
        needed: u32,
    },
    #[error("bad rollout order: {0}")]
    BadOrder(String),
    #[error("{what}: signed by a {role} key, not an order key ({key})")]
    NotOrderKey {
        what: &'static str,
        role: &'static str,
        key: PublicKey,
    },
    #[error("{what}: the trust root names no order keys, so it accepts no order")]
    NoOrderKeys { what: &'static str },
    #[error("{what} expired at {expires}")]
    OrderExpired {
        what: &'static str,
        expires: Timestamp,
    },
    #[error("bad manifest: {0}")]
    BadManifest(String),
    #[error("release {version} expired at {expires}")]
    Expired { version: String, expires: Timestamp },
    #[error(
        "the archive unpacks to more than the {cap} bytes its manifest accounts for (a compression bomb?)"
    )]
    Inflated { cap: u64 },
    #[error("payload: {0} (the bundle was altered after signing)")]
    PayloadMismatch(&'static str),
    #[error("`{path}`: sha256 differs from the manifest")]
    HashMismatch { path: String },
    #[error("`{path}`: size is {actual} bytes, the manifest says {expected}")]
    SizeMismatch {
        path: String,
        expected: u64,
        actual: u64,
    },
    #[error("`{path}`: {what} differs from the manifest")]
    EntryDiffers { path: String, what: String },
    #[error("`{path}` is in the archive but not in the manifest")]
    Unlisted { path: String },
    #[error("`{path}` is in the manifest but not in the archive")]
    Missing { path: String },
    #[error("`{path}`: path contains `..`")]
    PathTraversal { path: String },
    #[error("`{path}`: absolute path")]
    AbsolutePath { path: String },
    #[error("`{path}`: symlink to `{target}` leaves the release tree")]
    LinkEscapes { path: String, target: String },
    #[error("`{path}`: device file")]
    DeviceFile { path: String },
    #[error("`{path}`: unsafe path: {reason}")]
    UnsafePath { path: String, reason: String },

    #[error("{}: {reason}", path.display())]
    Source { path: PathBuf, reason: String },
    #[error("{}: not found; build it with `{}`", path.display(), tree::BUILD_HINT)]
    MissingBinary { path: PathBuf },
    #[error("release {version} is already in the store at {}", path.display())]
    VersionExists { version: String, path: PathBuf },
    #[error("{}: {error}", path.display())]
    InFile {
        path: PathBuf,
        error: Box<ReleaseError>,
    },
}
