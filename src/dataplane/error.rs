//! The errors of a [`Dataplane`](super::Dataplane): what failed, the error underneath it
//! kept as its source (a netlink errno, a firewall tool's output, an I/O error, a refusal),
//! and whether retrying can help ([`DataplaneError::can_retry`]), which the controller's
//! backoff reads.

use std::error::Error;
use std::fmt;
use std::sync::Arc;

use crate::plan::Action;

/// A failure of a dataplane. What users see is its message (one line); the error it comes
/// from is its [`source`](Error::source) and [`DataplaneError::cause`].
#[derive(Debug, Clone, thiserror::Error)]
pub enum DataplaneError {
    /// Reading the node failed.
    #[error("reading the node: {0}")]
    Observe(#[source] Cause),
    /// A tool or facility the dataplane needs is missing; nothing was changed.
    #[error("{0}")]
    Unavailable(#[source] Cause),
    /// `action` is the first line of the action as the plan prints it (without the rule
    /// diff of a table sync), so that the error is one line.
    #[error("{action}: {cause}")]
    Action {
        /// The failed action, as [`DataplaneError::action`] names it.
        action: String,
        /// Why it failed.
        #[source]
        cause: Cause,
    },
}

impl DataplaneError {
    /// `action` failed because of `cause`.
    pub fn action(action: &Action, cause: impl Into<Cause>) -> DataplaneError {
        DataplaneError::Action {
            action: action.summary(),
            cause: cause.into(),
        }
    }

    /// What the failure comes from.
    pub fn cause(&self) -> &Cause {
        match self {
            DataplaneError::Observe(cause)
            | DataplaneError::Unavailable(cause)
            | DataplaneError::Action { cause, .. } => cause,
        }
    }

    /// Whether trying again later can succeed without anyone changing the node or its
    /// configuration: `false` for a refusal, a missing program or facility, a permission or
    /// an invalid request, `true` for what a race or a busy kernel explains. See
    /// [`errno_can_retry`] and the kernel's error types for each case.
    pub fn can_retry(&self) -> bool {
        self.cause().can_retry()
    }
}

/// The error under a [`DataplaneError`], with whether retrying can help. Its message is the
/// error's own; the error itself is reachable with [`Cause::get`].
#[derive(Clone)]
pub struct Cause {
    error: Arc<dyn Error + Send + Sync>,
    can_retry: bool,
}

impl Cause {
    /// `error`, which retrying can (`can_retry`) or cannot help.
    pub fn new(error: impl Error + Send + Sync + 'static, can_retry: bool) -> Cause {
        Cause {
            error: Arc::new(error),
            can_retry,
        }
    }

    /// Something kudonet refuses to do (`refusing to set …: … is not kudonet's bridge`):
    /// retrying never helps.
    pub fn refusal(reason: impl Into<String>) -> Cause {
        Cause::new(Refusal(reason.into()), false)
    }

    /// An I/O error while doing `context` (`create namespace: File exists`); whether a retry
    /// can help follows its errno ([`errno_can_retry`]).
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Cause {
        let can_retry = io_can_retry(&source);
        Cause::new(
            IoError {
                context: context.into(),
                source,
            },
            can_retry,
        )
    }

    /// Whether retrying can help.
    pub fn can_retry(&self) -> bool {
        self.can_retry
    }

    /// The error, if it is an `E` (a `NetlinkError`, a `FirewallError`, a [`Refusal`]…).
    pub fn get<E: Error + 'static>(&self) -> Option<&E> {
        let error: &(dyn Error + 'static) = &*self.error;
        error.downcast_ref::<E>()
    }
}

impl fmt::Debug for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cause")
            .field("error", &self.error)
            .field("can_retry", &self.can_retry)
            .finish()
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

impl Error for Cause {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.error.source()
    }
}

/// Something kudonet refuses to do, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

/// An I/O error while doing `context`.
#[derive(Debug, thiserror::Error)]
#[error("{context}: {source}")]
pub struct IoError {
    /// What was being done (`reading /proc/sys/net/ipv4/ip_forward`).
    pub context: String,
    /// The error the system returned.
    pub source: std::io::Error,
}

/// [`errno_can_retry`] for an I/O error; one without an errno (a short read, bad data from
/// the kernel) is worth retrying.
pub fn io_can_retry(error: &std::io::Error) -> bool {
    error.raw_os_error().is_none_or(errno_can_retry)
}

/// Whether the kernel answering `errno` to a request can answer otherwise later, with the
/// node and kudonet's configuration unchanged (nmstate's `ErrorKind::can_retry` is the model):
///
/// - no: `EPERM`, `EACCES` (kudonet lacks a capability, or a security module says no),
///   `EINVAL`, `ERANGE`, `ENAMETOOLONG` (the request
///   itself is wrong, e.g. an MTU the device refuses), `EOPNOTSUPP`, `ENOSYS`,
///   `EAFNOSUPPORT`, `EPROTONOSUPPORT` (the kernel lacks a feature, e.g. no vxlan module);
/// - yes, everything else, notably `EBUSY`, `EAGAIN`, `ENOBUFS`, `ENOMEM`, `EINTR` (a busy
///   kernel), `EEXIST`, `ENOENT`, `ENODEV`, `ESRCH` (a link, address, route or namespace that
///   came or went during the pass: the next pass observes it again and plans accordingly),
///   and `EROFS`: a read-only `/proc/sys` (a container's) is made writable by a remount,
///   which raises no event, so the node keeps being retried as it always was; `ERESTART`
///   (an nftables transaction refused because the ruleset moved past the generation it was
///   based on: the next pass reads it again).
pub fn errno_can_retry(errno: i32) -> bool {
    use nix::errno::Errno;
    !matches!(
        Errno::from_raw(errno),
        Errno::EPERM
            | Errno::EACCES
            | Errno::EINVAL
            | Errno::ERANGE
            | Errno::ENAMETOOLONG
            | Errno::EOPNOTSUPP
            | Errno::ENOSYS
            | Errno::EAFNOSUPPORT
            | Errno::EPROTONOSUPPORT
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_and_invalid_requests_are_final_races_are_not() {
        for errno in [libc_errno::EPERM, libc_errno::EACCES, libc_errno::EINVAL] {
            assert!(!errno_can_retry(errno), "{errno}");
        }
        for errno in [
            libc_errno::EBUSY,
            libc_errno::EEXIST,
            libc_errno::ENODEV,
            libc_errno::ERESTART,
        ] {
            assert!(errno_can_retry(errno), "{errno}");
        }
        let denied = std::io::Error::from_raw_os_error(libc_errno::EACCES);
        let cause = Cause::io("write /proc/sys/net/ipv4/ip_forward", denied);
        assert!(!cause.can_retry());
        assert_eq!(
            cause.to_string(),
            "write /proc/sys/net/ipv4/ip_forward: Permission denied (os error 13)"
        );
        assert!(cause.get::<IoError>().is_some());
        assert!(!Cause::refusal("no").can_retry());
    }

    mod libc_errno {
        use nix::errno::Errno;
        pub const EPERM: i32 = Errno::EPERM as i32;
        pub const EACCES: i32 = Errno::EACCES as i32;
        pub const EINVAL: i32 = Errno::EINVAL as i32;
        pub const EBUSY: i32 = Errno::EBUSY as i32;
        pub const EEXIST: i32 = Errno::EEXIST as i32;
        pub const ENODEV: i32 = Errno::ENODEV as i32;
        pub const ERESTART: i32 = Errno::ERESTART as i32;
    }
}
