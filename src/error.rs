//! Errors, named for what the caller does next, and their one mapping to and from gRPC.
//!
//! Every error answers two questions for a client: may it retry, and may the operation have
//! happened anyway? [`Error::exit_code`] encodes the answer as the CLI's exit code:
//! `3` definitely not applied (retry is safe), `4` outcome unknown (the write may have happened),
//! `5` the request itself is wrong or the node is broken (retry will not help), `1` the
//! operation ran and the answer is no.
//!
//! Lower layers convert into [`Error`] with `From` (`?` works on sled, codec and mode-parsing
//! errors), and a failure of this node's own disk is always [`Error::Storage`], never mistaken
//! for a network problem.

use tonic::{Code, Status};

use crate::mode::{Mode, UnknownMode};
use crate::storage::codec::CodecError;

/// Metadata key that carries the error kind, so the client can tell our refusals apart from
/// transport failures that share a gRPC code.
const ERROR_KIND_HEADER: &str = "capkv-error";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The request is malformed or over a limit; nothing was stored.
    #[error("{0}")]
    InvalidInput(String),
    /// This node cannot reach a majority (or a leader); nothing was applied. Retry elsewhere.
    #[error("no quorum: {0}")]
    NoQuorum(String),
    /// No node answered at all; the request was never sent. Retry later.
    #[error("unreachable: {0}")]
    Unreachable(String),
    #[error("keyspace '{0}' does not exist; create it with `capkv keyspace create {0} --mode cp|ap`")]
    UnknownKeyspace(String),
    /// The keyspace's mode does not offer this operation.
    #[error("{op} needs a {needs} keyspace; '{keyspace}' is {mode}")]
    ModeRefuses {
        op: String,
        keyspace: String,
        mode: Mode,
        needs: Mode,
    },
    /// The node refuses for a reason of its own configuration (e.g. fault injection off).
    #[error("{0}")]
    Refused(String),
    /// The thing to create exists already; the sentence says what it is.
    #[error("{0}")]
    AlreadyExists(String),
    /// The request was sent but no answer came in time: it may or may not have been applied.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// This node's own storage failed (disk error, corrupt record). Not a network problem.
    #[error("storage error: {0}")]
    Storage(String),
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The CLI exit code for this error (the table is in README, "Exit codes").
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::AlreadyExists(_) => 1,
            Error::NoQuorum(_)
            | Error::Unreachable(_)
            | Error::UnknownKeyspace(_)
            | Error::ModeRefuses { .. }
            | Error::Refused(_) => 3,
            Error::OutcomeUnknown(_) => 4,
            Error::InvalidInput(_) | Error::Storage(_) | Error::Internal(_) => 5,
        }
    }

    /// True when the operation was certainly not applied, so sending it elsewhere is safe.
    pub fn definitely_not_applied(&self) -> bool {
        matches!(self, Error::NoQuorum(_) | Error::Unreachable(_))
    }

    fn kind(&self) -> &'static str {
        match self {
            Error::InvalidInput(_) => "invalid_input",
            Error::NoQuorum(_) => "no_quorum",
            Error::Unreachable(_) => "unreachable",
            Error::UnknownKeyspace(_) => "unknown_keyspace",
            Error::ModeRefuses { .. } => "mode_refuses",
            Error::Refused(_) => "refused",
            Error::AlreadyExists(_) => "already_exists",
            Error::OutcomeUnknown(_) => "outcome_unknown",
            Error::Storage(_) => "storage",
            Error::Internal(_) => "internal",
        }
    }

    fn code(&self) -> Code {
        match self {
            Error::InvalidInput(_) => Code::InvalidArgument,
            Error::NoQuorum(_) | Error::Unreachable(_) => Code::Unavailable,
            Error::UnknownKeyspace(_) => Code::NotFound,
            Error::ModeRefuses { .. } | Error::Refused(_) => Code::FailedPrecondition,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::OutcomeUnknown(_) => Code::DeadlineExceeded,
            Error::Storage(_) | Error::Internal(_) => Code::Internal,
        }
    }

    /// Rebuilds an error from a status. Statuses our servers produce carry their kind; anything
    /// else came from the transport or a proxy and is classified by code alone, conservatively.
    pub fn from_status(status: &Status) -> Error {
        let message = status.message().to_string();
        let kind = status.metadata().get(ERROR_KIND_HEADER).and_then(|v| v.to_str().ok());
        let strip = |prefix: &str| message.strip_prefix(prefix).unwrap_or(&message).to_string();
        match kind {
            Some("invalid_input") => Error::InvalidInput(message),
            Some("no_quorum") => Error::NoQuorum(strip("no quorum: ")),
            Some("unreachable") => Error::Unreachable(strip("unreachable: ")),
            Some("unknown_keyspace") | Some("mode_refuses") | Some("refused") => Error::Refused(message),
            Some("already_exists") => Error::AlreadyExists(message),
            Some("outcome_unknown") => Error::OutcomeUnknown(strip("outcome unknown: ")),
            Some("storage") => Error::Storage(strip("storage error: ")),
            Some(_) => Error::Internal(strip("internal error: ")),
            None => Self::from_foreign_status(status),
        }
    }

    fn from_foreign_status(status: &Status) -> Error {
        let message = status.message().to_string();
        match status.code() {
            Code::InvalidArgument | Code::OutOfRange => Error::InvalidInput(message),
            Code::ResourceExhausted => Error::InvalidInput(format!("the request is too large: {message}")),
            Code::DeadlineExceeded | Code::Cancelled => Error::OutcomeUnknown(format!(
                "no answer before the deadline ({message}); the operation may or may not have been applied"
            )),
            // The connection could not be opened: the request never left this process.
            Code::Unavailable if never_sent(status) => {
                Error::Unreachable(format!("could not connect ({message}); the request was never sent"))
            }
            // A transport failure after the request went out: we cannot know whether it arrived.
            Code::Unavailable | Code::Unknown => Error::OutcomeUnknown(format!(
                "the connection failed after the request was sent ({message}); it may or may not have been applied"
            )),
            _ => Error::Internal(format!("{}: {message}", status.code())),
        }
    }
}

/// True when `status` reports a connection that could not be opened (refused, timed out while
/// connecting, no route): the request was never sent, so it certainly was not applied.
///
/// tonic marks every failure of its connector with [`tonic::ConnectError`] in the status's
/// source chain; a failure on a connection that was open (reset, closed mid-call) has none.
pub fn never_sent(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if error.is::<tonic::ConnectError>() {
            return true;
        }
        source = error.source();
    }
    false
}

impl From<sled::Error> for Error {
    fn from(err: sled::Error) -> Error {
        Error::Storage(format!("the database failed: {err}"))
    }
}

impl From<CodecError> for Error {
    /// A record read back from this node's own disk that does not decode is corrupt storage;
    /// bytes that came from the network are mapped to `InvalidInput` where they are decoded.
    fn from(err: CodecError) -> Error {
        Error::Storage(err.to_string())
    }
}

impl From<UnknownMode> for Error {
    fn from(err: UnknownMode) -> Error {
        Error::InvalidInput(err.to_string())
    }
}

impl Error {
    /// The status of this error with another gRPC code (the kind header still says which error
    /// it is, so the client classifies it as usual).
    pub fn status_with_code(self, code: Code) -> Status {
        let mut status = Status::from(self);
        let metadata = std::mem::take(status.metadata_mut());
        Status::with_metadata(code, status.message(), metadata)
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Status {
        let mut status = Status::new(err.code(), err.to_string());
        status.metadata_mut().insert(
            ERROR_KIND_HEADER,
            err.kind().parse().expect("error kinds are ASCII header values"),
        );
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect_error(kind: std::io::ErrorKind) -> Status {
        Status::from_error(Box::new(tonic::ConnectError(Box::new(std::io::Error::from(kind)))))
    }

    #[test]
    fn a_connect_failure_is_never_sent_and_retryable() {
        for kind in [std::io::ErrorKind::ConnectionRefused, std::io::ErrorKind::TimedOut] {
            let status = connect_error(kind);
            assert_eq!(status.code(), Code::Unavailable);
            assert!(never_sent(&status), "{kind:?}");
            let e = Error::from_status(&status);
            assert!(e.definitely_not_applied(), "{e:?}");
            assert_eq!(e.exit_code(), 3, "{e:?}");
        }
    }

    #[test]
    fn a_failure_after_sending_is_outcome_unknown() {
        for status in [
            Status::unavailable("connection reset by peer"),
            Status::unknown("h2 protocol error"),
            Status::deadline_exceeded("timeout"),
        ] {
            assert!(!never_sent(&status), "{status:?}");
            let e = Error::from_status(&status);
            assert_eq!(e.exit_code(), 4, "{e:?}");
        }
    }

    #[test]
    fn our_own_errors_keep_their_kind() {
        for e in [
            Error::NoQuorum("x".into()),
            Error::Unreachable("y".into()),
            Error::OutcomeUnknown("z".into()),
        ] {
            assert_eq!(Error::from_status(&Status::from(e.clone())), e);
        }
    }

    /// A real connection attempt to a closed loopback port: tonic's error is recognized.
    #[tokio::test]
    async fn a_refused_connection_on_a_lazy_channel_is_never_sent() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
            listener.local_addr().expect("local address").port()
        }; // dropped: nothing listens on the port now
        let channel = crate::net::peer_channel(&format!("127.0.0.1:{port}")).expect("a valid address");
        let mut client = crate::net::peer_client(channel);
        let status = client
            .ping(crate::proto::PingRequest { from: 1 })
            .await
            .expect_err("nothing listens on the port");
        assert!(never_sent(&status), "{status:?}");
        assert_eq!(Error::from_status(&status).exit_code(), 3);
    }
}
