//! Host-side bindings generated from `wit/service.wit`: the `service` world
//! every component serves, and `subscriber-service` for those that also
//! receive events; and the trappable error type of `sqlite`.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "corral:service/service",
    imports: {
        "corral:service/sqlite": async | trappable,
        "corral:service/events": async | trappable,
        default: trappable,
    },
    exports: { default: async },
    additional_derives: [PartialEq],
    trappable_error_type: {
        "corral:service/sqlite.error" => SqliteError,
    },
});

/// A failure of a sqlite host call: an error the guest sees as a WIT value, or
/// a trap for host failures the guest cannot handle.
#[derive(Debug)]
pub enum SqliteError {
    Guest(corral::service::sqlite::Error),
    Trap(wasmtime::Error),
}

impl From<corral::service::sqlite::Error> for SqliteError {
    fn from(e: corral::service::sqlite::Error) -> Self {
        SqliteError::Guest(e)
    }
}

/// The world of a component that exports `subscriber` too. Its imports are
/// the ones above; only the exports are its own.
pub mod subscriber {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "corral:service/subscriber-service",
        imports: { default: trappable },
        exports: { default: async },
        with: {
            "corral:service/types": super::corral::service::types,
            "corral:service/sqlite": super::corral::service::sqlite,
            "corral:service/log": super::corral::service::log,
            "corral:service/events": super::corral::service::events,
        },
    });
}
