//! User events (Consul's `consul event`): named, with an optional payload and filters saying
//! which agents act on them. Consul gossips each event to every agent, and each agent keeps the
//! last 256 it processed; here the server keeps them all (in memory, as Consul does) and a
//! listing shows what one agent would have processed: the server's own, or the agent whose
//! node is named. Nothing here knows HTTP.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Mutex;

use regex::Regex;
use tokio::sync::watch;

/// Events kept; listings show at most [`AGENT_EVENTS`] of them, as one Consul agent holds.
const KEPT: usize = 4096;
/// Events one agent lists (Consul's event buffer).
pub(crate) const AGENT_EVENTS: usize = 256;
/// Serf's `UserEventSizeLimit` default: name and encoded event together.
pub(crate) const SIZE_LIMIT: usize = 512;
/// The version of the event format (Consul's `userEventMaxVersion`).
pub(crate) const VERSION: u32 = 1;

/// One user event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UserEvent {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) payload: Option<Vec<u8>>,
    pub(crate) node_filter: String,
    pub(crate) service_filter: String,
    pub(crate) tag_filter: String,
    pub(crate) version: u32,
    /// Lamport time of the event's delivery (0 in the answer to the fire).
    pub(crate) ltime: u64,
}

/// Why an event cannot be fired (Consul's texts).
#[derive(Debug, thiserror::Error)]
pub(crate) enum EventError {
    #[error("Cannot provide tag filter without service filter")]
    TagWithoutService,
    #[error("Invalid {0} filter: error parsing regexp: {1}")]
    BadFilter(&'static str, String),
    #[error("user event exceeds configured limit of {SIZE_LIMIT} bytes before encoding")]
    TooLarge,
}

impl UserEvent {
    /// Checks the filters, as Consul's `validateUserEventParams`, and the size limit.
    pub(crate) fn validate(&self) -> Result<(), EventError> {
        if !self.tag_filter.is_empty() && self.service_filter.is_empty() {
            return Err(EventError::TagWithoutService);
        }
        for (what, filter) in [
            ("node", &self.node_filter),
            ("service", &self.service_filter),
            ("tag", &self.tag_filter),
        ] {
            if !filter.is_empty() {
                Regex::new(filter).map_err(|e| EventError::BadFilter(what, first_line(&e)))?;
            }
        }
        Ok(())
    }

    /// The size serf checks: the event name (with Consul's `consul:event:` prefix) and the
    /// encoded event (fields plus their MessagePack framing, about 64 bytes).
    pub(crate) fn check_size(&self) -> Result<(), EventError> {
        let encoded = self.id.len()
            + self.name.len()
            + self.payload.as_ref().map_or(0, Vec::len)
            + self.node_filter.len()
            + self.service_filter.len()
            + self.tag_filter.len()
            + 64;
        if "consul:event:".len() + self.name.len() + encoded > SIZE_LIMIT {
            return Err(EventError::TooLarge);
        }
        Ok(())
    }

    /// Whether an agent on `node` running `services` (ID and tags) acts on this event, as
    /// Consul's `shouldProcessUserEvent`: the node filter matches the node name, the service
    /// filter some service ID, the tag filter one of that service's tags (regular expressions,
    /// unanchored).
    pub(crate) fn processed_by<'a>(
        &self,
        node: &str,
        mut services: impl Iterator<Item = (&'a str, &'a [String])>,
    ) -> bool {
        if self.version > VERSION {
            return false;
        }
        let compiled = |f: &str| Regex::new(f).ok();
        if !self.node_filter.is_empty()
            && !compiled(&self.node_filter).is_some_and(|re| re.is_match(node))
        {
            return false;
        }
        if self.service_filter.is_empty() {
            return true;
        }
        let Some(service) = compiled(&self.service_filter) else {
            return false;
        };
        let tag = if self.tag_filter.is_empty() {
            None
        } else {
            match compiled(&self.tag_filter) {
                Some(re) => Some(re),
                None => return false,
            }
        };
        services.any(|(id, tags)| {
            service.is_match(id)
                && tag
                    .as_ref()
                    .is_none_or(|t| tags.iter().any(|x| t.is_match(x)))
        })
    }
}

fn first_line(e: &regex::Error) -> String {
    e.to_string()
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .trim_start_matches("error: ")
        .to_owned()
}

/// The blocking index of a listing whose last event is `id`, as Consul's `uuidToUint64` (and
/// the Go client's `IDToIndex`): the UUID's two 64-bit halves XORed.
pub(crate) fn index_of(id: &str) -> u64 {
    let hex: String = id.chars().filter(|c| *c != '-').collect();
    let half = |range: std::ops::Range<usize>| {
        hex.get(range)
            .and_then(|h| u64::from_str_radix(h, 16).ok())
            .unwrap_or(0)
    };
    half(0..16) ^ half(16..32)
}

/// An event and the agents' nodes it reached.
struct Delivered {
    event: UserEvent,
    receivers: BTreeSet<String>,
}

/// The events fired, oldest first.
pub(crate) struct Events {
    kept: Mutex<(VecDeque<Delivered>, u64)>,
    changed: watch::Sender<u64>,
}

impl Default for Events {
    fn default() -> Self {
        Self {
            kept: Mutex::new((VecDeque::new(), 0)),
            changed: watch::Sender::new(0),
        }
    }
}

impl Events {
    /// Delivers `event` (its next Lamport time set) to the agents of `receivers` (the nodes
    /// that process it, decided when it is fired, as gossip delivers it then) and wakes
    /// blocked listings.
    pub(crate) fn fire(&self, mut event: UserEvent, receivers: BTreeSet<String>) {
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        kept.1 += 1;
        event.ltime = kept.1;
        kept.0.push_back(Delivered { event, receivers });
        if kept.0.len() > KEPT {
            kept.0.pop_front();
        }
        drop(kept);
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The last [`AGENT_EVENTS`] events the agent of `node` received, oldest first.
    pub(crate) fn received_by(&self, node: &str) -> Vec<UserEvent> {
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        let mut list: Vec<UserEvent> = kept
            .0
            .iter()
            .rev()
            .filter(|d| d.receivers.contains(node))
            .take(AGENT_EVENTS)
            .map(|d| d.event.clone())
            .collect();
        list.reverse();
        list
    }

    /// Wakes on every fired event.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(node: &str, service: &str, tag: &str) -> UserEvent {
        UserEvent {
            id: "b54fe110-7af5-cafc-d1fb-afc8ba432b1c".into(),
            name: "deploy".into(),
            payload: None,
            node_filter: node.into(),
            service_filter: service.into(),
            tag_filter: tag.into(),
            version: VERSION,
            ltime: 0,
        }
    }

    #[test]
    fn filters_as_consul_applies_them() {
        let tags = vec!["v1".to_owned(), "primary".to_owned()];
        let services = || [("web-1", tags.as_slice())].into_iter();
        assert!(event("", "", "").processed_by("n1", services()));
        assert!(event("^n", "", "").processed_by("n1", services()));
        assert!(!event("^x", "", "").processed_by("n1", services()));
        assert!(event("", "web", "").processed_by("n1", services()));
        assert!(event("", "web", "prim").processed_by("n1", services()));
        assert!(!event("", "web", "^v2$").processed_by("n1", services()));
        assert!(!event("", "db", "").processed_by("n1", services()));
        assert!(matches!(
            event("", "", "x").validate(),
            Err(EventError::TagWithoutService)
        ));
        let bad = event("(", "", "").validate().unwrap_err().to_string();
        assert!(
            bad.starts_with("Invalid node filter: error parsing regexp: "),
            "{bad}"
        );
    }

    #[test]
    fn index_is_the_uuid_halves_xored() {
        assert_eq!(
            index_of("b54fe110-7af5-cafc-d1fb-afc8ba432b1c"),
            0xb54fe1107af5cafc ^ 0xd1fbafc8ba432b1c
        );
    }

    #[test]
    fn listings_keep_the_last_events_of_an_agent() {
        let events = Events::default();
        for i in 0..(AGENT_EVENTS + 3) {
            let mut e = event("", "", "");
            e.name = format!("e{i}");
            events.fire(e, BTreeSet::from(["n1".to_owned()]));
        }
        events.fire(event("", "", ""), BTreeSet::from(["n2".to_owned()]));
        assert_eq!(events.received_by("n2").len(), 1);
        let all = events.received_by("n1");
        assert_eq!(all.len(), AGENT_EVENTS);
        assert_eq!(all[0].name, "e3");
        assert_eq!(all.last().unwrap().ltime, (AGENT_EVENTS + 3) as u64);
    }
}
