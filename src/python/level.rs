//! Log levels between Python's numbers and bqrt's five.

/// Python log level to bqrt's 1 = error .. 5 = trace (monotone, so a record at or above the
/// job's Python level always passes the job's bqrt level).
pub fn to_bqrt(levelno: i64) -> u8 {
    match levelno {
        l if l >= 40 => 1,
        l if l >= 30 => 2,
        l if l >= 20 => 3,
        l if l >= 10 => 4,
        _ => 5,
    }
}

/// bqrt's level back to the Python level a client sees.
pub fn to_python(level: u8) -> i64 {
    match level {
        0 | 1 => 40,
        2 => 30,
        3 => 20,
        4 => 10,
        _ => 5,
    }
}
