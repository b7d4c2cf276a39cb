//! The machine a benchmark ran on, printed with its results: ratios move
//! with the CPU (its model, and whether it has AVX-512 or memory
//! protection keys), so a figure means little without it.

/// CPU flags that change what corral costs against a native server.
const FLAGS: [&str; 4] = ["avx2", "avx512f", "pku", "ospke"];

/// One line: the CPU model, how many logical CPUs, and which of [`FLAGS`] it has.
pub fn describe() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let model = field("model name").unwrap_or_else(|| "unknown CPU".into());
    let flags = field("flags").unwrap_or_default();
    let has: Vec<&str> = FLAGS
        .iter()
        .copied()
        .filter(|f| flags.split_whitespace().any(|g| g == *f))
        .collect();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "machine: {model}, {cpus} logical CPUs, flags: {}",
        if has.is_empty() {
            "none of avx2 avx512f pku".to_string()
        } else {
            has.join(" ")
        }
    )
}
