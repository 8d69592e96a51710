//! Page-number pagination as Django REST Framework's: `page` (1-based) and `page_size`
//! (default 100, at most 1000); `next`/`previous` are absolute URLs or `null`.

use super::error::{ApiError, FieldErrors};
use super::view::Page;

pub const DEFAULT_PAGE_SIZE: usize = 100;
pub const MAX_PAGE_SIZE: usize = 1000;

/// A parsed query string, in its original order.
pub struct Query(pub Vec<(String, String)>);

impl Query {
    pub fn parse(raw: Option<&str>) -> Result<Query, ApiError> {
        serde_urlencoded::from_str::<Vec<(String, String)>>(raw.unwrap_or(""))
            .map(Query)
            .map_err(|_| ApiError::BadRequest("Invalid query string.".into()))
    }

    /// The last non-empty value of a parameter.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().rev().find(|(k, v)| k == name && !v.is_empty()).map(|(_, v)| v.as_str())
    }

    /// The last value of a parameter, empty or not.
    pub fn last(&self, name: &str) -> Option<&str> {
        self.0.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// A page number or size: an empty value is no number (as the document says), not page 1.
fn positive(query: &Query, name: &str, errors: &mut FieldErrors) -> Option<usize> {
    let value = query.last(name)?;
    match value.parse::<usize>() {
        Ok(n) if n >= 1 => Some(n),
        _ => {
            errors.add(name, "A valid positive integer is required.");
            None
        }
    }
}

/// Reads `page` and `page_size` into `errors`; returns (page, page_size).
pub fn params(query: &Query, errors: &mut FieldErrors) -> (usize, usize) {
    let page = positive(query, "page", errors).unwrap_or(1);
    let size = positive(query, "page_size", errors).unwrap_or(DEFAULT_PAGE_SIZE).min(MAX_PAGE_SIZE);
    (page, size)
}

/// The page of `items` a list request asks for (`raw`: its query string), with links to
/// its neighbours on this gateway's `path` as the client addressed it.
pub fn answer<T>(
    items: Vec<T>,
    raw: Option<&str>,
    headers: &axum::http::HeaderMap,
    path: &str,
) -> Result<axum::Json<Page<T>>, ApiError> {
    let query = Query::parse(raw)?;
    let mut errors = FieldErrors::default();
    let params = params(&query, &mut errors);
    errors.into_result()?;
    let url = format!("{}{}", super::base_url(headers), path);
    Ok(axum::Json(paginate(items, &query, params, &url)?))
}

/// How many items come before the page (saturating: a page number of 2^63 is only past the end).
pub fn offset((page, size): (usize, usize)) -> usize {
    (page - 1).saturating_mul(size)
}

/// Cuts one page out of `items`. `url` is the absolute URL of the request without its query.
/// A page past the last one (other than page 1) is a bad value: 400.
pub fn paginate<T>(items: Vec<T>, query: &Query, (page, size): (usize, usize), url: &str) -> Result<Page<T>, ApiError> {
    let count = items.len();
    let results: Vec<T> = items.into_iter().skip(offset((page, size))).take(size).collect();
    page_of(count, results, query, (page, size), url)
}

/// A page whose `results` were already cut out of `count` matching items.
pub fn page_of<T>(
    count: usize,
    results: Vec<T>,
    query: &Query,
    (page, size): (usize, usize),
    url: &str,
) -> Result<Page<T>, ApiError> {
    let pages = count.div_ceil(size).max(1);
    if page > pages {
        let mut errors = FieldErrors::default();
        errors.add("page", "Invalid page.");
        return Err(ApiError::Fields(errors));
    }
    let link = |target: usize| {
        let mut pairs: Vec<(String, String)> = query.0.iter().filter(|(k, _)| k != "page").cloned().collect();
        if target > 1 {
            pairs.push(("page".into(), target.to_string()));
        }
        let qs = serde_urlencoded::to_string(&pairs).unwrap_or_default();
        if qs.is_empty() { url.to_string() } else { format!("{url}?{qs}") }
    };
    Ok(Page {
        count,
        next: (page < pages).then(|| link(page + 1)),
        previous: (page > 1).then(|| link(page - 1)),
        results,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_and_links() {
        let q = Query::parse(Some("status=active&page_size=2&page=2")).unwrap();
        let mut errors = FieldErrors::default();
        let p = params(&q, &mut errors);
        assert!(errors.is_empty());
        let page = paginate((1..=5).collect::<Vec<_>>(), &q, p, "http://h/api/v1/servers/").unwrap();
        assert_eq!(page.count, 5);
        assert_eq!(page.results, vec![3, 4]);
        assert_eq!(page.next.as_deref(), Some("http://h/api/v1/servers/?status=active&page_size=2&page=3"));
        assert_eq!(page.previous.as_deref(), Some("http://h/api/v1/servers/?status=active&page_size=2"));
        assert!(paginate((1..=5).collect::<Vec<_>>(), &q, (4, 2), "u").is_err());
        assert_eq!(paginate(Vec::<i32>::new(), &q, (1, 2), "u").unwrap().count, 0);
        let huge = Query::parse(Some("page=72057594037927937&page_size=506326425421")).unwrap();
        let mut errors = FieldErrors::default();
        let p = params(&huge, &mut errors);
        assert!(errors.is_empty());
        assert!(paginate((1..=5).collect::<Vec<_>>(), &huge, p, "u").is_err(), "past the end, no overflow");
        for bad in ["page=0&page_size=x", "page=&page_size=", "page=2&page=&page_size=-1"] {
            let mut errors = FieldErrors::default();
            params(&Query::parse(Some(bad)).unwrap(), &mut errors);
            assert!(errors.has("page") && errors.has("page_size"), "{bad}");
        }
    }
}
