//! The capkv client library: one handle over a list of endpoints, with failover.
//!
//! Every call has one deadline (the client timeout). The client tries endpoints in turn,
//! starting with the cp leader once an answer named it (every cp answer carries the leader's
//! client address, `capkv-leader-endpoint`; it counts when it is one of this client's
//! endpoints, so requests skip the follower's forwarding hop), else with the last one that
//! worked. It moves on when a node could not be reached (the request was never sent: the
//! connection was refused or timed out while opening, also when a cached connection to a node
//! that died is reopened) or answered "no quorum" (it certainly did not apply the request);
//! any other answer, or a failure after the request was sent, ends the call. A node that hears
//! a majority but knows no leader (a failover) holds the request until a leader is elected, so
//! a client rides through a failover without retrying itself.
//!
//! Every write carries a request id: this client's random 16-byte id and a sequence number of
//! its own (or the id the caller set). On a cp keyspace the cluster applies a request id at
//! most once ([`crate::cp::session`]), so after "outcome unknown" the client sends the same write
//! again, to the next endpoint, while its deadline lasts: a write whose first attempt died with
//! its leader is applied once, and the answer is the one it got. ap keyspaces ignore the ids
//! the library sets, so a retried ap write is written again (last writer wins). Once an attempt's
//! outcome is unknown, the call's is too: a retry that is then refused ("no quorum") says
//! nothing about the first copy, so the call answers "outcome unknown", never "not applied".
//! Concurrent calls take their sequence numbers within the cluster's answer window
//! (`Window`): a call waits rather than run so far ahead of a slow one that the slow one
//! would be refused as too old.
//!
//! Errors keep the classification of [`crate::error`]: `exit_code()` says whether the operation
//! may have happened. Caveat: a connection that breaks after the request was written (the node
//! died while handling it) is "outcome unknown", even when the node never read the request,
//! because the client cannot tell the two apart; when no time is left to retry, that is what the
//! caller hears.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::cp::session::ANSWERS_PER_CLIENT;
use crate::error::Error;
use crate::limits::{REQUEST_BYTES_MAX, RESPONSE_BYTES_MAX};
use crate::proto::{
    self, backup_client::BackupClient, cluster_client::ClusterClient, fault_client::FaultClient,
    keyspaces_client::KeyspacesClient, kv_client::KvClient,
};
use crate::request::LEADER_ENDPOINT_HEADER;

/// How long opening a connection to one endpoint may take before the client moves on.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);

/// The default endpoints: a local cluster started by `capkv cluster up`.
pub const DEFAULT_ENDPOINTS: &str = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003";

/// Whether a call may be retried after an ambiguous failure.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Effect {
    Read,
    Write,
    /// A write with a request id: the cluster applies it at most once, so it may be retried.
    WriteOnce,
}

/// Splits a comma-separated `HOST:PORT` list, ignoring blanks (checked by [`Client::new`]).
pub fn parse_endpoints(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(String::from)
        .collect()
}

/// The sequence numbers of one client's calls in flight, kept within the cluster's answer window.
///
/// The cluster keeps the answers of a client's newest [`ANSWERS_PER_CLIENT`] sequence numbers
/// and refuses an older one as "outcome unknown" ([`crate::cp::session`]). Were calls free to
/// overtake each other, one slow call (say, forwarded by a follower while the rest went straight
/// to the leader) could find that many newer ones applied before it and be refused although
/// nothing was ever applied for it. So a new sequence number is handed out only while it is
/// less than [`ANSWERS_PER_CLIENT`] ahead of the oldest one still in flight; past that, callers
/// wait for it. Then at most `ANSWERS_PER_CLIENT - 1` newer sequence numbers can be applied
/// while a call (or its retry) is under way, and its own is never below every kept answer.
#[derive(Default)]
struct Window {
    state: Mutex<WindowState>,
    freed: tokio::sync::Notify,
}

#[derive(Default)]
struct WindowState {
    /// The last sequence number handed out (0: none yet; the first is 1).
    last: u64,
    in_flight: std::collections::BTreeSet<u64>,
}

/// A sequence number taken from a [`Window`]; given back when dropped.
struct Turn<'a> {
    window: &'a Window,
    sequence: u64,
}

impl Window {
    async fn take(&self) -> Turn<'_> {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before the check, so a turn given back after it still wakes us.
            freed.as_mut().enable();
            {
                let mut state = self.state.lock().expect("the window lock is never poisoned");
                let next = state.last + 1;
                let oldest = state.in_flight.first().copied().unwrap_or(next);
                if next - oldest < ANSWERS_PER_CLIENT as u64 {
                    state.last = next;
                    state.in_flight.insert(next);
                    return Turn {
                        window: self,
                        sequence: next,
                    };
                }
            }
            freed.await;
        }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.window
            .state
            .lock()
            .expect("the window lock is never poisoned")
            .in_flight
            .remove(&self.sequence);
        self.window.freed.notify_waiters();
    }
}

pub struct Client {
    endpoints: Vec<String>,
    timeout: Duration,
    channels: Mutex<Vec<Option<Channel>>>,
    preferred: AtomicUsize,
    /// This client's id in request ids, and the sequence numbers it hands out.
    client_id: [u8; 16],
    sequences: Window,
    /// `Bearer TOKEN` for nodes that check tokens (`--token`), ready to attach.
    authorization: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    /// TLS settings (`--cacert`, `--cert`, `--key`), for nodes that serve TLS.
    tls: Option<tonic::transport::ClientTlsConfig>,
}

impl Client {
    pub fn new(endpoints: Vec<String>, timeout: Duration) -> Result<Self, Error> {
        if endpoints.is_empty() {
            return Err(Error::InvalidInput(
                "no endpoints given; pass --endpoints HOST:PORT[,HOST:PORT...]".into(),
            ));
        }
        for e in &endpoints {
            Endpoint::from_shared(format!("http://{e}"))
                .map_err(|_| Error::InvalidInput(format!("endpoint '{e}' is not HOST:PORT")))?;
        }
        let channels = Mutex::new(vec![None; endpoints.len()]);
        Ok(Self {
            endpoints,
            timeout,
            channels,
            preferred: AtomicUsize::new(0),
            client_id: rand::random(),
            sequences: Window::default(),
            authorization: None,
            tls: None,
        })
    }

    /// Sends `token` with every request (`authorization: Bearer TOKEN`), for nodes started with
    /// `--auth-token-file`. An empty token sends none.
    pub fn with_token(mut self, token: Option<&str>) -> Result<Self, Error> {
        let token = token.map(str::trim).filter(|t| !t.is_empty());
        self.authorization = match token {
            None => None,
            Some(t) => Some(format!("Bearer {t}").parse().map_err(|_| {
                Error::InvalidInput(
                    "the token holds characters a header cannot carry; use the token file's text".into(),
                )
            })?),
        };
        Ok(self)
    }

    /// Connects over TLS with `tls` (None: plain text).
    pub fn with_tls(mut self, tls: Option<tonic::transport::ClientTlsConfig>) -> Self {
        self.tls = tls;
        self
    }

    /// A plain-text client whose connection breaks may be talking to a node that serves TLS:
    /// says so, since the transport error alone does not.
    /// (A node that serves TLS drops the plain-text connection; the client sees either a
    /// transport error or an HTTP/2 protocol error, after it sent the request.)
    fn hint_tls(&self, status: &Status, error: Error) -> Error {
        const HINT: &str = "if the cluster serves TLS, pass --cacert or set CAPKV_CACERT";
        if self.tls.is_some() {
            return error;
        }
        match error {
            Error::OutcomeUnknown(text) if status.code() == tonic::Code::Unknown => {
                Error::OutcomeUnknown(format!("{text} ({HINT})"))
            }
            Error::Internal(_) if status.message().contains("h2 protocol error") => Error::OutcomeUnknown(format!(
                "the connection broke after the request was sent ({}); it may or may not have been applied ({HINT})",
                status.message()
            )),
            other => other,
        }
    }

    /// A request carrying this client's token, if it has one.
    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(authorization) = &self.authorization {
            request
                .metadata_mut()
                .insert(crate::auth::AUTHORIZATION, authorization.clone());
        }
        request
    }

    /// Parses a comma-separated endpoint list.
    pub fn from_list(list: &str, timeout: Duration) -> Result<Self, Error> {
        Self::new(parse_endpoints(list), timeout)
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    async fn channel(&self, index: usize, budget: Duration) -> Result<Channel, Error> {
        if let Some(c) = self.channels.lock().expect("channel lock is never poisoned")[index].clone() {
            return Ok(c);
        }
        let endpoint = &self.endpoints[index];
        let target = crate::net::endpoint(endpoint, self.tls.as_ref())?
            .connect_timeout(CONNECT_TIMEOUT.min(budget))
            .tcp_nodelay(true);
        let connect = target.connect();
        let channel = match tokio::time::timeout(CONNECT_TIMEOUT.min(budget), connect).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                return Err(Error::Unreachable(format!(
                    "cannot connect to {endpoint}: {}",
                    source_text(&e)
                )))
            }
            Err(_) => {
                return Err(Error::Unreachable(format!(
                    "cannot connect to {endpoint}: no answer within {} ms",
                    CONNECT_TIMEOUT.min(budget).as_millis()
                )))
            }
        };
        self.channels.lock().expect("channel lock is never poisoned")[index] = Some(channel.clone());
        Ok(channel)
    }

    /// The endpoint this client tries first: the cp leader's once an answer named it (and it is
    /// one of the endpoints), otherwise the last one that answered.
    pub fn preferred_endpoint(&self) -> &str {
        &self.endpoints[self.preferred.load(Ordering::Relaxed) % self.endpoints.len()]
    }

    /// The index of the endpoint a cp answer named as the leader's, when it is one of ours.
    fn leader_index<T>(&self, response: &Response<T>) -> Option<usize> {
        let named = response.metadata().get(LEADER_ENDPOINT_HEADER)?.to_str().ok()?;
        self.endpoints.iter().position(|e| e == named)
    }

    fn forget(&self, index: usize) {
        self.channels.lock().expect("channel lock is never poisoned")[index] = None;
    }

    /// Runs `call` against the endpoints in turn until one gives a final answer.
    async fn call<Req, Resp, F, Fut>(&self, effect: Effect, message: Req, call: F) -> Result<Resp, Error>
    where
        Req: Clone + prost::Message,
        F: Fn(Channel, Request<Req>) -> Fut,
        Fut: std::future::Future<Output = Result<Response<Resp>, Status>>,
    {
        let bytes = message.encoded_len();
        if bytes > REQUEST_BYTES_MAX {
            return Err(Error::InvalidInput(format!(
                "the request is {bytes} bytes, over the limit of {REQUEST_BYTES_MAX} bytes a node accepts; nothing was sent"
            )));
        }
        let deadline = Instant::now() + self.timeout;
        let start = self.preferred.load(Ordering::Relaxed);
        let mut last_error = None;
        // The first attempt whose outcome is unknown: once one may have been applied, no later
        // refusal can make the call "definitely not applied" (that refusal is only about the
        // retry; the cluster may still have applied the first copy).
        let mut unknown: Option<Error> = None;
        // A write once may also go back to the endpoint it started at.
        let attempts = self.endpoints.len() + usize::from(effect == Effect::WriteOnce);
        for attempt in 0..attempts {
            let index = (start + attempt) % self.endpoints.len();
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            let channel = match self.channel(index, remaining).await {
                Ok(c) => c,
                Err(e) => {
                    last_error = Some(e);
                    continue;
                }
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            let mut request = self.request(message.clone());
            request.set_timeout(remaining);
            let error = match tokio::time::timeout(remaining, call(channel, request)).await {
                Ok(Ok(response)) => {
                    let next = self.leader_index(&response).unwrap_or(index);
                    self.preferred.store(next, Ordering::Relaxed);
                    return Ok(response.into_inner());
                }
                Ok(Err(status)) => self.hint_tls(&status, Error::from_status(&status)),
                Err(_) => Error::OutcomeUnknown(format!(
                    "{} did not answer within the timeout of {} ms; the operation may or may not have been applied",
                    self.endpoints[index],
                    self.timeout.as_millis()
                )),
            };
            let retry = error.definitely_not_applied()
                || (effect != Effect::Write && matches!(error, Error::OutcomeUnknown(_)));
            if !retry || Instant::now() >= deadline {
                return Err(still_unknown(unknown, error));
            }
            if matches!(error, Error::OutcomeUnknown(_)) {
                self.forget(index);
                unknown.get_or_insert_with(|| error.clone());
            }
            last_error = Some(error);
        }
        let last = last_error.unwrap_or_else(|| {
            Error::Unreachable(format!("no endpoint answered within {} ms", self.timeout.as_millis()))
        });
        Err(still_unknown(unknown, last))
    }

    pub async fn get(
        &self,
        keyspace: &str,
        key: &[u8],
        consistency: proto::Consistency,
    ) -> Result<proto::GetResponse, Error> {
        let req = proto::GetRequest {
            keyspace: keyspace.into(),
            key: key.to_vec(),
            consistency: consistency as i32,
        };
        self.call(Effect::Read, req, |c, r| async move { kv(c).get(r).await })
            .await
    }

    pub async fn put(&self, keyspace: &str, key: &[u8], value: &[u8]) -> Result<proto::PutResponse, Error> {
        self.put_acks(keyspace, key, value, 1).await
    }

    /// A put that, on an ap keyspace, returns only once `acks` replicas stored it.
    pub async fn put_acks(
        &self,
        keyspace: &str,
        key: &[u8],
        value: &[u8],
        acks: u32,
    ) -> Result<proto::PutResponse, Error> {
        self.put_request(proto::PutRequest {
            keyspace: keyspace.into(),
            key: key.to_vec(),
            value: value.to_vec(),
            acks,
            request_id: None,
        })
        .await
    }

    /// A put as the caller built it; without a request id it gets this client's next one.
    pub async fn put_request(&self, mut req: proto::PutRequest) -> Result<proto::PutResponse, Error> {
        let (effect, _turn) = self.identify(&mut req.request_id).await;
        self.call(effect, req, |c, r| async move { kv(c).put(r).await }).await
    }

    pub async fn delete(&self, keyspace: &str, key: &[u8]) -> Result<proto::DeleteResponse, Error> {
        self.delete_acks(keyspace, key, 1).await
    }

    /// A delete that, on an ap keyspace, returns only once `acks` replicas stored the tombstone.
    pub async fn delete_acks(&self, keyspace: &str, key: &[u8], acks: u32) -> Result<proto::DeleteResponse, Error> {
        self.delete_request(proto::DeleteRequest {
            keyspace: keyspace.into(),
            key: key.to_vec(),
            acks,
            request_id: None,
        })
        .await
    }

    /// A delete as the caller built it; without a request id it gets this client's next one.
    pub async fn delete_request(&self, mut req: proto::DeleteRequest) -> Result<proto::DeleteResponse, Error> {
        let (effect, _turn) = self.identify(&mut req.request_id).await;
        self.call(effect, req, |c, r| async move { kv(c).delete(r).await })
            .await
    }

    pub async fn scan(&self, req: proto::ScanRequest) -> Result<proto::ScanResponse, Error> {
        self.call(Effect::Read, req, |c, r| async move { kv(c).scan(r).await })
            .await
    }

    /// Compare-and-swap: `expected = None` swaps only when the key is absent.
    pub async fn cas(
        &self,
        keyspace: &str,
        key: &[u8],
        expected: Option<&[u8]>,
        new_value: &[u8],
    ) -> Result<proto::CasResponse, Error> {
        self.cas_request(proto::CasRequest {
            keyspace: keyspace.into(),
            key: key.to_vec(),
            expect_absent: expected.is_none(),
            expected: expected.map(<[u8]>::to_vec).unwrap_or_default(),
            new_value: new_value.to_vec(),
            request_id: None,
        })
        .await
    }

    /// A CAS as the caller built it; without a request id it gets this client's next one.
    pub async fn cas_request(&self, mut req: proto::CasRequest) -> Result<proto::CasResponse, Error> {
        let (effect, _turn) = self.identify(&mut req.request_id).await;
        self.call(effect, req, |c, r| async move { kv(c).compare_and_swap(r).await })
            .await
    }

    /// A transaction; without a request id it gets this client's next one.
    pub async fn txn(&self, mut req: proto::TxnRequest) -> Result<proto::TxnResponse, Error> {
        let (effect, _turn) = self.identify(&mut req.request_id).await;
        self.call(effect, req, |c, r| async move { kv(c).txn(r).await }).await
    }

    /// Gives a write this client's next request id unless it has one; every write with an id
    /// may be retried. The sequence number stays taken until the returned turn is dropped (the
    /// call is over); see [`Window`].
    async fn identify(&self, id: &mut Option<proto::RequestId>) -> (Effect, Option<Turn<'_>>) {
        let mut turn = None;
        if id.is_none() {
            let taken = self.sequences.take().await;
            *id = Some(proto::RequestId {
                client: self.client_id.to_vec(),
                sequence: taken.sequence,
                automatic: true,
            });
            turn = Some(taken);
        }
        (Effect::WriteOnce, turn)
    }

    pub async fn create_keyspace(&self, name: &str, mode: crate::Mode) -> Result<proto::KeyspaceInfo, Error> {
        let mode = match mode {
            crate::Mode::Cp => proto::Mode::Cp,
            crate::Mode::Ap => proto::Mode::Ap,
        };
        let req = proto::CreateKeyspaceRequest {
            name: name.into(),
            mode: mode as i32,
        };
        self.call(Effect::Write, req, |c, r| async move {
            KeyspacesClient::new(c).create(r).await
        })
        .await
    }

    pub async fn list_keyspaces(&self) -> Result<proto::ListKeyspacesResponse, Error> {
        self.call(Effect::Read, proto::ListKeyspacesRequest {}, |c, r| async move {
            KeyspacesClient::new(c).list(r).await
        })
        .await
    }

    pub async fn describe_keyspace(&self, name: &str) -> Result<proto::KeyspaceInfo, Error> {
        let req = proto::DescribeKeyspaceRequest { name: name.into() };
        self.call(Effect::Read, req, |c, r| async move {
            KeyspacesClient::new(c).describe(r).await
        })
        .await
    }

    /// The members of the Raft group, as the leader sees them.
    pub async fn member_list(&self) -> Result<proto::MemberListResponse, Error> {
        self.call(Effect::Read, proto::MemberListRequest {}, |c, r| async move {
            ClusterClient::new(c).member_list(r).await
        })
        .await
    }

    /// Adds node `id` at its peer `address`; returns once it votes.
    pub async fn member_add(&self, id: u64, address: &str) -> Result<proto::MemberListResponse, Error> {
        let req = proto::MemberAddRequest {
            id,
            address: address.into(),
        };
        self.call(Effect::Write, req, |c, r| async move {
            ClusterClient::new(c).member_add(r).await
        })
        .await
    }

    /// Removes member `id` (a voter or a learner).
    pub async fn member_remove(&self, id: u64) -> Result<proto::MemberListResponse, Error> {
        let req = proto::MemberRemoveRequest { id };
        self.call(Effect::Write, req, |c, r| async move {
            ClusterClient::new(c).member_remove(r).await
        })
        .await
    }

    /// The status of one specific endpoint (no failover: the caller asks each node).
    pub async fn status_of(&self, index: usize) -> Result<proto::StatusResponse, Error> {
        let channel = self.channel(index, self.timeout).await?;
        let mut request = self.request(proto::StatusRequest {});
        request.set_timeout(self.timeout);
        match tokio::time::timeout(self.timeout, ClusterClient::new(channel).status(request)).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(status)) => Err(Error::from_status(&status)),
            Err(_) => Err(Error::Unreachable(format!(
                "{} did not answer in time",
                self.endpoints[index]
            ))),
        }
    }

    pub async fn fault_partition(&self, groups: Vec<Vec<u64>>) -> Result<proto::FaultStatusResponse, Error> {
        let req = proto::PartitionRequest {
            groups: groups.into_iter().map(|nodes| proto::Group { nodes }).collect(),
        };
        self.call(Effect::Read, req, |c, r| async move {
            FaultClient::new(c).partition(r).await
        })
        .await
    }

    pub async fn fault_heal(&self) -> Result<proto::FaultStatusResponse, Error> {
        self.call(Effect::Read, proto::HealRequest {}, |c, r| async move {
            FaultClient::new(c).heal(r).await
        })
        .await
    }

    /// Shifts one node's clock by `offset_ms` (clock-skew fault; `fault heal` clears it).
    pub async fn fault_clock(&self, node_id: u64, offset_ms: i64) -> Result<proto::FaultStatusResponse, Error> {
        let req = proto::ClockRequest { node_id, offset_ms };
        self.call(
            Effect::Read,
            req,
            |c, r| async move { FaultClient::new(c).clock(r).await },
        )
        .await
    }

    /// Asks a node to take a backup as its coordinator; the stream carries its progress and,
    /// last, the manifest. An endpoint that cannot be reached is skipped for the next one.
    pub async fn backup_create(
        &self,
        req: proto::CreateBackupRequest,
    ) -> Result<tonic::Streaming<proto::CreateBackupProgress>, Error> {
        self.call(Effect::Write, req, |c, r| async move {
            BackupClient::new(c)
                .max_decoding_message_size(RESPONSE_BYTES_MAX)
                .create(r)
                .await
        })
        .await
    }

    pub async fn fault_status(&self) -> Result<proto::FaultStatusResponse, Error> {
        self.call(Effect::Read, proto::FaultStatusRequest {}, |c, r| async move {
            FaultClient::new(c).status(r).await
        })
        .await
    }
}

/// The error of a call that ends with `last`: if an earlier attempt's outcome was unknown, the
/// call's outcome is unknown too, whatever the later attempts said.
fn still_unknown(unknown: Option<Error>, last: Error) -> Error {
    match unknown {
        Some(Error::OutcomeUnknown(first)) if !matches!(last, Error::OutcomeUnknown(_)) => Error::OutcomeUnknown(
            format!("{first} (a retry with the same request id then failed: {last})"),
        ),
        _ => last,
    }
}

fn kv(channel: Channel) -> KvClient<Channel> {
    KvClient::new(channel)
        .max_decoding_message_size(RESPONSE_BYTES_MAX)
        .max_encoding_message_size(REQUEST_BYTES_MAX)
}

/// The innermost cause of a transport error, which is the readable part.
fn source_text(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Polls `future` once, without a runtime: `Some` when it is ready.
    fn poll_once<F: std::future::Future>(future: std::pin::Pin<&mut F>) -> Option<F::Output> {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match future.poll(&mut cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        }
    }

    #[test]
    fn the_window_waits_for_the_oldest_call_in_flight_not_for_any() {
        let window = Window::default();
        let mut turns: Vec<Turn> = (0..ANSWERS_PER_CLIENT)
            .map(|_| poll_once(std::pin::pin!(window.take())).expect("within the window"))
            .collect();
        assert_eq!(turns[0].sequence, 1);
        let mut next = std::pin::pin!(window.take());
        assert!(poll_once(next.as_mut()).is_none(), "a full window waits");
        drop(turns.remove(1));
        assert!(
            poll_once(next.as_mut()).is_none(),
            "sequence 2 finishing does not help while 1 is in flight"
        );
        drop(turns.remove(0));
        let turn = poll_once(next.as_mut()).expect("1 finished: the window moves");
        assert_eq!(turn.sequence, ANSWERS_PER_CLIENT as u64 + 1);
    }

    proptest! {
        /// Calls of one client that finish in any order, each applied by the cluster's session
        /// table when it finishes (the latest a slow copy can land): none is ever refused as
        /// older than every kept answer.
        #[test]
        fn no_call_within_the_window_is_refused_as_too_old(picks in prop::collection::vec(any::<prop::sample::Index>(), 1..600)) {
            use crate::cp::apply::{apply, MemState};
            use crate::cp::command::{Command, CreateKeyspace, Put};
            use crate::cp::session::{apply_once, Once, RequestId};

            let mut state = MemState::default();
            let create = Command::CreateKeyspace(CreateKeyspace { name: "k".into(), mode: crate::Mode::Cp });
            apply(&create, 1, &mut state).unwrap();
            let window = Window::default();
            let mut in_flight: Vec<Turn> = Vec::new();
            for (step, pick) in picks.iter().enumerate() {
                // Take a turn when the window allows; otherwise (or every third step) one call
                // in flight, chosen by the test, finishes and is applied.
                let taken = if step % 3 == 2 && !in_flight.is_empty() {
                    None
                } else {
                    poll_once(std::pin::pin!(window.take()))
                };
                match taken {
                    Some(turn) => in_flight.push(turn),
                    None => {
                        let turn = in_flight.swap_remove(pick.index(in_flight.len()));
                        let once = Once {
                            id: RequestId { client: [7; 16], sequence: turn.sequence },
                            at_ms: 1,
                            session_ttl_ms: 60_000,
                            command: Box::new(Command::Put(Put { keyspace: "k".into(), key: b"a".to_vec(), value: b"v".to_vec() })),
                        };
                        let applied = apply_once(&once, step as u64 + 2, &mut state);
                        prop_assert!(applied.is_ok(), "sequence {} refused: {applied:?}", turn.sequence);
                    }
                }
            }
        }
    }

    #[test]
    fn a_refused_retry_does_not_make_an_unknown_outcome_definite() {
        // Found by the Jepsen-style netns run: a cas forwarded to the leader was applied, its
        // answer was lost to a partition, and the retry met "no quorum" — which the client then
        // reported as "definitely not applied".
        let first = Error::OutcomeUnknown("the connection failed after the request was sent".into());
        let retry = Error::NoQuorum("node 3 has not heard from the leader".into());
        let e = still_unknown(Some(first.clone()), retry);
        assert_eq!(e.exit_code(), 4, "{e}");
        assert!(
            e.to_string().contains("a retry with the same request id then failed"),
            "{e}"
        );
        let e = still_unknown(None, Error::NoQuorum("no leader".into()));
        assert_eq!(e.exit_code(), 3, "without an unknown attempt a refusal stays definite");
        let later = Error::OutcomeUnknown("no answer".into());
        assert_eq!(still_unknown(Some(first), later.clone()), later);
    }
}
