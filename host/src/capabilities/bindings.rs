//! Host-side bindings generated from `wit/service.wit`.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "corral:service/service",
    imports: {
        "corral:service/sqlite": async | trappable,
        default: trappable,
    },
    exports: { default: async },
    additional_derives: [PartialEq],
    trappable_error_type: {
        "corral:service/sqlite.error" => crate::capabilities::sqlite::SqliteError,
    },
});
