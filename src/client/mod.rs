//! `vps-operator client ...`: a command-line client for customers of the VPS REST API
//! (`docs/API.md`). It speaks HTTP and JSON to a gateway and nothing else: each command is
//! planned from its flags alone ([`plan`](plan::plan): one request, how to show the answer, whether to
//! follow pages or wait), then sent ([`http`]) and shown ([`render`], [`json`]).

mod commands;
mod http;
mod json;
mod plan;
mod render;
mod wait;

use std::io::Write as _;

use anyhow::{Context as _, Result};
use serde_json::Value;

pub use self::commands::*;
use self::http::{Api, Reply, Request};
use self::plan::{Plan, Shows, plan};
use self::wait::{Until, follow};

/// Lines for standard error; the command fails.
#[derive(Debug)]
struct Failure(Vec<String>);

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure(vec![format!("error: {}", render::clean(&format!("{e:#}")))])
    }
}

fn api_error(reply: &Reply) -> Failure {
    Failure(render::error(reply.status, reply.header("retry-after"), &reply.body))
}

/// A successful answer, or the failure it is: an error answer, or one that is not the API's
/// (JSON; for a list, a page of `results`), as from a URL that is not the gateway's root.
fn accepted(reply: Reply, page: bool) -> Result<Reply, Failure> {
    if !reply.ok() {
        return Err(api_error(&reply));
    }
    let body = reply.body.trim();
    let fits = if page {
        json::is_json(body) && reply.json()["results"].is_array()
    } else {
        body.is_empty() || json::is_json(body)
    };
    if fits {
        return Ok(reply);
    }
    let what = if page { "a page of results" } else { "JSON" };
    Err(Failure(vec![format!(
        "error: HTTP {} but the answer is not {what}: is the API URL the gateway's root?",
        render::status_text(reply.status)
    )]))
}

/// Runs `vps-operator client ...`; the process's exit code (errors are printed here).
pub async fn run(args: ClientArgs) -> i32 {
    match execute(&args).await {
        Ok(()) => 0,
        Err(Failure(lines)) => {
            for line in lines {
                eprintln!("{line}");
            }
            1
        }
    }
}

/// Writes to standard output; a closed pipe (`| head`) is not an error.
fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush());
}

fn json_out(raw: &str) {
    if raw.trim().is_empty() {
        return;
    }
    let text = if json::is_json(raw) { json::pretty(raw) } else { raw.to_string() };
    out(&format!("{text}\n"));
}

async fn execute(args: &ClientArgs) -> Result<(), Failure> {
    let plan = plan(&args.command)?;
    let url = args.api_url.as_deref().filter(|u| !u.trim().is_empty());
    let url = url.context("no API URL: set VPS_API_URL or pass --api-url (e.g. http://127.0.0.1:8080)")?;
    let token = args.token.as_deref().context("no API token: set VPS_API_TOKEN or pass --token")?;
    let api = Api::new(url, token)?;
    let reply = accepted(api.send(&plan.request).await?, plan.shows.is_list())?;
    let json = args.output == Output::Json;
    if plan.shows.is_list() {
        return show_pages(&api, &plan, reply, json).await;
    }
    let Some(wait) = &plan.wait else {
        show_one(plan.shows, &reply, json);
        return Ok(());
    };
    let answer = reply.json();
    let id = match wait.id.or_else(|| answer["id"].as_u64()) {
        Some(id) => id,
        None => return Err(anyhow::anyhow!("the answer has no server id to wait for").into()),
    };
    if !json {
        // What was asked, before the wait; the settled server is the output.
        match plan.shows {
            Shows::Created => eprintln!("Created server {id} ({}).", render::cell(&answer["name"])),
            Shows::Action => eprint!("{}", render::action(&answer)),
            _ => {}
        }
    }
    match follow(&api, id, wait).await? {
        None => {
            if !json {
                out(&format!("Server {id} deleted.\n"));
            }
            Ok(())
        }
        Some(settled) => {
            show_one(Shows::Server, &settled, json);
            let status = settled.json()["status"].as_str().unwrap_or_default().to_string();
            match wait.until {
                Until::Settled(expect) if status != expect => Err(Failure(vec![format!(
                    "error: server {id} settled as {}, not {expect}",
                    render::clean(&status)
                )])),
                _ => Ok(()),
            }
        }
    }
}

/// Shows one answer that is not a list.
fn show_one(shows: Shows, reply: &Reply, json: bool) {
    if json {
        json_out(&reply.body);
        return;
    }
    let v = reply.json();
    match shows {
        Shows::Created => {
            out(&render::server(&v));
            if let Some(m) = v["message"].as_str() {
                eprintln!("{}", render::clean(m));
            }
        }
        Shows::Action => out(&render::action(&v)),
        Shows::Deleted(id) => out(&format!("Server {id} deleted.\n")),
        Shows::SshKey => out(&render::ssh_key(&v)),
        Shows::SshKeyDeleted(id) => out(&format!("SSH key {id} deleted.\n")),
        Shows::TrackedAction => out(&render::tracked_action(&v)),
        Shows::BackupDeleted(id) => out(&format!("Backup {id} deleted.\n")),
        _ => out(&render::server(&v)),
    }
}

/// Shows a list answer, first following `next` if every page is wanted.
async fn show_pages(api: &Api, plan: &Plan, first: Reply, json: bool) -> Result<(), Failure> {
    let mut pages = vec![first];
    if plan.all_pages {
        let mut asked = plan.request.query.clone();
        // At most as many pages as the first promised, and never the same twice.
        let count = pages[0].json()["count"].as_u64().unwrap_or(0);
        let mut left = count.saturating_add(1);
        while let Some(next) = pages.last().and_then(|p| p.json()["next"].as_str().map(str::to_string)) {
            let query = self::http::query_of_link(&next);
            if query == asked || left == 0 {
                break;
            }
            left -= 1;
            let request = Request { query: query.clone(), ..plan.request.clone() };
            pages.push(accepted(api.send(&request).await?, true)?);
            asked = query;
        }
    }
    if json {
        json_out(&join_pages(&pages));
        return Ok(());
    }
    let first = pages[0].json();
    let items: Vec<Value> = pages
        .iter()
        .flat_map(|p| match p.json()["results"].take() {
            Value::Array(items) => items,
            _ => vec![],
        })
        .collect();
    if items.is_empty() {
        eprintln!("No {} found.", plan.shows.plural());
        return Ok(());
    }
    out(&match plan.shows {
        Shows::Plans => render::plans(&items),
        Shows::Os => render::os(&items),
        Shows::Locations => render::locations(&items),
        Shows::SshKeys => render::ssh_keys(&items),
        Shows::Actions => render::tracked_actions(&items),
        Shows::Backups => render::backups(&items),
        _ => render::servers(&items),
    });
    if !plan.all_pages && first["next"].is_string() {
        let count = render::cell(&first["count"]);
        let page: u64 = plan
            .request
            .query
            .as_deref()
            .and_then(|q| serde_urlencoded::from_str::<Vec<(String, String)>>(q).ok())
            .and_then(|pairs| pairs.into_iter().find(|(k, _)| k == "page").and_then(|(_, v)| v.parse().ok()))
            .unwrap_or(1);
        eprintln!(
            "{} of {count} {} shown: --page {} for the next page, --all for every one.",
            items.len(),
            plan.shows.plural(),
            page + 1
        );
    }
    Ok(())
}

/// One page's text as it came; several joined into one page object holding every result.
fn join_pages(pages: &[Reply]) -> String {
    if let [one] = pages {
        return one.body.clone();
    }
    let count = json::member(&pages[0].body, "count").unwrap_or("null");
    let results: Vec<&str> =
        pages.iter().flat_map(|p| json::member(&p.body, "results").map(json::elements).unwrap_or_default()).collect();
    format!(r#"{{"count":{count},"next":null,"previous":null,"results":[{}]}}"#, results.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(body: &str) -> Reply {
        Reply { status: 200, headers: Default::default(), body: body.into() }
    }

    #[test]
    fn pages_are_joined_as_they_came() {
        let one =
            reply(r#"{"count":3,"next":"http://h/x/?page=2","previous":null,"results":[{"id":2,"b":1},{"id":1}]}"#);
        assert_eq!(join_pages(std::slice::from_ref(&one)), one.body);
        let two = reply(r#"{"count":3,"next":null,"previous":"http://h/x/","results":[{"z":0,"id":3}]}"#);
        assert_eq!(
            join_pages(&[one, two]),
            r#"{"count":3,"next":null,"previous":null,"results":[{"id":2,"b":1},{"id":1},{"z":0,"id":3}]}"#
        );
    }

    #[test]
    fn only_the_apis_answers_are_accepted() {
        let page = r#"{"count":0,"next":null,"previous":null,"results":[]}"#;
        assert!(accepted(reply(page), true).is_ok());
        assert!(accepted(reply(r#"{"id":1}"#), false).is_ok());
        assert!(accepted(reply(""), false).is_ok(), "a 204");
        let Failure(lines) = accepted(reply("<html>hello</html>"), false).unwrap_err();
        assert_eq!(lines, ["error: HTTP 200 OK but the answer is not JSON: is the API URL the gateway's root?"]);
        assert!(accepted(reply(r#"{"id":1}"#), true).is_err());
        let mut refused = reply(r#"{"detail":"Not found."}"#);
        refused.status = 404;
        assert_eq!(accepted(refused, false).unwrap_err().0, ["error: Not found. (HTTP 404 Not Found)"]);
    }
}
