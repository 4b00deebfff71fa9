//! What the control port (`server::admit`) and the data ports (`data::admit`) share against a
//! flood: [`Refusals`], the log lines of refused or failed connections, at most one a second
//! (the first in full, then how many were held back), so that a flood cannot flood an agent's
//! log; and [`busiest`], whose connection a full pool evicts.

use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Of the connections `held` (each its address and an id that grows with age), the address
/// that holds the most; between equals, the one whose oldest connection is oldest. A full
/// pool evicts that address's oldest, so a flood evicts its own connections while it holds
/// more than anyone else. `None` when `held` is empty.
pub(crate) fn busiest(held: impl IntoIterator<Item = (IpAddr, u64)>) -> Option<IpAddr> {
    let mut by_ip: Vec<(IpAddr, usize, u64)> = Vec::new();
    for (ip, id) in held {
        match by_ip.iter_mut().find(|e| e.0 == ip) {
            Some(e) => {
                e.1 += 1;
                e.2 = e.2.min(id);
            }
            None => by_ip.push((ip, 1, id)),
        }
    }
    by_ip
        .into_iter()
        .max_by_key(|&(_, n, oldest)| (n, std::cmp::Reverse(oldest)))
        .map(|(ip, ..)| ip)
}

/// At most one refusal line per [`Refusals::EVERY`].
pub(crate) struct Refusals {
    /// What each line starts with ("refused " on a data port).
    prefix: &'static str,
    /// When the last line was written.
    last_line: Option<Instant>,
    /// Refusals since then not written, and the last of them.
    held: u64,
    last: String,
}

impl Default for Refusals {
    fn default() -> Self {
        Self::new("refused ")
    }
}

impl Refusals {
    /// Lines that start with `prefix`.
    pub(crate) fn new(prefix: &'static str) -> Self {
        Self {
            prefix,
            last_line: None,
            held: 0,
            last: String::new(),
        }
    }

    /// The least time between two lines.
    pub(crate) const EVERY: Duration = Duration::from_secs(1);

    /// A connection was refused at `now` for `why`: the line to log, if one is due (the first
    /// refusal in full, then at most one line a second, saying how many were held back).
    pub(crate) fn refused(&mut self, now: Instant, why: String) -> Option<String> {
        if self.last_line.is_some_and(|t| now.duration_since(t) < Self::EVERY) {
            self.held += 1;
            self.last = why;
            return None;
        }
        let line = match std::mem::take(&mut self.held) {
            0 => format!("{}{why}", self.prefix),
            n => format!(
                "{}{why} (and {n} more in the last {} s)",
                self.prefix,
                secs(now, self.last_line)
            ),
        };
        self.last_line = Some(now);
        Some(line)
    }

    /// The line for the refusals held back, if any, once one is due at `now` (`None` for
    /// `now`: at once, the port is closing).
    pub(crate) fn due(&mut self, now: Option<Instant>) -> Option<String> {
        let at = now.unwrap_or_else(Instant::now);
        if self.held == 0 || now.is_some_and(|n| self.last_line.is_some_and(|t| n.duration_since(t) < Self::EVERY)) {
            return None;
        }
        let n = std::mem::take(&mut self.held);
        let line = format!(
            "{}{n} more connection{} in the last {} s (the last: {})",
            self.prefix,
            if n == 1 { "" } else { "s" },
            secs(at, self.last_line),
            self.last
        );
        self.last_line = Some(at);
        Some(line)
    }
}

fn secs(now: Instant, since: Option<Instant>) -> String {
    let d = since.map_or(Duration::ZERO, |t| now.duration_since(t));
    format!("{:.1}", d.as_secs_f64())
}
