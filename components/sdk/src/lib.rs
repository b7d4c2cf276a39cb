//! Helpers for writing a corral component, so that a service is short.
//!
//! In reading order:
//! - [`http`]: the request a component receives, the response it returns,
//!   `application/problem+json` errors ([`Problem`]), and pages of lists.
//! - [`routing`]: a table of `(method, pattern, handler)`.
//! - [`input`]: a JSON body decoded into a struct, every field at fault
//!   reported at once ([`Validate`]).
//! - [`db`]: the component's own SQLite database: rows decoded by column
//!   name into structs, typed constraint violations, transactions,
//!   migrations.
//! - [`events`]: publishing to topics, in the database's transaction, and
//!   receiving what the component subscribes to ([`Service::on_event`]).
//! - [`log`]: logging through the host.
//! - [`interfaces!`]: interfaces shared with other components, in one line.
//!
//! A component implements [`Service`] and names its type in [`export_service!`]:
//!
//! ```no_run
//! use corral_sdk::{Params, Problem, Request, Response, Route};
//!
//! struct Hello;
//!
//! const ROUTES: &[Route] = &[("GET", "/hello/{name}", greet)];
//!
//! fn greet(_req: &Request, params: &Params) -> Result<Response, Problem> {
//!     Ok(Response::text(200, &format!("hello, {}", params.get("name").unwrap_or("you"))))
//! }
//!
//! impl corral_sdk::Service for Hello {
//!     fn handle(req: Request) -> Result<Response, Problem> {
//!         corral_sdk::route(&req, ROUTES)
//!     }
//! }
//! corral_sdk::export_service!(Hello);
//! ```

pub mod db;
pub mod events;
pub mod http;
pub mod input;
pub mod log;
pub mod pages;
pub mod routing;
mod rows;

pub use events::{Event, Outcome};
pub use http::{FieldError, Problem, Request, Response};
pub use input::{Check, Validate};
pub use pages::{Page, PageQuery};
pub use routing::{Params, Route, route};

/// For [`interfaces!`]: the bindings generator, so components need not depend on it.
#[doc(hidden)]
pub use wit_bindgen as __wit_bindgen;

/// The bindings generated from `wit/service.wit`: the service world, with
/// the subscriber export, so any component can subscribe.
#[allow(unsafe_code, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "corral:service/subscriber-service",
        pub_export_macro: true,
        export_macro_name: "__export_service_world",
        default_bindings_module: "corral_sdk::bindings",
    });
}

/// What a component implements to be served by corral.
pub trait Service {
    /// Creates or upgrades the database schema; runs once each time the host
    /// loads this version, inside a transaction that is rolled back on error.
    fn init() -> Result<(), String> {
        Ok(())
    }

    /// Handles one request. A [`Problem`] becomes a problem+json response.
    fn handle(request: Request) -> Result<Response, Problem>;

    /// Handles one event delivered from a topic the component subscribes
    /// to (`[components.<name>.subscription]`).
    fn on_event(event: Event) -> Outcome {
        Outcome::DeadLetter(format!("this component does not handle {} events", event.topic))
    }
}

impl<T: Service> bindings::exports::corral::service::subscriber::Guest for T {
    fn handle(delivery: events::Delivery) -> Outcome {
        T::on_event(Event::from(delivery))
    }
}

impl<T: Service> bindings::exports::corral::service::handler::Guest for T {
    fn handle(request: bindings::corral::service::types::Request) -> http::WitResponse {
        let request = Request::from(request);
        match T::handle(request) {
            Ok(response) => response.into(),
            Err(problem) => Response::from(problem).into(),
        }
    }
}

impl<T: Service> bindings::exports::corral::service::lifecycle::Guest for T {
    fn init() -> Result<(), String> {
        T::init()
    }
}

/// Exports a [`Service`] implementation as this component's handler and life cycle.
#[macro_export]
macro_rules! export_service {
    ($service:ident) => {
        $crate::bindings::__export_service_world!($service with_types_in $crate::bindings);
    };
}

/// Brings in the interfaces one of a WIT package's worlds shares with
/// other components: `interfaces!(shop, "corral:shop/users-client@0.1.0")`
/// makes module `shop` with the functions the world imports; for a world
/// that exports, the module also has the `Guest` trait to implement and an
/// `export!` macro. Packages are read from the workspace's `wit/` folder,
/// or from `path = "..."` (relative to the component's crate).
#[macro_export]
macro_rules! interfaces {
    ($module:ident, $world:literal) => {
        $crate::interfaces!($module, $world, path = "../../wit");
    };
    ($module:ident, $world:literal, path = $path:literal) => {
        #[allow(unsafe_code, clippy::all)]
        mod $module {
            $crate::__wit_bindgen::generate!({
                world: $world,
                path: $path,
                generate_all,
                runtime_path: "corral_sdk::__wit_bindgen::rt",
            });
        }
    };
}
