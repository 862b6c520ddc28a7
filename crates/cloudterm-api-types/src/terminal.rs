//! The control messages of the terminal WebSocket (`GET /sandboxes/{id}/terminal`): JSON in
//! text frames, beside the raw terminal bytes that travel in binary frames.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A control message from the client, in a text frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TerminalClientMessage {
    /// The viewer's window changed size: `{"type":"resize","cols":N,"rows":N}` (1 to 1000 each).
    /// Ignored for a read-only viewer.
    Resize {
        /// Columns.
        cols: u16,
        /// Rows.
        rows: u16,
    },
}

/// A control message from the server, in a text frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TerminalServerMessage {
    /// The shell ended with this code (128 + signal when a signal ended it); the server closes
    /// the connection after it.
    Exit {
        /// Exit status.
        code: i32,
    },
    /// Something the client should know: a control frame it sent was not understood
    /// (`bad_control`, the connection stays), or the connection closes for another reason than
    /// the shell exiting (`terminal_lost`: the sandbox or its agent went away; `shutting_down`;
    /// `token_expired`: reconnect with a fresh token, the session keeps running;
    /// `access_revoked`: the caller lost the access to the workspace they attached with).
    Error {
        /// Stable snake_case code.
        code: String,
        /// A sentence for people.
        message: String,
    },
}
