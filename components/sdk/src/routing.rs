//! Routing inside a component: a table of `(method, pattern, handler)`,
//! where a pattern names its parameters in braces (`/users/{id}`). HEAD is
//! answered as GET; a path no pattern matches is 404, a method no route
//! of a matching path has is 405 with `Allow`.
//!
//! ```no_run
//! # use corral_sdk::{Params, Problem, Request, Response, Route};
//! const ROUTES: &[Route] = &[
//!     ("GET", "/users/{id}", get),
//! ];
//! fn get(_req: &Request, params: &Params) -> Result<Response, Problem> {
//!     let id = params.id("id", "user")?;
//!     Ok(Response::text(200, &id.to_string()))
//! }
//! ```

use crate::http::{Problem, Request, Response};

/// What handles a route.
pub type Handler = fn(&Request, &Params) -> Result<Response, Problem>;

/// A method, a path pattern and its handler.
pub type Route = (&'static str, &'static str, Handler);

/// The values of a pattern's `{parameters}` in one request's path.
#[derive(Debug, Default)]
pub struct Params {
    values: Vec<(&'static str, String)>,
}

impl Params {
    /// The value of parameter `name`, as it appears in the path.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    /// Parameter `name` as a positive id; anything else names no `what`
    /// (404).
    pub fn id(&self, name: &str, what: &str) -> Result<i64, Problem> {
        let raw = self.get(name).unwrap_or_default();
        raw.parse::<i64>()
            .ok()
            .filter(|id| *id > 0 && !raw.starts_with('+'))
            .ok_or_else(|| Problem::not_found(format!("no {what} with id {raw}")))
    }
}

/// Hands `request` to the route of `routes` that matches it.
pub fn route(request: &Request, routes: &[Route]) -> Result<Response, Problem> {
    let method = match request.method() {
        "HEAD" => "GET",
        other => other,
    };
    let mut allowed: Vec<&str> = Vec::new();
    for (route_method, pattern, handler) in routes {
        let Some(params) = matches(pattern, request.path()) else {
            continue;
        };
        if *route_method == method {
            return handler(request, &params);
        }
        if !allowed.contains(route_method) {
            allowed.push(route_method);
        }
    }
    if allowed.is_empty() {
        Err(Problem::not_found(format!("no resource at {}", request.path())))
    } else {
        Err(Problem::method_not_allowed(request.method(), &allowed))
    }
}

/// The parameters of `path` under `pattern`, if it matches segment by segment.
fn matches(pattern: &'static str, path: &str) -> Option<Params> {
    let mut params = Params::default();
    let mut parts = path.split('/');
    for segment in pattern.split('/') {
        let part = parts.next()?;
        match segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some(name) if !part.is_empty() => params.values.push((name, part.to_string())),
            Some(_) => return None,
            None if segment == part => {}
            None => return None,
        }
    }
    parts.next().is_none().then_some(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_whole_segments() {
        let params = matches("/users/{id}", "/users/7").unwrap();
        assert_eq!(params.get("id"), Some("7"));
        assert!(matches("/users/{id}", "/users").is_none());
        assert!(matches("/users/{id}", "/users/").is_none());
        assert!(matches("/users/{id}", "/users/7/orders").is_none());
        assert!(matches("/users", "/users").is_some());
        assert!(matches("/users", "/usersx").is_none());
    }

    #[test]
    fn ids_are_positive_integers() {
        let params = |v: &str| Params {
            values: vec![("id", v.to_string())],
        };
        assert_eq!(params("12").id("id", "user").unwrap(), 12);
        for bad in ["0", "-1", "+1", "x", "", "99999999999999999999"] {
            assert_eq!(params(bad).id("id", "user").unwrap_err().status, 404, "{bad}");
        }
    }
}
