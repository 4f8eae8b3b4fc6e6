//! The thread count of the model kernels, fixed once per process.
//!
//! candle sizes its matrix-multiply parallelism from `RAYON_NUM_THREADS` on every call and,
//! without it, counts physical cores by reading `/proc/cpuinfo` each time. On this project's
//! 2-core machine that was about 1,500 reads a second during label scoring, with half the CPU
//! time spent in the kernel. Setting the variable once, before any thread starts, avoids it.

/// Sets `RAYON_NUM_THREADS` to `threads` (default: the cores available to the process) unless
/// the user already set it.
///
/// # Safety
/// Call it before the process starts any other thread (first thing in `main`): changing the
/// environment while another thread reads it is undefined behaviour.
#[allow(unsafe_code)]
pub unsafe fn init_model_threads(threads: Option<usize>) {
    if std::env::var_os("RAYON_NUM_THREADS").is_some() {
        return;
    }
    let threads = threads
        .or_else(|| std::thread::available_parallelism().ok().map(usize::from))
        .unwrap_or(1)
        .max(1);
    // SAFETY: the caller guarantees no other thread is running (see the function's contract).
    unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
}
