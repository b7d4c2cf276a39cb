//! Lists in pages: the query that asks for one (`?limit=&after=`) and the
//! page answered, in id order.

use serde::Serialize;

use crate::http::{Problem, Request};
use crate::input::Check;

/// One page of a list, in id order: `next_after` is the `after` of the next
/// page, or null on the last one.
#[derive(Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_after: Option<i64>,
}

impl<T> Page<T> {
    /// Builds a page from up to `query.fetch()` items fetched in id order:
    /// the extra one, if present, tells there is a next page.
    pub fn new(mut items: Vec<T>, query: PageQuery, id: impl Fn(&T) -> i64) -> Self {
        let limit = usize::try_from(query.limit).unwrap_or(0);
        let next_after = if items.len() > limit {
            items.truncate(limit);
            items.last().map(&id)
        } else {
            None
        };
        Page { items, next_after }
    }
}

/// Where a page of a list starts and how long it is, from `?limit=&after=`.
#[derive(Debug, Clone, Copy)]
pub struct PageQuery {
    pub limit: i64,
    pub after: i64,
}

impl PageQuery {
    /// Reads `limit` (1 to `max_limit`, default `default_limit`) and `after`
    /// (an id, default 0) from the query.
    pub fn of(request: &Request, default_limit: i64, max_limit: i64) -> Result<PageQuery, Problem> {
        let mut check = Check::default();
        let mut read = |name: &str, default: i64, min: i64, max: i64| match request.query(name) {
            None => default,
            Some(raw) => {
                let n = raw.parse::<i64>().ok().filter(|n| (min..=max).contains(n));
                check.that(name, n.is_some(), format!("must be an integer between {min} and {max}"));
                n.unwrap_or(default)
            }
        };
        let limit = read("limit", default_limit, 1, max_limit);
        let after = read("after", 0, 0, i64::MAX);
        check.finish()?;
        Ok(PageQuery { limit, after })
    }

    /// One more than a page, to tell whether there is a next one.
    pub fn fetch(&self) -> i64 {
        self.limit + 1
    }
}
