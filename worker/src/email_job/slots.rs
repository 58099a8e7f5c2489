//! This process's reservations of the send-rate limiter that every worker process shares.

use chrono::Utc;
use herald_shared::email;
use sqlx::PgPool;

/// A block of reserved send slots. Reserving 50 ms worth at a time keeps the shared limiter's row
/// from becoming the bottleneck at high rates; at SES's usual rates a block is one slot.
#[derive(Debug, Default)]
pub struct SendSlots(tokio::sync::Mutex<Option<(chrono::DateTime<Utc>, u32)>>);

impl SendSlots {
    /// The time this process may make its next SES call.
    pub async fn next(
        &self,
        pool: &PgPool,
        per_second: f64,
    ) -> Result<chrono::DateTime<Utc>, sqlx::Error> {
        let spacing = chrono::Duration::microseconds((1_000_000.0 / per_second.max(0.001)) as i64);
        let mut block = self.0.lock().await;
        // Slots left over from a quiet spell are stale: sending on them late could exceed the rate.
        let stale = Utc::now() - chrono::Duration::milliseconds(50);
        if let Some((next, left)) = block.as_mut()
            && *left > 0
            && *next > stale
        {
            let slot = *next;
            *next += spacing;
            *left -= 1;
            return Ok(slot);
        }
        let size = ((per_second * 0.05) as u32).max(1);
        let mut conn = pool.acquire().await?;
        let first = email::reserve_send_slots(&mut conn, per_second, size).await?;
        *block = Some((first + spacing, size - 1));
        Ok(first)
    }
}
