//! Who is to blame for the way a request or an upgrade ended, in one table.
//!
//! Every place that sees a request or upgrade end after a backend was chosen names the
//! [`Outcome`]; the outcome alone says which [`Party`] is responsible and what the client
//! gets, and passive health ([`crate::passive`]) consumes only the backend's share (and the
//! application's, when a pool asks for it). HAProxy's termination states are the model: one
//! cell per way of ending, read the same way by health, metrics and logs, so a new path
//! cannot blame the wrong party without adding a variant someone has to place.

/// Who ended a request or an upgrade badly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Party {
    /// Nobody: the backend answered and the answer is passed on.
    None,
    /// The client: its body stalled, broke off or was too large, or it went away.
    Client,
    /// The backend: it could not be reached, broke the connection, answered nothing valid,
    /// or answered nothing in time while the client was done.
    Backend,
    /// The application behind a healthy backend: a `5xx` answer to what this client asked.
    Application,
    /// The balancer itself: out of local resources (descriptors, buffers, ports).
    Balancer,
}

impl Party {
    /// Label for logs.
    pub fn name(self) -> &'static str {
        match self {
            Party::None => "none",
            Party::Client => "client",
            Party::Backend => "backend",
            Party::Application => "application",
            Party::Balancer => "balancer",
        }
    }
}

/// What the client gets for an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The backend's own answer (a plain response, or the upgrade's 101).
    Relayed,
    /// The next backend is tried; the client sees nothing of this one.
    NextBackend,
    /// The balancer answers with this status.
    Status(u16),
    /// Nothing: the client is gone.
    Nothing,
}

/// Every way a request or upgrade ends once a backend was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The backend answered (a plain response under `500`, a valid `101`).
    Answered,
    /// The backend answered the upgrade with a status other than `101` and under `500`
    /// (`4xx`: it judged the client's request; `2xx`/`3xx`: the URL is not a WebSocket).
    UpgradeRefused,
    /// The application answered `5xx`.
    ApplicationError,
    /// The client's request body stopped arriving for `request_timeout` while the backend
    /// waited for it: `408`.
    ClientBodyStalled,
    /// The client's body broke off or was malformed (bad chunk, reset mid-body): `400`.
    ClientBodyBroken,
    /// The client's body went over `max_request_body_bytes`: `413`.
    ClientBodyTooLarge,
    /// The client went away before its answer.
    ClientGone,
    /// The backend ended the connection while the client's body was still flowing to it:
    /// most often an early answer (`413`, `401`) and a close, whose answer the reset took
    /// with it; an application's refusal, not a failing backend: `502`, not counted.
    UploadCutShort,
    /// The connect was refused, reset or unreachable.
    ConnectFailed,
    /// The connect (or, for an upgrade, the whole attempt up to the 101) took longer than
    /// `connect_timeout`.
    ConnectTimedOut,
    /// The TLS handshake with the backend failed.
    TlsFailed,
    /// The backend connection closed or reset before a response head.
    ConnectionLost,
    /// No response head within `request_timeout` after the client's request was complete,
    /// or the backend stopped reading the body the client was still sending: `504`.
    NoAnswerInTime,
    /// The backend's answer could not be parsed, or its `101` is invalid: `502`.
    InvalidAnswer,
    /// No backend connection could be made for lack of local resources: `503`.
    LocalResources,
}

impl Outcome {
    /// Every outcome, for tests and docs.
    pub const ALL: [Outcome; 15] = [
        Outcome::Answered,
        Outcome::UpgradeRefused,
        Outcome::ApplicationError,
        Outcome::ClientBodyStalled,
        Outcome::ClientBodyBroken,
        Outcome::ClientBodyTooLarge,
        Outcome::ClientGone,
        Outcome::UploadCutShort,
        Outcome::ConnectFailed,
        Outcome::ConnectTimedOut,
        Outcome::TlsFailed,
        Outcome::ConnectionLost,
        Outcome::NoAnswerInTime,
        Outcome::InvalidAnswer,
        Outcome::LocalResources,
    ];

    /// Who is responsible.
    pub fn party(self) -> Party {
        match self {
            Outcome::Answered | Outcome::UpgradeRefused | Outcome::UploadCutShort => Party::None,
            Outcome::ApplicationError => Party::Application,
            Outcome::ClientBodyStalled | Outcome::ClientBodyBroken | Outcome::ClientBodyTooLarge | Outcome::ClientGone => Party::Client,
            Outcome::ConnectFailed
            | Outcome::ConnectTimedOut
            | Outcome::TlsFailed
            | Outcome::ConnectionLost
            | Outcome::NoAnswerInTime
            | Outcome::InvalidAnswer => Party::Backend,
            Outcome::LocalResources => Party::Balancer,
        }
    }

    /// What the client gets (`upgrade`: the request asked for a WebSocket).
    pub fn answer(self, upgrade: bool) -> Answer {
        match self {
            Outcome::Answered => Answer::Relayed,
            // An upgrade answered with anything but a 101 cannot be relayed as a WebSocket.
            Outcome::UpgradeRefused | Outcome::ApplicationError if upgrade => Answer::Status(502),
            Outcome::UpgradeRefused | Outcome::ApplicationError => Answer::Relayed,
            Outcome::ClientBodyStalled => Answer::Status(408),
            Outcome::ClientBodyBroken => Answer::Status(400),
            Outcome::ClientBodyTooLarge => Answer::Status(413),
            Outcome::ClientGone => Answer::Nothing,
            Outcome::UploadCutShort => Answer::Status(502),
            Outcome::ConnectFailed | Outcome::ConnectTimedOut | Outcome::TlsFailed => Answer::NextBackend,
            // A plain request whose connection was lost is retried once on a fresh
            // connection when it is safe (see `server::forward`); then 502.
            Outcome::ConnectionLost | Outcome::InvalidAnswer => Answer::Status(502),
            Outcome::NoAnswerInTime => Answer::Status(504),
            Outcome::LocalResources => Answer::Status(503),
        }
    }

    /// Label for logs.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Answered => "answered",
            Outcome::UpgradeRefused => "upgrade_refused",
            Outcome::ApplicationError => "application_error",
            Outcome::ClientBodyStalled => "client_body_stalled",
            Outcome::ClientBodyBroken => "client_body_broken",
            Outcome::ClientBodyTooLarge => "client_body_too_large",
            Outcome::ClientGone => "client_gone",
            Outcome::UploadCutShort => "upload_cut_short",
            Outcome::ConnectFailed => "connect_failed",
            Outcome::ConnectTimedOut => "connect_timed_out",
            Outcome::TlsFailed => "tls_failed",
            Outcome::ConnectionLost => "connection_lost",
            Outcome::NoAnswerInTime => "no_answer_in_time",
            Outcome::InvalidAnswer => "invalid_answer",
            Outcome::LocalResources => "local_resources",
        }
    }

    /// The outcome of a status the backend answered a plain request with.
    pub fn of_status(status: u16) -> Outcome {
        match status {
            500..=599 => Outcome::ApplicationError,
            _ => Outcome::Answered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_backend_and_application_are_ever_blamed_for_backend_failures() {
        for o in Outcome::ALL {
            let p = o.party();
            match o.answer(false) {
                // A client-visible 408/400/413 is always the client's doing.
                Answer::Status(408 | 400 | 413) => assert_eq!(p, Party::Client, "{o:?}"),
                Answer::Status(502) if o == Outcome::UploadCutShort => assert_eq!(p, Party::None),
                Answer::Status(502 | 504) | Answer::NextBackend => assert_eq!(p, Party::Backend, "{o:?}"),
                Answer::Status(503) => assert_eq!(p, Party::Balancer, "{o:?}"),
                Answer::Nothing => assert_eq!(p, Party::Client, "{o:?}"),
                Answer::Relayed => assert!(matches!(p, Party::None | Party::Application), "{o:?}"),
                Answer::Status(s) => panic!("{o:?}: unexpected status {s}"),
            }
        }
        assert_eq!(Outcome::of_status(503), Outcome::ApplicationError);
        assert_eq!(Outcome::of_status(404), Outcome::Answered);
        assert_eq!(Outcome::ApplicationError.answer(true), Answer::Status(502));
        let names: std::collections::HashSet<_> = Outcome::ALL.iter().map(|o| o.name()).collect();
        assert_eq!(names.len(), Outcome::ALL.len());
    }
}
