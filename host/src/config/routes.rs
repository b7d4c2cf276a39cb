//! Routes as the config writes them: path prefixes a component owns
//! (`/users` owns `/users` and `/users/...`), and route patterns such as
//! `GET /users/{id}` that rate limits apply to. Pure: no I/O.

use std::fmt;
use std::str::FromStr;

/// Whether route `prefix` owns `path`: the prefix itself, or the prefix
/// followed by `/`.
pub fn owns(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Paths under this prefix are the host's own (calls between hosts): no
/// route owns them, and no client request to one reaches a component.
pub const HOSTS_PREFIX: &str = "/.corral";

/// Whether `path` is one of the host's own.
pub fn is_hosts(path: &str) -> bool {
    owns(HOSTS_PREFIX, path)
}

/// A route is `/` or a path prefix of plain segments without a trailing
/// slash, and not under [`HOSTS_PREFIX`].
pub fn check_route(route: &str) -> Result<(), String> {
    if route == "/" {
        return Ok(());
    }
    if is_hosts(route) {
        return Err(format!(
            "{route:?} is not a route: paths under {HOSTS_PREFIX} are the host's"
        ));
    }
    let plain_segment = |s: &str| {
        !s.is_empty() && s != "." && s != ".." && s.chars().all(|c| c.is_ascii_alphanumeric() || "-._~".contains(c))
    };
    match route.strip_prefix('/') {
        Some(rest) if rest.split('/').all(plain_segment) => Ok(()),
        _ => Err(format!(
            "{route:?} is not a route: use a path prefix such as \"/users\" (a leading `/`, no trailing `/`, no query)"
        )),
    }
}

/// Whether a request under `a` could also be under `b`: one is `b` itself or
/// a prefix of the other at a segment boundary.
pub fn routes_overlap(a: &str, b: &str) -> bool {
    owns(a, b) || owns(b, a)
}

/// A method and a path template: `GET /users/{id}`. A `{name}` segment
/// matches any one segment; without a method (or with `*`), any method matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePattern {
    method: Option<String>,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

impl FromStr for RoutePattern {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = |why: &str| format!("{text:?} is not a route pattern such as \"GET /users/{{id}}\": {why}");
        let (method, path) = match text.trim().split_once(' ') {
            Some((method, path)) => (Some(method.trim()), path.trim()),
            None => (None, text.trim()),
        };
        let method = match method {
            None | Some("*") => None,
            Some(m) if !m.is_empty() && m.chars().all(|c| c.is_ascii_uppercase()) => Some(m.to_string()),
            Some(_) => return Err(invalid("the method must be uppercase, such as GET, or *")),
        };
        let rest = path
            .strip_prefix('/')
            .ok_or_else(|| invalid("the path must start with /"))?;
        let mut segments = Vec::new();
        for segment in rest.split('/') {
            if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(invalid("a parameter is a name in braces, such as {id}"));
                }
                segments.push(Segment::Param(name.to_string()));
            } else if segment.is_empty() || segment.contains(['{', '}', '?', ' ']) {
                return Err(invalid("segments are non-empty, without braces, spaces or a query"));
            } else {
                segments.push(Segment::Literal(segment.to_string()));
            }
        }
        Ok(RoutePattern { method, segments })
    }
}

impl fmt::Display for RoutePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.method.as_deref().unwrap_or("*"))?;
        f.write_str(" ")?;
        for segment in &self.segments {
            match segment {
                Segment::Literal(s) => write!(f, "/{s}")?,
                Segment::Param(name) => write!(f, "/{{{name}}}")?,
            }
        }
        Ok(())
    }
}

impl RoutePattern {
    /// Whether a request matches, as the component will see it: the method
    /// as sent (HEAD counts as GET, which components answer it as), the
    /// path as sent, segment by segment.
    pub fn matches(&self, method: &str, path: &str) -> bool {
        let method = if method == "HEAD" { "GET" } else { method };
        if self.method.as_deref().is_some_and(|m| m != method) {
            return false;
        }
        let Some(rest) = path.strip_prefix('/') else {
            return false;
        };
        let mut parts = rest.split('/');
        let all_match = self.segments.iter().all(|segment| match (segment, parts.next()) {
            (Segment::Literal(literal), Some(part)) => literal == part,
            (Segment::Param(_), Some(part)) => !part.is_empty(),
            (_, None) => false,
        });
        all_match && parts.next().is_none()
    }

    /// Whether every path this pattern matches lies under route `prefix`.
    pub fn is_under(&self, prefix: &str) -> bool {
        let sample: String = self
            .segments
            .iter()
            .map(|segment| match segment {
                Segment::Literal(s) => format!("/{s}"),
                Segment::Param(_) => "/{}".to_string(),
            })
            .collect();
        owns(prefix, &sample)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_own_whole_segments() {
        assert!(owns("/users", "/users") && owns("/users", "/users/7") && owns("/users", "/users/"));
        assert!(!owns("/users", "/usersx") && !owns("/api/orders", "/api"));
        assert!(owns("/", "/anything/at/all"));
    }

    #[test]
    fn overlap_is_at_segment_boundaries() {
        assert!(routes_overlap("/users", "/users"));
        assert!(routes_overlap("/users", "/users/admin"));
        assert!(routes_overlap("/", "/orders"));
        assert!(!routes_overlap("/users", "/usersx"));
        assert!(!routes_overlap("/users", "/orders"));
    }

    #[test]
    fn routes_are_plain_prefixes() {
        for good in ["/", "/users", "/api/v1/users", "/a-b_c.d~e"] {
            assert!(check_route(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "users",
            "/users/",
            "//x",
            "/a/../b",
            "/a?b",
            "/a b",
            "/ä",
            "/.corral",
            "/.corral/x",
        ] {
            assert!(check_route(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn patterns_match_method_and_segments() {
        let pattern: RoutePattern = "GET /users/{id}".parse().unwrap();
        assert!(pattern.matches("GET", "/users/7"));
        assert!(!pattern.matches("POST", "/users/7"));
        assert!(pattern.matches("HEAD", "/users/7"), "HEAD is limited as GET");
        assert!(
            !pattern.matches("get", "/users/7"),
            "methods are case-sensitive, as components see them"
        );
        assert!(!pattern.matches("GET", "/users"));
        assert!(!pattern.matches("GET", "/users/7/orders"));
        assert!(!pattern.matches("GET", "/users/"));
        assert_eq!(pattern.to_string(), "GET /users/{id}");
        let any: RoutePattern = "/orders".parse().unwrap();
        assert!(any.matches("DELETE", "/orders"));
        assert!(pattern.is_under("/users") && !pattern.is_under("/orders") && !pattern.is_under("/users/me"));
        for bad in [
            "get /users",
            "GET users",
            "GET /users/{}",
            "GET /users//x",
            "GET /a/{b c}",
        ] {
            assert!(bad.parse::<RoutePattern>().is_err(), "{bad}");
        }
    }
}
