//! The client CIDR's address blocks, claimed by the nodes that serve an endpoint.
//!
//! Several nodes serving one endpoint must never hand out the same client address. Each node
//! hands out addresses only from the blocks of the client CIDR ([`crate::pool::address_blocks`],
//! 16 of them) it has claimed here: one when it starts serving the endpoint, another whenever
//! its pool runs low. A claim is one transaction, and the primary key `(endpoint, block)` makes
//! two claims of one block impossible (on PostgreSQL the loser of a race is retried and takes
//! the next block).
//!
//! A node's blocks stay its own while it runs (a block never moves while addresses in it may be
//! in use). They become claimable again when the node registers anew (a restart: its previous
//! sessions are gone), when it stops cleanly, and — only once no never-claimed block is left —
//! when the node is dead (no heartbeat for [`super::nodes::NODE_STALE_AFTER`]).

use super::*;
use crate::pool::address_blocks;

impl Store {
    /// Claims a free block of endpoint `endpoint_id`'s client CIDR for this store's node: a
    /// never-claimed one first, else one a dead node held. `None`: every block is held by a
    /// live node (the endpoint's clients fill its client CIDR).
    pub fn claim_address_block(&self, endpoint_id: &str) -> Result<Option<Ipv4Net>, ApiError> {
        let node = self.own_node("claiming an address block")?;
        let stale = i64::try_from(super::nodes::NODE_STALE_AFTER.as_secs()).unwrap_or(i64::MAX);
        self.record(|db, now| {
            let ep = load_live_endpoint(db, endpoint_id)?;
            let held: Vec<(String, String)> = query(
                db,
                "SELECT block, node FROM address_blocks WHERE endpoint_id = ?1",
                [endpoint_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let alive: Vec<String> = query(
                db,
                "SELECT name FROM nodes WHERE heartbeat_at > ?1",
                [now.0 - stale],
                |r| r.get(0),
            )?;
            let blocks = address_blocks(ep.client_cidr_block);
            let holder = |b: &Ipv4Net| {
                let text = b.to_string();
                held.iter()
                    .find(|(h, _)| *h == text)
                    .map(|(_, n)| n.clone())
            };
            if let Some(free) = blocks.iter().find(|b| holder(b).is_none()) {
                db.prepare_cached(
                    "INSERT INTO address_blocks (endpoint_id, block, node, claimed_at) \
                     VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![endpoint_id, free.to_string(), node, now.0])?;
                return Ok(Some(*free));
            }
            let orphan = blocks
                .iter()
                .find(|b| holder(b).is_some_and(|n| n != node && !alive.contains(&n)));
            if let Some(block) = orphan {
                db.prepare_cached(
                    "UPDATE address_blocks SET node = ?3, claimed_at = ?4 \
                     WHERE endpoint_id = ?1 AND block = ?2",
                )?
                .execute(params![endpoint_id, block.to_string(), node, now.0])?;
                return Ok(Some(*block));
            }
            Ok(None)
        })
    }

    /// The blocks of endpoint `endpoint_id` this store's node holds, in the order claimed.
    pub fn own_address_blocks(&self, endpoint_id: &str) -> Result<Vec<Ipv4Net>, ApiError> {
        let node = self.own_node("listing address blocks")?;
        self.read(|db| {
            query(
                db,
                "SELECT block FROM address_blocks WHERE endpoint_id = ?1 AND node = ?2 \
                 ORDER BY claimed_at, block",
                params![endpoint_id, node],
                |r| col(r, 0),
            )
        })
    }

    /// Every endpoint's blocks and the node holding each, by endpoint and block.
    pub fn describe_address_blocks(&self) -> Result<Vec<(String, Ipv4Net, String)>, ApiError> {
        self.read(|db| {
            query(
                db,
                "SELECT endpoint_id, block, node FROM address_blocks ORDER BY endpoint_id, block",
                (),
                |r| Ok((r.get(0)?, col(r, 1)?, r.get(2)?)),
            )
        })
    }

    /// This store's node name, which `what` needs.
    fn own_node(&self, what: &str) -> Result<&str, ApiError> {
        self.node.as_deref().ok_or_else(|| {
            ApiError::internal(format!(
                "{what} needs the store of a node (StoreOptions::node)"
            ))
        })
    }
}
