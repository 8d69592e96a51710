//! A server's metrics history, as Hetzner's server metrics:
//! `GET /api/v1/servers/{id}/metrics/?type=cpu|memory|disk|network&start=&end=&step=` answers
//! time series from Prometheus ([`super::usage`]) over KubeVirt's metrics of its instance:
//! `cpu` (percent of the plan's vCPUs), `memory.used` and `disk.used` (bytes), `network.in`
//! and `network.out` (bytes per second). `start` and `end` are RFC 3339 times, `step` whole
//! seconds (default: what gives about 100 points); at most [`MAX_POINTS`] points per series.

use axum::Json;
use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::routing::get;
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::Tenant;
use super::error::{ApiError, FieldErrors};
use super::pagination::Query;
use super::servers::find;
use super::{AppState, route_both, with_405};

/// The most points a series may have.
pub const MAX_POINTS: i64 = 1000;
const KINDS: [&str; 4] = ["cpu", "memory", "disk", "network"];

pub fn router() -> Router<AppState> {
    route_both(Router::new(), "/api/v1/servers/{server_id}/metrics/", with_405(get(server_metrics), "GET, HEAD"))
}

/// The answer: the range asked for and its series.
#[derive(Serialize, ToSchema, Debug)]
pub struct MetricsView {
    pub metrics: MetricsRange,
}

#[derive(Serialize, ToSchema, Debug)]
pub struct MetricsRange {
    /// RFC 3339.
    pub start: String,
    /// RFC 3339.
    pub end: String,
    /// Seconds between points.
    pub step: i64,
    /// By series name (`cpu`; `memory.used`; `disk.used`; `network.in`, `network.out`), its
    /// points as `[unix time, "value"]`.
    #[schema(value_type = Object)]
    pub time_series: serde_json::Map<String, serde_json::Value>,
}

#[utoipa::path(get, path = "/api/v1/servers/{server_id}/metrics/", tag = "servers",
    params(("server_id" = i64, Path, description = "The server's id"),
        ("type" = String, Query, description = "cpu, memory, disk or network"),
        ("start" = String, Query, description = "RFC 3339"),
        ("end" = String, Query, description = "RFC 3339, after start"),
        ("step" = Option<i64>, Query, description = "Seconds between points; at most 1000 points")),
    responses(
        (status = 200, description = "The server's time series", body = MetricsView),
        (status = 400, description = "A type that is none of the four, a bad or missing start or end, an end not after start, or a step giving more than 1000 points"),
        (status = 401, description = "Missing or unknown token"),
        (status = 404, description = "No such server in this account"),
        (status = 503, description = "No metrics source is configured, or it did not answer in time"),
    ),
    security(("bearer" = [])))]
pub async fn server_metrics(
    tenant: Tenant,
    State(state): State<AppState>,
    Path(server_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<MetricsView>, ApiError> {
    let server = find(&state, &tenant, &server_id)?;
    let query = Query::parse(raw.as_deref())?;
    let (kind, range) = params(&query)?;
    let usage = state.usage.as_ref().ok_or(ApiError::Unavailable("No metrics source is configured."))?;
    let (namespace, name, vcpus) = super::usage::instance_of(&state, &server);
    let series = usage.history(&namespace, &name, vcpus, kind, range).await.map_err(|e| {
        tracing::warn!(%namespace, server = %name, "No metrics history: {e:#}");
        ApiError::Unavailable("The metrics source did not answer in time.")
    })?;
    let stamp = |t: i64| jiff::Timestamp::from_second(t).map(crate::timestamps::seconds).unwrap_or_default();
    Ok(Json(MetricsView {
        metrics: MetricsRange {
            start: stamp(range.0),
            end: stamp(range.1),
            step: range.2,
            time_series: series.into_iter().map(|(n, points)| (n, serde_json::json!({"values": points}))).collect(),
        },
    }))
}

/// The type, and (start, end, step) in Unix seconds, or the fields that are wrong.
fn params(query: &Query) -> Result<(&'static str, (i64, i64, i64)), ApiError> {
    let mut errors = FieldErrors::default();
    let kind = match query.last("type") {
        None | Some("") => {
            errors.add("type", "This field is required.");
            None
        }
        Some(k) => {
            let found = KINDS.iter().copied().find(|c| *c == k);
            if found.is_none() {
                errors.add("type", format!("\"{k}\" is not a valid choice."));
            }
            found
        }
    };
    let mut time = |field: &str| match query.last(field) {
        None | Some("") => {
            errors.add(field, "This field is required.");
            None
        }
        Some(v) => match v.parse::<jiff::Timestamp>() {
            Ok(t) => Some(t.as_second()),
            Err(_) => {
                errors.add(field, "Datetime has wrong format. Use RFC 3339, e.g. 2026-12-01T10:00:00Z.");
                None
            }
        },
    };
    let (start, end) = (time("start"), time("end"));
    let step = match query.last("step") {
        None | Some("") => None,
        Some(v) => match v.parse::<i64>() {
            Ok(n) if n >= 1 => Some(n),
            _ => {
                errors.add("step", "A valid positive integer is required.");
                None
            }
        },
    };
    if let (Some(start), Some(end)) = (start, end) {
        if end <= start {
            errors.add("end", "Ensure end is after start.");
        } else {
            let step = step.unwrap_or(((end - start) / 100).max(1));
            if (end - start) / step + 1 > MAX_POINTS {
                errors.add(
                    "step",
                    format!(
                        "Ensure the range has at most {MAX_POINTS} points: a step of at least {} seconds.",
                        (end - start + MAX_POINTS - 2) / (MAX_POINTS - 1)
                    ),
                );
            }
        }
    }
    errors.into_result()?;
    let (start, end) = (start.expect("checked"), end.expect("checked"));
    Ok((kind.expect("checked"), (start, end, step.unwrap_or(((end - start) / 100).max(1)))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(q: &str) -> Result<(&'static str, (i64, i64, i64)), ApiError> {
        params(&Query::parse(Some(q)).unwrap())
    }

    fn fields(q: &str) -> Vec<String> {
        match parse(q) {
            Err(ApiError::Fields(f)) => {
                ["type", "start", "end", "step"].into_iter().filter(|k| f.has(k)).map(String::from).collect()
            }
            other => panic!("{q}: {other:?}"),
        }
    }

    #[test]
    fn a_range_is_checked_strictly() {
        let ok = parse("type=cpu&start=2026-12-01T10:00:00Z&end=2026-12-01T11:00:00Z&step=60").unwrap();
        assert_eq!(ok, ("cpu", (1_796_119_200, 1_796_122_800, 60)));
        // Without a step: about 100 points.
        let (_, (_, _, step)) = parse("type=network&start=2026-12-01T10:00:00Z&end=2026-12-01T11:00:00Z").unwrap();
        assert_eq!(step, 36);
        assert_eq!(fields("start=2026-12-01T10:00:00Z&end=2026-12-01T11:00:00Z"), ["type"]);
        assert_eq!(fields("type=gpu&start=2026-12-01T10:00:00Z&end=2026-12-01T11:00:00Z"), ["type"]);
        assert_eq!(fields("type=cpu&start=yesterday&end=2026-12-01T11:00:00Z"), ["start"]);
        assert_eq!(fields("type=cpu&start=2026-12-01T11:00:00Z&end=2026-12-01T10:00:00Z"), ["end"]);
        assert_eq!(fields("type=cpu&start=2026-12-01T10:00:00Z&end=2026-12-01T10:00:00Z"), ["end"]);
        assert_eq!(fields("type=cpu&start=2026-12-01T10:00:00Z&end=2026-12-01T11:00:00Z&step=0"), ["step"]);
        // An hour every second: 3,601 points.
        assert_eq!(fields("type=cpu&start=2026-12-01T10:00:00Z&end=2026-12-01T11:00:00Z&step=1"), ["step"]);
        assert!(parse("type=cpu&start=2026-12-01T10:00:00Z&end=2026-12-01T11:00:00Z&step=4").is_ok());
        assert_eq!(fields("type=cpu&start=2026-12-01T10:00:00Z&end=2026-12-01T11:00:00Z&step=3"), ["step"]);
        assert_eq!(fields(""), ["type", "start", "end"]);
    }
}
