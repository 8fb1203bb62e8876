//! The CLI's use of `starling-client`: errors mapped to the documented exit codes.

pub use starling_client::{Auth, Client};
use starling_wire::ErrorCode;

/// Exit code for bad input: flags, or a key or value over the limits (documented in the README).
pub const EXIT_USAGE: u8 = 2;
/// Exit code when the node cannot be reached.
pub const EXIT_UNREACHABLE: u8 = 3;
/// Exit code of `kv get` for a key that does not exist (or was deleted).
pub const EXIT_NOT_FOUND: u8 = 4;
/// Exit code when the consistency level could not be met (too few replicas up, or answering).
pub const EXIT_UNAVAILABLE: u8 = 5;

/// Errors that map to distinct exit codes.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A call failed.
    #[error("{0}")]
    Call(#[from] starling_client::Error),
    #[error("{0}")]
    BadInput(String),
    #[error("{0}")]
    NotFound(String),
    /// Nothing could be done now (no leader, too few replicas); retrying later may work.
    #[error("{0}")]
    Unavailable(String),
}

impl ClientError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        use starling_client::Error as E;
        match self {
            ClientError::BadInput(_) | ClientError::Call(E::BadInput(_)) => EXIT_USAGE,
            ClientError::NotFound(_) => EXIT_NOT_FOUND,
            ClientError::Unavailable(_) => EXIT_UNAVAILABLE,
            ClientError::Call(E::Unreachable { .. } | E::NoAnswer { .. }) => EXIT_UNREACHABLE,
            ClientError::Call(E::Refused {
                code: ErrorCode::BadRequest | ErrorCode::TooLarge,
                ..
            }) => EXIT_USAGE,
            ClientError::Call(E::Refused {
                code: ErrorCode::Unavailable | ErrorCode::Timeout,
                ..
            }) => EXIT_UNAVAILABLE,
            ClientError::Call(_) => 1,
        }
    }
}

/// A client of the one node given with `--node`.
pub async fn connect(node: &str, auth: &Auth) -> Result<Client, ClientError> {
    Ok(Client::connect(&[node], auth).await?)
}
