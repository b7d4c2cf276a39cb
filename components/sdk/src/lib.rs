//! Helpers for writing a corral component, so that a service is short to write.
//!
//! In reading order:
//! - [`http`]: the request a component receives, the response it returns, and
//!   `application/problem+json` errors ([`Problem`]).
//! - [`db`]: typed access to the component's own SQLite database, migrations and
//!   transactions.
//! - [`log`]: logging through the host.
//!
//! A component implements [`Service`] and names its type in [`export_service!`]:
//!
//! ```no_run
//! struct Hello;
//! impl corral_sdk::Service for Hello {
//!     fn handle(req: corral_sdk::Request) -> Result<corral_sdk::Response, corral_sdk::Problem> {
//!         Ok(corral_sdk::Response::text(200, "hello"))
//!     }
//! }
//! corral_sdk::export_service!(Hello);
//! ```

pub mod db;
pub mod http;
pub mod log;

pub use http::{FieldError, Problem, Request, Response};

/// The bindings generated from `wit/service.wit`.
#[allow(unsafe_code, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "corral:service/service",
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
