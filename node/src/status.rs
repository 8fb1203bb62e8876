//! The node's self-description: what `GET /status`, `starling status` and the live page show.
//! The schema lives in `starling-wire` (it is the body of the `Status` RPC, which clients decode
//! without linking the node); the gossip driver fills it in.

pub use starling_wire::status::*;
