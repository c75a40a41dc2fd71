//! `events`: one line per event (time, namespace, topic, the decoded event) from
//! Events.Subscribe, or replayed from berthd's journal (`berth.v1.Journal`) with `--from SEQ`.
//!
//! berth prints until the stream ends or it is interrupted; an end of stream is an error (the
//! daemon went away), as with ctr. This module must never publish events.

use clap::Args;
use containerd_client::services::v1::SubscribeRequest;
use serde_json::{json, Value};

use super::Ctx;
use crate::error::{Error, Result};
use crate::output::{rfc3339, Format};

/// `events` flags.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  berth events
  berth events 'topic==\"/tasks/exit\"' 'namespace==dev'
  berth events --from 1 --format json          # replay the journal, then follow
  berth events 'topic~=\"/containers/.*\"'

Filters use containerd's syntax: ==, != and ~= (regexp); ',' joins conditions with AND
inside one filter; several filters are OR'ed.")]
pub struct EventsArgs {
    /// Replay from this journal sequence number (inclusive), then follow live events.
    #[arg(long, value_name = "SEQ")]
    pub from: Option<u64>,
    /// Output format: table (one line each) or json (one object per line).
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// containerd filters.
    pub filters: Vec<String>,
}

/// Print one event.
fn print_event(
    format: Format,
    seq: Option<u64>,
    ts: Option<&prost_types::Timestamp>,
    ns: &str,
    topic: &str,
    any: Option<&prost_types::Any>,
) {
    let (event, type_url) = match any {
        Some(a) => (crate::events_json::decode(a), a.type_url.clone()),
        None => (None, String::new()),
    };
    let body = event
        .clone()
        .unwrap_or_else(|| json!({ "type_url": type_url }));
    let line = match format {
        Format::Json => {
            let mut o =
                json!({ "timestamp": rfc3339(ts), "namespace": ns, "topic": topic, "event": body });
            if let Some(s) = seq {
                o["seq"] = Value::from(s);
            }
            o.to_string()
        }
        Format::Table => {
            let prefix = seq.map(|s| format!("{s} ")).unwrap_or_default();
            format!("{prefix}{} {ns} {topic} {body}", rfc3339(ts))
        }
    };
    println!("{line}");
}

/// Run `berth events`.
pub async fn run(ctx: &Ctx, a: EventsArgs) -> Result<i32> {
    let client = ctx.client().await?;
    match a.from {
        None => {
            let mut stream = client
                .events()
                .subscribe(client.stream_req(SubscribeRequest { filters: a.filters }))
                .await
                .map_err(Error::rpc("subscribe to events"))?
                .into_inner();
            loop {
                match stream.message().await {
                    Ok(Some(e)) => print_event(
                        a.format,
                        None,
                        e.timestamp.as_ref(),
                        &e.namespace,
                        &e.topic,
                        e.event.as_ref(),
                    ),
                    Ok(None) => {
                        return Err(Error::Unsupported("events: berthd ended the stream".into()))
                    }
                    Err(s) => return Err(Error::rpc("events")(s)),
                }
            }
        }
        Some(from) => {
            let req = berth_proto::berth::JournalSubscribeRequest {
                filters: a.filters,
                after_seq: from.saturating_sub(1),
                from_oldest: from <= 1,
            };
            let mut stream = client
                .journal()
                .subscribe(client.stream_req(req))
                .await
                .map_err(Error::rpc(format!("replay events from {from}")))?
                .into_inner();
            loop {
                match stream.message().await {
                    Ok(Some(e)) => print_event(
                        a.format,
                        Some(e.seq),
                        e.timestamp.as_ref(),
                        &e.namespace,
                        &e.topic,
                        e.event.as_ref(),
                    ),
                    Ok(None) => {
                        return Err(Error::Unsupported("events: berthd ended the stream".into()))
                    }
                    Err(s) => return Err(Error::rpc(format!("replay events from {from}"))(s)),
                }
            }
        }
    }
}
