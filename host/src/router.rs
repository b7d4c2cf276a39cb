//! Which component owns a request path. Pure: no I/O, no wasm.

/// Route prefixes and the component each belongs to, by index.
#[derive(Debug, Default, Clone)]
pub struct Router {
    routes: Vec<(String, usize)>,
}

impl Router {
    /// Builds a router from `(prefix, component)` pairs. The config has
    /// already refused overlapping prefixes, so at most one matches a path.
    pub fn new(routes: impl IntoIterator<Item = (String, usize)>) -> Self {
        Router {
            routes: routes.into_iter().collect(),
        }
    }

    /// The component whose prefix owns `path`: the prefix itself, or the
    /// prefix followed by `/`.
    pub fn lookup(&self, path: &str) -> Option<usize> {
        self.routes
            .iter()
            .find(|(prefix, _)| owns(prefix, path))
            .map(|(_, component)| *component)
    }
}

fn owns(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::Router;

    #[test]
    fn matches_whole_segments() {
        let router = Router::new([("/users".to_string(), 0), ("/api/orders".to_string(), 1)]);
        assert_eq!(router.lookup("/users"), Some(0));
        assert_eq!(router.lookup("/users/7"), Some(0));
        assert_eq!(router.lookup("/users/"), Some(0));
        assert_eq!(router.lookup("/usersx"), None);
        assert_eq!(router.lookup("/api/orders/1"), Some(1));
        assert_eq!(router.lookup("/api"), None);
        assert_eq!(router.lookup("/"), None);
    }

    #[test]
    fn root_owns_everything() {
        let router = Router::new([("/".to_string(), 3)]);
        assert_eq!(router.lookup("/anything/at/all"), Some(3));
    }
}
