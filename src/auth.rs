//! Bearer tokens with roles on the client port.
//!
//! A node started with `--auth-token-file FILE` serves its client port only to requests that
//! carry `authorization: Bearer TOKEN` with a token from that file, and only the methods the
//! token's [`Role`] allows ([`required_role`]): `readonly` reads, `readwrite` also writes,
//! `admin` also creates keyspaces, injects faults and runs backups. The check runs in the gate
//! in front of every service of the client port ([`crate::server::gate`]), so no handler can
//! forget it; a refusal is one sentence and exit 3 (nothing was done).
//!
//! The token file has one `ROLE TOKEN` per line (`#` starts a comment). Tokens are kept only as
//! SHA-256 digests and compared in constant time against every known digest, so neither the
//! timing nor a log line gives a token away. `cluster up --auth` writes one token per role under
//! `<data-dir>/auth/` ([`write_cluster_tokens`]).
//!
//! Caveats: the peer port (`--peer-listen`, required with auth) is not checked: members call
//! each other there, and it must stay on a network only members reach. Without TLS a token
//! crosses the network in the clear.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::Error;

/// The metadata key of a token, as `Bearer TOKEN`.
pub const AUTHORIZATION: &str = "authorization";

/// Shortest token a node accepts: shorter ones are guessable.
pub const TOKEN_CHARS_MIN: usize = 16;

/// What a token may do; each role may do everything the ones before it may.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Readonly,
    Readwrite,
    Admin,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Readonly => "readonly",
            Role::Readwrite => "readwrite",
            Role::Admin => "admin",
        }
    }

    fn parse(text: &str) -> Option<Role> {
        [Role::Readonly, Role::Readwrite, Role::Admin]
            .into_iter()
            .find(|r| r.name() == text)
    }
}

/// The role a gRPC method needs, or `None` for the ones anyone may call (health checks and
/// reflection). A capkv method this table does not know needs `admin`: new methods fail closed.
pub fn required_role(path: &str) -> Option<(Role, &str)> {
    let (service, method) = path.trim_start_matches('/').split_once('/')?;
    let role = match (service, method) {
        ("grpc.health.v1.Health", _) => return None,
        (s, _) if s.starts_with("grpc.reflection.") => return None,
        ("capkv.v1.Kv", "Get" | "Scan") => Role::Readonly,
        ("capkv.v1.Kv", "Put" | "Delete" | "CompareAndSwap" | "Txn") => Role::Readwrite,
        ("capkv.v1.Keyspaces", "List" | "Describe") => Role::Readonly,
        ("capkv.v1.Cluster", "Status" | "MemberList") => Role::Readonly,
        _ => Role::Admin,
    };
    Some((role, method))
}

/// The tokens a node accepts, as digests.
pub struct Tokens {
    known: Vec<([u8; 32], Role)>,
}

impl Tokens {
    /// Reads a token file (`ROLE TOKEN` per line).
    pub fn load(path: &Path) -> Result<Tokens, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::InvalidInput(format!("cannot read the token file {} ({e})", path.display())))?;
        Tokens::parse(&text).map_err(|why| Error::InvalidInput(format!("token file {}: {why}", path.display())))
    }

    fn parse(text: &str) -> Result<Tokens, String> {
        let mut known: Vec<([u8; 32], Role)> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut words = line.split_whitespace();
            let (Some(role), Some(token), None) = (words.next(), words.next(), words.next()) else {
                return Err(format!(
                    "line {} is not `ROLE TOKEN` (roles: readonly, readwrite, admin)",
                    n + 1
                ));
            };
            let role = Role::parse(role).ok_or_else(|| {
                format!(
                    "line {}: unknown role '{role}'; use readonly, readwrite or admin",
                    n + 1
                )
            })?;
            if token.chars().count() < TOKEN_CHARS_MIN {
                return Err(format!(
                    "line {}: the token is shorter than {TOKEN_CHARS_MIN} characters; use a long random one (e.g. `openssl rand -hex 32`)",
                    n + 1
                ));
            }
            let digest = digest(token.as_bytes());
            if known.iter().any(|(d, _)| *d == digest) {
                return Err(format!("line {}: the token appears twice", n + 1));
            }
            known.push((digest, role));
        }
        if known.is_empty() {
            return Err("it names no token; add lines `ROLE TOKEN`".into());
        }
        Ok(Tokens { known })
    }

    /// The role of `presented`, comparing its digest with every known one in constant time.
    pub fn role_of(&self, presented: &[u8]) -> Option<Role> {
        let wanted = digest(presented);
        let mut found = None;
        for (known, role) in &self.known {
            let difference = known.iter().zip(&wanted).fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if difference == 0 {
                found = Some(*role);
            }
        }
        found
    }

    /// Checks one request: its path and its `authorization` header.
    pub fn check(&self, path: &str, authorization: Option<&[u8]>, node: u64) -> Result<(), Error> {
        let Some((needed, method)) = required_role(path) else {
            return Ok(());
        };
        let token = authorization
            .and_then(|h| h.strip_prefix(b"Bearer "))
            .map(<[u8]>::trim_ascii);
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Err(Error::Refused(format!(
                "unauthenticated: node {node} requires a token; pass --token or set CAPKV_TOKEN (nothing was done)"
            )));
        };
        match self.role_of(token) {
            None => Err(Error::Refused(format!(
                "unauthenticated: node {node} does not know this token; check --token or CAPKV_TOKEN (nothing was done)"
            ))),
            Some(role) if role < needed => Err(Error::Refused(format!(
                "permission denied: role {} may not {} (it needs {}; nothing was done)",
                role.name(),
                verb(method),
                needed.name()
            ))),
            Some(_) => Ok(()),
        }
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// A method name as the CLI user knows it ("CompareAndSwap" is `cas`).
fn verb(method: &str) -> String {
    match method {
        "CompareAndSwap" => "cas".into(),
        "Create" => "create keyspaces".into(),
        other => other.to_lowercase(),
    }
}

/// Writes `admin.token`, `readwrite.token` and `readonly.token` (one random token each) and the
/// node's token file `tokens` under `dir`, all mode 0600; returns the node file's path.
pub fn write_cluster_tokens(dir: &Path) -> Result<PathBuf, Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    crate::storage::create_private_dir(dir)
        .map_err(|e| Error::InvalidInput(format!("cannot create {}: {e}", dir.display())))?;
    let write = |name: &str, text: &str| -> Result<(), Error> {
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(|e| Error::Internal(format!("cannot write {}: {e}", path.display())))
    };
    let mut file = String::from("# capkv node tokens: ROLE TOKEN per line (written by `cluster up --auth`)\n");
    for role in [Role::Admin, Role::Readwrite, Role::Readonly] {
        let token = hex::encode(rand::random::<[u8; 32]>());
        write(&format!("{}.token", role.name()), &format!("{token}\n"))?;
        file.push_str(&format!("{} {token}\n", role.name()));
    }
    write("tokens", &file)?;
    Ok(dir.join("tokens"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADMIN: &str = "admin-0123456789abcdef";
    const READER: &str = "reader-0123456789abcdef";

    fn tokens() -> Tokens {
        Tokens::parse(&format!(
            "# comment\nadmin {ADMIN}\n\nreadonly {READER}  # the dashboard\n"
        ))
        .unwrap()
    }

    #[test]
    fn a_token_file_names_roles_and_long_tokens_once() {
        let t = tokens();
        assert_eq!(t.role_of(ADMIN.as_bytes()), Some(Role::Admin));
        assert_eq!(t.role_of(READER.as_bytes()), Some(Role::Readonly));
        assert_eq!(t.role_of(b"admin-0123456789abcdeF"), None);
        for (bad, why) in [
            ("root 0123456789abcdef0", "unknown role 'root'"),
            ("admin short", "shorter than 16"),
            ("admin", "not `ROLE TOKEN`"),
            ("", "names no token"),
            (&format!("admin {ADMIN}\nreadonly {ADMIN}"), "appears twice"),
        ] {
            let err = Tokens::parse(bad).err().unwrap_or_default();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn each_role_may_do_what_its_methods_need_and_no_more() {
        let t = tokens();
        let bearer = |token: &str| format!("Bearer {token}").into_bytes();
        let check = |path: &str, token: Option<&str>| t.check(path, token.map(bearer).as_deref(), 1);
        assert!(check("/capkv.v1.Kv/Get", Some(READER)).is_ok());
        let err = check("/capkv.v1.Kv/Put", Some(READER)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "permission denied: role readonly may not put (it needs readwrite; nothing was done)"
        );
        assert_eq!(err.exit_code(), 3);
        assert!(check("/capkv.v1.Kv/CompareAndSwap", Some(ADMIN)).is_ok());
        assert!(check("/capkv.v1.Fault/Partition", Some(ADMIN)).is_ok());
        assert!(check("/capkv.v1.Fault/Partition", Some(READER)).is_err());
        let err = check("/capkv.v1.Kv/Get", None).unwrap_err();
        assert!(err.to_string().contains("requires a token"), "{err}");
        let err = check("/capkv.v1.Kv/Get", Some("nobody-0123456789abcdef")).unwrap_err();
        assert!(err.to_string().contains("does not know this token"), "{err}");
        assert!(
            check("/grpc.health.v1.Health/Check", None).is_ok(),
            "probes need no token"
        );
        assert_eq!(
            required_role("/capkv.v1.Cluster/SomethingNew").map(|r| r.0),
            Some(Role::Admin),
            "unknown methods fail closed"
        );
    }

    #[test]
    fn cluster_tokens_are_private_files_the_node_file_accepts() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = write_cluster_tokens(&dir.path().join("auth")).unwrap();
        let tokens = Tokens::load(&file).unwrap();
        for role in [Role::Admin, Role::Readwrite, Role::Readonly] {
            let path = dir.path().join("auth").join(format!("{}.token", role.name()));
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", path.display());
            let token = std::fs::read_to_string(&path).unwrap();
            assert_eq!(tokens.role_of(token.trim().as_bytes()), Some(role));
        }
    }
}
